"""Pytest plugin: a real ``redis-server`` (Debian's package) on 127.0.0.1 for the shared tests.

Load it with ``pytest_plugins = ["tests.redis_server"]``. Fixtures:

- ``redis_server``: one server for the session (persistence off: ``--save ""``,
  ``--appendonly no``), flushed before each test: ``.url``, ``.port``, ``.client()``,
  ``.stop()``, ``.start()`` (the same port again: a restart), ``.calls(command)`` (how many
  times the server ran a command successfully, from ``INFO commandstats``), ``.version``.
- ``redis_with_password``: the same with ``requirepass``; ``.password`` and ``.url`` (which
  carries it). Function scoped: each test gets a fresh server.

``.ci/run`` installs the ``redis-server`` package when it is missing; without the binary these
tests are skipped with the reason.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["RedisServer", "redis_server", "redis_with_password"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A ``redis-server`` process on a loopback port."""

    def __init__(self, workdir: Path, *, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (bash .ci/run installs it)")
        self.binary = binary
        self.workdir = workdir
        self.password = password
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (with ``:PASSWORD@`` when one is required)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart, on the same port) with persistence off."""
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start: {self.log_tail()}")

    def stop(self) -> None:
        """Kill the server (its data is gone: persistence is off)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def log_tail(self) -> str:
        """The end of the server's log."""
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def client(self) -> Any:
        """A plain redis-py client (decoded strings), for assertions."""
        import redis

        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            decode_responses=True,
            socket_timeout=5,
        )

    def calls(self, command: str) -> int:
        """How many times the server ran ``command`` successfully since the last reset (an
        EVALSHA answered NOSCRIPT after a restart is a failed call, not counted)."""
        stats = self.client().info("commandstats").get(f"cmdstat_{command.lower()}", {})
        return int(stats.get("calls", 0)) - int(stats.get("failed_calls", 0))

    def reset(self) -> None:
        """FLUSHALL and zero the command statistics."""
        client = self.client()
        client.flushall()
        client.config_resetstat()

    @property
    def version(self) -> str:
        """The server's version, e.g. ``7.0.15``."""
        return str(self.client().info("server")["redis_version"])


@pytest.fixture(scope="session")
def _redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(_redis_session: RedisServer) -> Iterator[RedisServer]:
    """The session's Redis, empty (restarted if a test stopped it)."""
    from mistral_nbenv.store import redis as redis_store

    if _redis_session.process is None or _redis_session.process.poll() is not None:
        _redis_session.start()
    _redis_session.reset()
    yield _redis_session
    redis_store.close_all()
    if _redis_session.process is None:
        _redis_session.start()


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis that requires a password (``requirepass``)."""
    from mistral_nbenv.store import redis as redis_store

    server = RedisServer(tmp_path / "redis-auth", password="Redis-Fake-Pass-7788")
    server.start()
    yield server
    redis_store.close_all()
    server.stop()
