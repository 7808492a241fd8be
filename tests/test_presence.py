"""The response cache's key index: a miss skips SQLite, and stays right across processes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mistral_nbenv.client import Client
from mistral_nbenv.store import presence
from mistral_nbenv.store.local import DiskStore, close_all, open_diskcache
from mistral_nbenv.store.writebehind import WriteBehind
from mistral_nbenv.testing import MistralTestServer
from tests._client_support import KEY, make_settings, resolved

ROOT = Path(__file__).resolve().parent.parent
CHAT = "/v1/chat/completions"


@pytest.fixture(autouse=True)
def fresh_indexes() -> Iterator[None]:
    """Each test starts with no open database or index in this process."""
    close_all()
    yield
    close_all()


def _statements(store: DiskStore, key: str) -> tuple[str | None, list[str]]:
    """``store.get(key)`` and the SQL statements it ran on diskcache's connection."""
    ran: list[str] = []
    con = store.db()._con
    con.set_trace_callback(ran.append)
    try:
        return store.get(key), ran
    finally:
        con.set_trace_callback(None)


def _in_another_process(code: str, directory: Path) -> None:
    """Run ``code`` with ``DiskStore`` and ``d`` (the directory) in a new interpreter."""
    prelude = (
        "import sys\nfrom pathlib import Path\n"
        "from mistral_nbenv.store.local import DiskStore, open_diskcache, close_all\n"
        "d = Path(sys.argv[1])\n"
    )
    subprocess.run(
        [sys.executable, "-c", prelude + code + "\nclose_all()\n", str(directory)],
        cwd=ROOT,
        check=True,
        timeout=60,
    )


def test_a_miss_skips_sqlite_and_a_hit_still_reads_it(tmp_path: Path) -> None:
    store = DiskStore(tmp_path / "c")
    store.set("stored", '"yes"', None)
    assert store.get("absent") is None  # the first lookup reads the keys
    value, ran = _statements(store, "absent again")
    assert value is None
    assert ran == []
    value, ran = _statements(store, "stored")
    assert value == '"yes"'
    assert any("FROM Cache" in s for s in ran)
    plain = DiskStore(tmp_path / "plain")  # without the index every miss asks SQLite
    index = presence.presence_for(tmp_path / "plain")
    with index._lock:
        index._turn_off(RuntimeError("turned off by the test"))
    plain.set("stored", '"yes"', None)
    value, ran = _statements(plain, "absent")
    assert value is None
    assert any("FROM Cache" in s for s in ran)


