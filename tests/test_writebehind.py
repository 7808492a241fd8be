"""The response cache's write-behind: off the caller's path, never lost, never twice."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from mistral_nbenv.store import CacheUnavailableWarning
from mistral_nbenv.store.local import DiskStore, close_all
from mistral_nbenv.store.writebehind import WriteBehind, flush_all, write_behind
from mistral_nbenv.testing import MistralTestServer
from tests._browser_project import scrubbed_environ, write_project


def _rows(directory: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(directory / "cache.db")
    try:
        return db.execute("SELECT key, value FROM Cache").fetchall()
    finally:
        db.close()


@pytest.fixture
def behind(tmp_path: Path) -> Any:
    disk = DiskStore(tmp_path / "store")
    store = WriteBehind(disk, write_many=disk.set_many)
    yield store
    store.close()
    close_all()


def test_a_pending_value_is_read_back_then_lands_on_disk(behind: WriteBehind, tmp_path: Path):
    behind.set("k", '{"a": 1}', None)
    assert behind.get("k") == '{"a": 1}'  # from the pending map or the disk: the same
    behind.flush()
    assert _rows(tmp_path / "store") == [("k", '{"a": 1}')]


def test_delete_count_and_clear_see_pending_writes(behind: WriteBehind) -> None:
    behind.set("a", "1", None)
    behind.set("b", "2", None)
    assert behind.count()[0] == 2
    behind.set("c", "3", None)
    behind.delete("c")
    assert behind.get("c") is None
    assert behind.clear() == 2
    assert behind.count()[0] == 0


def test_the_last_value_of_a_key_wins(behind: WriteBehind, tmp_path: Path) -> None:
    for i in range(50):
        behind.set("k", str(i), None)
    behind.flush()
    assert _rows(tmp_path / "store") == [("k", "49")]


def test_one_write_behind_per_location(tmp_path: Path) -> None:
    a = write_behind(DiskStore(tmp_path / "one"))
    b = write_behind(DiskStore(tmp_path / "one"))
    c = write_behind(DiskStore(tmp_path / "two"))
    assert a is b
    assert a is not c


class _BrokenDisk:
    location = "/nowhere/broken"

    def get(self, key: str) -> None:
        return None

    def set(self, key: str, value: str, ttl: float | None) -> None:
        raise OSError("disk full")


def test_a_failed_write_warns_once_then_set_raises() -> None:
    store = WriteBehind(_BrokenDisk())
    store.set("k", "v", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store.flush()
    assert [str(w.message) for w in caught if w.category is CacheUnavailableWarning]
    assert "disk full" in store.failure
    with pytest.raises(OSError, match="earlier write to /nowhere/broken failed"):
        store.set("k2", "v", None)
    assert store.get("k") is None  # the failed batch was dropped, not kept forever


def test_a_script_that_exits_without_close_still_stores(tmp_path: Path) -> None:
    with MistralTestServer() as server:
        project = tmp_path / "p"
        project.mkdir()
        settings = write_project(project, server.url, extra="[staging.cache]\nenabled = true\n")
        code = (
            "from mistral_nbenv import get_client\n"
            "c = get_client('staging')\n"
            "c.chat.complete(messages=[{'role': 'user', 'content': 'keep me'}])\n"
        )  # and exit at once: the interpreter's exit writes the pending entry
        env = dict(scrubbed_environ(), MISTRAL_NBENV_SETTINGS=str(settings))
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert server.count("/v1/chat/completions") == 1
    rows = _rows(project / "cache" / "staging")
    assert len(rows) == 1
    assert "Echo: keep me" in rows[0][1]


def test_a_forked_child_neither_writes_nor_blocks_on_the_parents_pending_values(
    tmp_path: Path,
) -> None:
    written: list[tuple[str, str, float | None]] = []
    store = WriteBehind(DiskStore(tmp_path / "store"), write_many=written.extend)
    for i in range(200):  # keep the parent's writer thread busy while the fork happens
        store.set(f"k{i}", "1", None)
    pid = os.fork()
    if pid == 0:  # the child: nothing pending, locks usable, and its exit flush writes nothing
        code, before = 0, len(written)  # what the parent had written by the fork
        try:
            code = 3 if store._pending or store.get("k0") is not None else 0
            flush_all()
            code = code or (4 if len(written) != before else 0)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    store.flush()
    assert sorted(key for key, _value, _ttl in written) == sorted(f"k{i}" for i in range(200))
    store.close()
