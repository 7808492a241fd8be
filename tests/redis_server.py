"""Pytest plugin: a real ``redis-server`` (Debian's package) on 127.0.0.1 for the shared tests.

Load it with ``pytest_plugins = ["tests.redis_server"]``. Fixtures (servers are
:class:`mistral_nbenv.testing.redis.RedisTestServer`):

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

from collections.abc import Iterator
from pathlib import Path

import pytest

from mistral_nbenv.testing.redis import RedisNotInstalledError, RedisTestServer

__all__ = ["redis_server", "redis_with_password"]


def _server(workdir: Path, password: str | None = None) -> RedisTestServer:
    try:
        return RedisTestServer(workdir, password=password)
    except RedisNotInstalledError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def _redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisTestServer]:
    server = _server(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(_redis_session: RedisTestServer) -> Iterator[RedisTestServer]:
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
def redis_with_password(tmp_path: Path) -> Iterator[RedisTestServer]:
    """A Redis that requires a password (``requirepass``)."""
    from mistral_nbenv.store import redis as redis_store

    server = _server(tmp_path / "redis-auth", "Redis-Fake-Pass-7788")
    server.start()
    yield server
    redis_store.close_all()
    server.stop()