def test_a_key_another_process_adds_is_found_at_once(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    store = DiskStore(directory)
    assert store.get("one") is None
    assert store.get("many-1") is None
    _in_another_process('DiskStore(d).set("one", "1", None)', directory)
    assert store.get("one") == "1"
    _in_another_process(
        'DiskStore(d).set_many([("many-1", "2", None), ("many-2", "3", 60)])',
        directory,
    )
    assert (store.get("many-1"), store.get("many-2")) == ("2", "3")
    _in_another_process('DiskStore(d).update("updated", lambda old: ("4", None))', directory)
    assert store.get("updated") == "4"  # every write that can add a key signals


def test_only_a_write_that_adds_a_key_signals_the_other_processes(tmp_path: Path) -> None:
    """The rate limit's state and the usage ledger rewrite keys that exist: no signal (each
    one would make every other process's next lookup read the directory again)."""
    directory = tmp_path / "c"
    store = DiskStore(directory)
    assert store.get("anything") is None  # a reader: the signal file exists from now on
    signal = directory / presence.SIGNAL_FILE

    def token() -> bytes:
        return signal.read_bytes()[: presence._WIDTH]

    before = token()
    store.update("budget", lambda old: ("1", None))
    added = token()
    assert added != before
    store.update("budget", lambda old: (str(int(old or 0) + 1), None))
    store.add_many({"day|staging|m": {"requests": 1.0}})
    changed = token()
    assert changed != added  # a new ledger bucket is a new key
    store.add_many({"day|staging|m": {"requests": 1.0}})
    assert token() == changed
    assert store.db().get("budget") == "2"
    _in_another_process('DiskStore(d).update("budget", lambda old: ("9", None))', directory)
    assert token() == changed
    assert store.get("budget") == "9"  # a key this index knows: read from SQLite


def _index_statements(directory: Path, lookup: Callable[[], object]) -> tuple[object, list[str]]:
    """``lookup()`` and the SQL statements it ran on the key index's own connection."""
    index = presence.presence_for(directory)
    assert index._db is not None  # the index has read the directory once
    ran: list[str] = []
    index._db.set_trace_callback(ran.append)
    try:
        return lookup(), ran
    finally:
        index._db.set_trace_callback(None)


def test_after_its_own_write_a_lookup_stays_in_memory(tmp_path: Path) -> None:
    """A reader's own write is learnt in the writing thread (the write-behind's), so the
    caller's next lookup reads no row back; another process's later write is still found."""
    directory = tmp_path / "c"
    store = DiskStore(directory)
    assert store.get("absent") is None  # the first lookup reads the keys
    behind = WriteBehind(store, write_many=store.set_many)
    behind.set("mine", '"1"', None)
    behind.close()  # written (and learnt) as the writer thread would
    for key in ("absent again", "mine"):
        found, ran = _index_statements(directory, lambda key=key: store.get(key))
        assert ran == [], key
    assert found == '"1"'
    store.set("direct", '"2"', None)  # a write-through (after close) is learnt the same way
    found, ran = _index_statements(directory, lambda: store.get("also absent"))
    assert (found, ran) == (None, [])
    _in_another_process('DiskStore(d).set("theirs", "3", None)', directory)
    found, ran = _index_statements(directory, lambda: store.get("theirs"))
    assert found == "3"
    assert any("FROM Cache" in statement for statement in ran)  # caught up on their signal


def test_a_write_without_the_signal_is_learnt_at_the_next_signal(tmp_path: Path) -> None:
    """An older mistral_nbenv on the same directory writes without signalling: this process
    misses that entry (as it did before the other process wrote it) until any signal."""
    directory = tmp_path / "c"
    store = DiskStore(directory)
    assert store.get("old") is None
    _in_another_process('open_diskcache(d).set("old", "1")', directory)
    assert store.get("old") is None  # the documented cost: one more call to the API
    _in_another_process('DiskStore(d).set("new", "2", None)', directory)
    assert (store.get("old"), store.get("new")) == ("1", "2")


@pytest.mark.parametrize("refill", [2, 3, 5], ids=["fewer", "as-many", "more"])
def test_row_ids_handed_out_again_after_a_clear_are_read_again(tmp_path: Path, refill: int) -> None:
    """Another process clears the cache and stores new keys, which get the old row ids."""
    directory = tmp_path / "c"
    store = DiskStore(directory)
    store.set_many([(f"before-{i}", "0", None) for i in range(3)])
    assert store.get("after-0") is None
    _in_another_process(
        f"s = DiskStore(d)\ns.clear()\n"
        f"s.set_many([(f'after-{{i}}', str(i), None) for i in range({refill})])",
        directory,
    )
    assert [store.get(f"after-{i}") for i in range(refill)] == [str(i) for i in range(refill)]
    assert store.get("before-0") is None


def test_the_signal_file_is_private(tmp_path: Path) -> None:
    store = DiskStore(tmp_path / "c")
    assert store.get("k") is None  # the first reader makes the file
    store.set("k", "1", None)
    mode = stat.S_IMODE((tmp_path / "c" / presence.SIGNAL_FILE).stat().st_mode)
    assert mode == 0o600
    assert presence.presence_for(tmp_path / "c").off == ""


def test_a_directory_only_written_gets_no_signal_and_a_later_reader_finds_every_key(
    tmp_path: Path,
) -> None:
    """The rate limit's and the usage ledger's directories are written, never read by key."""
    directory = tmp_path / "c"
    _in_another_process(
        's = DiskStore(d)\ns.set("one", "1", None)\ns.update("two", lambda old: ("2", None))',
        directory,
    )
    assert not (directory / presence.SIGNAL_FILE).exists()
    reader = DiskStore(directory)
    assert (reader.get("one"), reader.get("two"), reader.get("three")) == ("1", "2", None)
    assert (directory / presence.SIGNAL_FILE).exists()  # made by the first reader
    _in_another_process('DiskStore(d).set("three", "3", None)', directory)
    assert reader.get("three") == "3"  # a writer signals once a reader made the file


def test_an_unusable_signal_file_turns_the_index_off_and_lookups_go_on(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    open_diskcache(directory)
    (directory / presence.SIGNAL_FILE).mkdir()  # cannot be mapped
    store = DiskStore(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a speed-up that is off is not the user's problem
        store.set("k", "1", None)
        assert store.get("k") == "1"
        value, ran = _statements(store, "absent")
    assert value is None
    assert any("FROM Cache" in s for s in ran)
    assert "IsADirectoryError" in presence.presence_for(directory).off


def test_past_max_keys_the_index_is_off_and_lookups_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(presence, "MAX_KEYS", 3)
    directory = tmp_path / "c"
    DiskStore(directory).set_many([(f"k{i}", str(i), None) for i in range(5)])
    store = DiskStore(directory)
    assert [store.get(f"k{i}") for i in range(5)] == [str(i) for i in range(5)]
    value, ran = _statements(store, "absent")
    assert value is None
    assert any("FROM Cache" in s for s in ran)
    assert "more than 3 entries" in presence.presence_for(directory).off


def test_a_forked_child_reads_the_keys_afresh(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    store = DiskStore(directory)
    assert store.get("late") is None
    open_diskcache(directory).set("late", "1")  # no signal: this process's index misses it
    assert store.get("late") is None
    pid = os.fork()
    if pid == 0:  # the child: the parent's set, mapping and connection are not used
        code = 3
        try:
            code = 0 if store.get("late") == "1" else 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_client_hits_what_a_client_in_another_process_stored(tmp_path: Path) -> None:
    """The index of a running client learns another process's answer before its next call."""
    with MistralTestServer(expected_api_key=KEY) as server:
        client = Client(make_settings(tmp_path / "cache", server.url), resolved())
        try:
            question = [{"role": "user", "content": "asked first elsewhere"}]
            client.chat.complete(messages=[{"role": "user", "content": "warm the index"}])
            code = (
                "import sys, os\nfrom pathlib import Path\n"
                "from mistral_nbenv.client import Client\n"
                "from tests._client_support import make_settings, resolved\n"
                "c = Client(make_settings(Path(sys.argv[1]), sys.argv[2]), resolved())\n"
                "c.chat.complete(messages=[{'role': 'user', 'content': 'asked first elsewhere'}])\n"
                "c.close()\n"
            )
            subprocess.run(
                [sys.executable, "-c", code, str(tmp_path / "cache"), server.url],
                cwd=ROOT,
                check=True,
                timeout=120,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            assert server.count(CHAT) == 2
            answer = client.chat.complete(messages=question)
            assert answer.choices[0].message.content == "Echo: asked first elsewhere"
            assert server.count(CHAT) == 2
            assert client.stats.hits == 1
        finally:
            client.close()


def test_threads_always_find_what_another_thread_has_stored(tmp_path: Path) -> None:
    """A reader thread asks for keys a writer thread has just committed: never a miss."""
    store = DiskStore(tmp_path / "c")
    stored = [0]  # keys k0 .. k{stored-1} are committed
    missed: list[int] = []

    def write() -> None:
        for i in range(300):
            store.set(f"k{i}", str(i), None)
            stored[0] = i + 1

    def read() -> None:
        while stored[0] < 300:
            n = stored[0]
            if n and store.get(f"k{n - 1}") != str(n - 1):
                missed.append(n - 1)
            assert store.get("never stored") is None

    threads = [threading.Thread(target=write), *(threading.Thread(target=read) for _ in range(2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert missed == []
    assert presence.presence_for(tmp_path / "c").off == ""
