"""Lose nothing: once a call has returned, its answer and its usage are on disk; forks are safe.

Real processes throughout: a user's batch script with ``multiprocessing.Pool`` (fork, spawn,
forkserver), a script killed by SIGTERM or SIGKILL right after a call returned, and
``os.fork`` with calls in flight, during SDK discovery, and with both processes calling.
Requests are counted at the loopback server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mistral_nbenv.client import Client, surface
from mistral_nbenv.testing import MistralTestServer
from tests._browser_project import scrubbed_environ, write_project
from tests._client_support import KEY, make_settings, resolved

CHAT = "/v1/chat/completions"
ROOT = Path(__file__).resolve().parent.parent
COUNT = 40
_DRIVER = "from tests._durability_worker import main; main()"


@pytest.fixture
def server() -> Any:
    with MistralTestServer() as srv:
        yield srv


@pytest.fixture
def script(tmp_path: Path, server: MistralTestServer) -> Callable[..., subprocess.Popen[str]]:
    """Start the user's script (``tests/_durability_worker.py``) on a loopback project."""
    settings = write_project(tmp_path, server.url)
    env = {
        **scrubbed_environ(),
        "MISTRAL_NBENV_SETTINGS": str(settings),
        "PYTHONPATH": str(ROOT),
    }

    def start(*args: str, offline: bool = False) -> subprocess.Popen[str]:
        extra = {"MISTRAL_NBENV_OFFLINE": "1"} if offline else {}
        return subprocess.Popen(
            [sys.executable, "-c", _DRIVER, *args],
            cwd=tmp_path,
            env={**env, **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    return start


def _answers(proc: subprocess.Popen[str]) -> list[str]:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    answers: list[str] = json.loads(out)
    return answers


def _usage_requests(tmp_path: Path) -> float:
    """``mistral-nbenv usage --env staging --json``: the requests the ledger counted."""
    out = subprocess.run(
        [sys.executable, "-m", "mistral_nbenv", "usage", "--env", "staging", "--json"],
        cwd=tmp_path,
        env={
            **scrubbed_environ(),
            "MISTRAL_NBENV_SETTINGS": str(tmp_path / "settings.toml"),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = json.loads(out)["rows"]
    return float(sum(row["requests"] for row in rows))


@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
def test_a_pool_stores_every_answer_and_counts_every_request(
    script: Callable[..., subprocess.Popen[str]],
    server: MistralTestServer,
    tmp_path: Path,
    context: str,
) -> None:
    expected = [f"Echo: batch prompt {i}" for i in range(COUNT)]
    assert _answers(script("pool", context, str(COUNT))) == expected
    assert server.count(CHAT) == COUNT
    # Pool.__exit__ terminated the workers: still, every answer is stored...
    assert _answers(script("again", str(COUNT), offline=True)) == expected
    assert _answers(script("pool", context, str(COUNT))) == expected
    assert server.count(CHAT) == COUNT, "an answer was asked (and billed) again"
    # ...and every request the server answered is in the usage ledger, exactly
    assert _usage_requests(tmp_path) == COUNT


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_script_killed_right_after_a_call_returned_lost_nothing(
    script: Callable[..., subprocess.Popen[str]],
    server: MistralTestServer,
    tmp_path: Path,
    sig: signal.Signals,
) -> None:
    proc = script("kill")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "returned"
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode == -sig
    assert server.count(CHAT) == 1
    assert _usage_requests(tmp_path) == 1  # counted before the call returned
    again = subprocess.run(
        [sys.executable, "-c", "from tests._durability_worker import ask; "
         "print(ask('asked just before the end'))"],
        cwd=tmp_path, env=_env_of(tmp_path, offline=True),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "Echo: asked just before the end"  # a hit, offline
    assert server.count(CHAT) == 1


def test_no_thread_of_ours_is_left_after_a_plain_call_in_a_script(
    script: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    code = (
        "import threading; from tests._durability_worker import ask; "
        "print(ask('one question')); print(sorted(t.name for t in threading.enumerate()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_env_of(tmp_path, offline=False),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["Echo: one question", "['MainThread']"]


def _env_of(tmp_path: Path, *, offline: bool) -> dict[str, str]:
    return {
        **scrubbed_environ(),
        "MISTRAL_NBENV_SETTINGS": str(tmp_path / "settings.toml"),
        "PYTHONPATH": str(ROOT),
        **({"MISTRAL_NBENV_OFFLINE": "1"} if offline else {}),
    }


def test_children_forked_after_the_parent_called_get_their_own_answers(
    script: Callable[..., subprocess.Popen[str]],
    server: MistralTestServer,
) -> None:
    """The parent's keep-alive connection is never read by a child."""
    server.latency = 0.02  # calls overlap in the four workers
    expected = [f"Echo: batch prompt {i}" for i in range(COUNT)]
    assert _answers(script("fork-after-use", str(COUNT))) == expected
    assert server.count(CHAT) == COUNT + 1


# ------------------------------------------------------------------ os.fork, in this process


@pytest.fixture
def client(tmp_path: Path, server: MistralTestServer) -> Any:
    made = Client(
        make_settings(tmp_path / "cache", server.url, cache={"enabled": False}), resolved()
    )
    yield made
    made.close()


def _in_child(work: Callable[[], str], timeout: int = 60) -> str:
    """Fork; run ``work`` in the child's main thread, bounded by ``timeout`` (an alarm); its
    result. (Not in a new thread: it could reuse the stack, and so the identity, of a
    parent's thread, and an ``RLock`` that thread held would look like its own.)"""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        code = 1
        try:

            def expire(*_: object) -> None:
                raise TimeoutError("still waiting after the timeout")

            signal.signal(signal.SIGALRM, expire)
            signal.alarm(timeout)
            result = _attempt(work)
            signal.alarm(0)
            os.write(write, result.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return b"".join(chunks).decode()


def _attempt(work: Callable[[], str]) -> str:
    try:
        return work()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def _ask(client: Client, text: str) -> str:
    answer = client.chat.complete(messages=[{"role": "user", "content": text}])
    return str(answer.choices[0].message.content)


def test_a_fork_while_another_thread_is_inside_a_call_leaves_the_child_its_slots(
    tmp_path: Path, server: MistralTestServer
) -> None:
    """The parent's call holds the only slot when the fork happens; the child still calls."""
    server.latency = 1.0
    settings = make_settings(
        tmp_path / "cache",
        server.url,
        cache={"enabled": False},
        features={"max_concurrent_requests": 1},
        timeout=5,
    )
    client = Client(settings, resolved())
    try:
        _ask(client, "warm")  # the connection and the namespace exist before the fork
        parent: list[str] = []
        in_flight = threading.Thread(target=lambda: parent.append(_ask(client, "parent")))
        in_flight.start()
        while server.count(CHAT) < 2:  # the parent's request has reached the server
            threading.Event().wait(0.01)
        child = _in_child(lambda: _ask(client, "child"))
        in_flight.join(30)
    finally:
        client.close()
    assert child == "Echo: child"
    assert parent == ["Echo: parent"]


def test_a_fork_during_sdk_discovery_does_not_block_the_childs_first_call(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another thread holds the discovery lock at the fork (the first use of a namespace)."""
    monkeypatch.delitem(surface._spaces, ("chat",), raising=False)
    holding, release = threading.Event(), threading.Event()

    def discovering() -> None:
        with surface._lock:
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=discovering)
    thread.start()
    assert holding.wait(10)
    try:
        child = _in_child(lambda: _ask(client, "first use in the child"), timeout=20)
    finally:
        release.set()
        thread.join()
    assert child == "Echo: first use in the child"


def test_after_a_fork_parent_and_child_call_at_once_and_each_gets_its_own_answer(
    client: Client, server: MistralTestServer
) -> None:
    server.latency = 0.2
    assert _ask(client, "before the fork") == "Echo: before the fork"  # an idle connection
    parent: list[str] = []

    def parent_calls() -> None:  # starts just after the fork, on the same idle connection
        time.sleep(0.05)
        parent.extend(_ask(client, f"parent {i}") for i in range(5))

    thread = threading.Thread(target=parent_calls)
    thread.start()
    child = _in_child(lambda: "|".join(_ask(client, f"child {i}") for i in range(5)))
    thread.join(30)
    assert child == "|".join(f"Echo: child {i}" for i in range(5))
    assert parent == [f"Echo: parent {i}" for i in range(5)]
    assert server.count(CHAT) == 11
    assert KEY not in child


# ------------------------------------------------------------------ state per project


def _project(root: Path, name: str, server: MistralTestServer, key: str) -> Path:
    """A project directory with no cache.directory: its state goes to the user cache dir."""
    directory = root / name
    directory.mkdir()
    (directory / "settings.toml").write_text(
        f'[staging]\nserver_url = "{server.url}"\napi_key = "{key}"\nmax_retries = 0\n'
        "[staging.rate_limits]\nrequests_per_minute = 1\n",
        encoding="utf-8",
    )
    return directory


def _in_project(directory: Path, code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=directory,  # discovery finds the project's settings.toml from here
        env={**scrubbed_environ(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


_ASK = (
    "import mistral_nbenv as mn, time; c = mn.get_client('staging'); started = time.monotonic()\n"
    "for i in range({n}): c.chat.complete(messages=[{{'role': 'user', 'content': f'q{{i}}'}}])\n"
    "print(round(c.stats.rate_limit_wait_seconds, 1), c.stats.hits, c.stats.requests)"
)


def test_projects_keep_their_own_answers_and_usage_and_a_key_its_own_budget(
    tmp_path: Path, server: MistralTestServer
) -> None:
    """1 request/min: one request empties a key's budget for a minute. A project with another
    key is not held back by it; a project with the same key shares it; no project's answers,
    usage or ``cache clear`` reach another's."""
    one = _project(tmp_path, "one", server, "ProjOneFakeKeyAbCdEfGhIjKlMnOp01")
    two = _project(tmp_path, "two", server, "ProjTwoFakeKeyAbCdEfGhIjKlMnOp02")
    same = _project(tmp_path, "same", server, "ProjOneFakeKeyAbCdEfGhIjKlMnOp01")
    assert _in_project(one, _ASK.format(n=1)) == "0.0 0 1"
    # another key: not held back; the same question: asked again (answers are per project)
    assert _in_project(two, _ASK.format(n=1)) == "0.0 0 1"
    assert server.count(CHAT) == 2
    left = _in_project(
        same,
        "import mistral_nbenv as mn; from mistral_nbenv.store.layout import open_stores\n"
        "from mistral_nbenv.workspace import get_api_key\n"
        "s = mn.get_settings('staging'); key = get_api_key('staging').value.get_secret_value()\n"
        "b = open_stores(s, None, key).budget\n"
        "import json\n"
        "print(sum(e[1] for e in json.loads(b.update('bucket', lambda raw: (None, raw)))['w']))",
    )
    assert float(left) == 1  # the same key's window: project one's request is in it
    assert _in_project(one, _ASK.format(n=1)).split()[1:] == ["1", "0"]  # its own hit
    clear = "import mistral_nbenv.ui.reports as r; print(r.clear_cache('staging', confirm=True))"
    assert _in_project(two, clear) == "1"
    assert _in_project(one, _ASK.format(n=1)).split()[1:] == ["1", "0"]  # untouched
    usage = _in_project(
        one,
        "from mistral_nbenv.ui.reports import collect_usage; r = collect_usage('staging'); "
        "print(sum(x.requests for x in r.rows), sum(x.hits for x in r.rows))",
    )
    assert usage == "1 2"  # project one's own request and hits only
    assert server.count(CHAT) == 2
