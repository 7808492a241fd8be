"""A real ``redis-server`` on 127.0.0.1 for tests and benchmarks of ``[E.shared]``.

::

    from mistral_nbenv.testing.redis import RedisTestServer

    with RedisTestServer(tmp_path) as redis:         # a free loopback port, no persistence
        settings = {"shared": {"url": redis.url}}      # redis://127.0.0.1:PORT/0
        ...
        redis.stop(); redis.start()                    # a restart on the same port
        redis.calls("evalsha")                         # commands the server ran successfully

It runs the ``redis-server`` binary found on ``PATH`` (Debian's ``redis-server`` package, or
Valkey's ``valkey-server`` under that name) and needs the ``redis`` extra for ``.client()``.
``password=`` starts it with ``requirepass``; the URL then carries the password.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["RedisNotInstalledError", "RedisTestServer"]


class RedisNotInstalledError(RuntimeError):
    """No ``redis-server`` binary on ``PATH``."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisTestServer:
    """A ``redis-server`` process on a loopback port, persistence off."""

    def __init__(self, workdir: Path, *, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisNotInstalledError(
                "redis-server is not installed: apt-get install redis-server (Debian/Ubuntu), "
                "brew install redis (macOS); bash .ci/run installs it"
            )
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
            # DEBUG SLEEP from loopback: tests make the server slow on purpose
            "--enable-debug-command",
            "local",
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

    def __enter__(self) -> RedisTestServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
