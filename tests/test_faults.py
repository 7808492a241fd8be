"""Faults, corruption and unconfirmed production paths (issue: nothing crashes or stalls).

Real SQLite files corrupted by hand (some while the process has them open), the real SDK
against the loopback server, a real IPython shell, the real console script.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from mistral_nbenv import (
    ProductionConfirmationRequired,
    current_environment,
    environment,
    get_client,
    get_settings,
    use_environment,
    workspace,
)
from mistral_nbenv.store import CacheUnavailableWarning
from mistral_nbenv.store.layout import budget_dir, cache_dir
from mistral_nbenv.store.local import close_all
from mistral_nbenv.testing import MistralTestServer
from tests._browser_project import KEYS, reset_core, use_project
from tests._cli import run_cli
from tests.test_magic import Outputs, ReRaisingShell

HELLO = [{"role": "user", "content": "hello faults"}]


def _rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT rowid, key, mode, filename FROM Cache"))


def _set_value(db: Path, *, value: Any, mode: int | None = None, filename: Any = None) -> None:
    with sqlite3.connect(db) as conn:
        if mode is None:
            conn.execute("UPDATE Cache SET value = ?", (value,))
        else:
            conn.execute(
                "UPDATE Cache SET value = ?, mode = ?, filename = ?", (value, mode, filename)
            )


# --------------------------------------------------------------------------- cache entries


# ``warns``: every unusable entry is dropped with one warning: JSON text the SDK rejects, and
# what the store never hands over as text (not UTF-8, a pickle, a file outside the cache).
@pytest.mark.parametrize(
    ("value", "mode", "filename", "warns"),
    [
        ("{not json", None, None, 1),
        ('{"hello": 1}', None, None, 1),
        ('{"id": "x", "object": "chat.completion", "choi', None, None, 1),  # cut short
        (b"\xff\xfe\x00 not utf-8", None, None, 1),
        (
            b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06getcwd"
            b"\x94\x93\x94)R\x94.",
            4,  # MODE_PICKLE: a planted pickle that would call os.getcwd() when loaded
            None,
            1,
        ),
        (None, 3, "../../../../../../etc/hostname", 1),  # MODE_TEXT, outside the cache
    ],
)
@pytest.mark.parametrize("kind", ["complete", "stream"])
def test_a_corrupt_entry_is_a_miss_one_warning_and_dropped(
    lproject: MistralTestServer,
    kind: str,
    value: Any,
    mode: int | None,
    filename: Any,
    warns: int,
) -> None:
    use_environment("staging")
    client = get_client()

    def call() -> str:
        if kind == "complete":
            return str(client.chat.complete(messages=HELLO).choices[0].message.content)
        return "".join(
            e.data.choices[0].delta.content or "" for e in client.chat.stream(messages=HELLO)
        )

    expected = call()
    client.close()
    db = cache_dir(client.settings) / "cache.db"
    assert len(_rows(db)) == 1
    _set_value(db, value=value, mode=mode, filename=filename)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert call() == expected  # a miss: asked the server again
    assert lproject.count() == 2
    dropped = [w for w in caught if issubclass(w.category, CacheUnavailableWarning)]
    assert len(dropped) == warns
    assert call() == expected  # stored again, now a hit
    assert lproject.count() == 2


def test_a_garbage_cache_database_degrades_to_no_cache(lproject: MistralTestServer) -> None:
    use_environment("staging")
    client = get_client()
    client.chat.complete(messages=HELLO)
    close_all()
    db = cache_dir(client.settings) / "cache.db"
    db.write_bytes(b"this is not a database" * 100)
    reset_core()
    use_environment("staging")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert get_client().chat.complete(messages=HELLO).choices
    assert len([w for w in caught if issubclass(w.category, CacheUnavailableWarning)]) == 1


def test_a_rate_limit_db_corrupted_while_open_falls_back_to_memory(
    lproject: MistralTestServer,
) -> None:
    use_environment("staging")
    client = get_client()
    client.chat.complete(messages=HELLO, cache=False)  # the limiter's db is open now
    ratelimit_db = budget_dir(client.settings, KEYS["staging"]) / "cache.db"
    assert ratelimit_db.is_file()
    for path in ratelimit_db.parent.glob("cache.db*"):  # the db, its -wal and -shm
        with open(path, "r+b") as fh:  # same inode: the open connection sees it
            fh.write(b"garbage!" * 4096)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(5):
            assert client.chat.complete(messages=[{"role": "user", "content": f"n{i}"}]).choices
    found = [str(w.message) for w in caught if issubclass(w.category, CacheUnavailableWarning)]
    assert len(found) == 1, found
    assert "the rate-limit state of environment 'staging'" in found[0]
    assert "keeps its budget in memory" in found[0]
    assert str(ratelimit_db.parent) in found[0]


# ------------------------------------------------------------------ the CLI tells the truth


def test_cli_reports_an_unreadable_cache_and_exits_non_zero(
    lproject: MistralTestServer, tmp_path: Path
) -> None:
    use_environment("staging")
    get_client().chat.complete(messages=HELLO)
    directory = cache_dir(get_client().settings)
    close_all()
    (directory / "cache.db").write_bytes(b"not a database" * 100)
    stats = run_cli("cache", "stats", "--env", "staging", cwd=tmp_path, module=True)
    assert stats.returncode == 1
    assert "UNAVAILABLE" in stats.stdout
    cleared = run_cli("cache", "clear", "--env", "staging", cwd=tmp_path, module=True)
    assert cleared.returncode == 2
    assert "cannot be cleared" in cleared.stderr
    assert "nothing was removed" in cleared.stderr


def test_clearing_a_protected_cache_needs_confirm(
    lproject: MistralTestServer, tmp_path: Path
) -> None:
    with environment("production", confirm=True):
        get_client().chat.complete(messages=HELLO)
    refused = run_cli("cache", "clear", "--env", "prod", cwd=tmp_path, module=True)
    assert refused.returncode == 2
    assert "needs confirmation" in refused.stderr
    assert "Nothing was changed" in refused.stderr
    assert "1 entr" in run_cli("cache", "stats", "--env", "prod", cwd=tmp_path, module=True).stdout
    done = run_cli("cache", "clear", "--env", "prod", "--confirm", cwd=tmp_path, module=True)
    assert done.returncode == 0, done.stderr
    assert "1 entries removed" in done.stdout
    assert (
        run_cli("cache", "clear", "--env", "prod", "--conf", cwd=tmp_path, module=True).returncode
        == 2
    )


# --------------------------------------------------------------------------- production


@pytest.mark.parametrize("confirm", ["no", "false", "yes", 1, "True"])
def test_only_true_itself_confirms(lproject: MistralTestServer, confirm: Any) -> None:
    with pytest.raises(ProductionConfirmationRequired):
        use_environment("production", confirm=confirm)
    with pytest.raises(ProductionConfirmationRequired), environment("prod", confirm=confirm):
        pass
    assert current_environment() == "development"


@pytest.fixture
def kernel(lproject: MistralTestServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Start a shell after the test set its variables: ``kernel(**env)`` -> (shell, outputs)."""
    shells: list[ReRaisingShell] = []

    def start(**variables: str) -> tuple[ReRaisingShell, Outputs]:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        reset_core()
        InteractiveShell.clear_instance()
        shell = ReRaisingShell()
        outputs = Outputs(shell)
        monkeypatch.setattr("mistral_nbenv.ui.magic.display", outputs.record)
        shell.run_cell("%load_ext mistral_nbenv")
        shells.append(shell)
        return shell, outputs

    yield start
    for shell in shells:
        shell.run_cell("%unload_ext mistral_nbenv")


@pytest.mark.parametrize(
    ("variable", "value"), [("MISTRAL_ENV", "production"), ("VERCEL_ENV", "production")]
)
def test_a_kernel_started_in_production_waits_for_confirm(
    kernel: Any, lproject: MistralTestServer, variable: str, value: str
) -> None:
    ip, out = kernel(**{variable: value})
    assert current_environment() == "production"
    banner = out.text
    assert f"this kernel started in production (from {variable}={value})" in banner
    assert "%mistral_env use production --confirm" in banner
    assert "#c62828" in out.html  # the red badge
    with pytest.raises(UsageError, match="nothing has confirmed it yet"):
        ip.run_cell("%%mistral\nhello")
    assert lproject.count() == 0  # nothing was billed
    with pytest.raises(UsageError, match="--confirm"):
        ip.run_cell("%mistral_env use production")
    ip.run_cell("%mistral_env use production --confirm")
    answer = ip.run_cell("%%mistral\nhello").result
    assert answer.environment == "production"
    assert lproject.count() == 1


def test_node_env_alone_never_selects_production_in_a_notebook(kernel: Any) -> None:
    ip, _out = kernel(NODE_ENV="production")
    assert current_environment() == "development"
    assert "ignored in a notebook" in workspace.detection_reason()
    assert ip.run_cell("%%mistral\nhello").result.environment == "development"


def test_confirm_in_notebooks_false_is_the_users_choice(
    kernel: Any, lproject: MistralTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_project(
        tmp_path / "own",
        lproject.url,
        monkeypatch,
        environments=("development", "staging", "qa"),
        extra=f'[production]\napi_key = "{KEYS["production"]}"\nconfirm_in_notebooks = false\n',
    )
    ip, out = kernel(MISTRAL_ENV="production")
    assert "--confirm" not in out.text
    assert ip.run_cell("%%mistral\nhello").result.environment == "production"


def test_scripts_keep_production_from_the_environment(
    lproject: MistralTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISTRAL_ENV", "production")
    reset_core()
    assert get_client().chat.complete(messages=HELLO).choices  # a deployed job: no prompt
    monkeypatch.setenv("NODE_ENV", "production")
    monkeypatch.delenv("MISTRAL_ENV")
    reset_core()
    assert current_environment() == "production"  # outside a notebook NODE_ENV still counts


def test_an_environment_block_keeps_a_pending_confirmation_pending(
    kernel: Any, lproject: MistralTestServer
) -> None:
    ip, _out = kernel(MISTRAL_ENV="production")
    ip.run_cell(
        "import mistral_nbenv as mn\n"
        "with mn.environment('development'):\n"
        "    mn.get_client().chat.complete(messages=[{'role': 'user', 'content': 'hi'}])\n"
    )
    assert lproject.count() == 1  # development answered
    assert current_environment() == "production"
    with pytest.raises(ProductionConfirmationRequired):
        get_client().chat.complete(messages=HELLO)
    with pytest.raises(UsageError, match="nothing has confirmed it yet"):
        ip.run_cell("%%mistral\nhello")
    assert lproject.count() == 1  # production was never sent to


def test_a_client_made_before_the_extension_obeys_the_gate(
    lproject: MistralTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISTRAL_ENV", "production")
    reset_core()
    early = get_client()  # a script's client: no notebook yet
    InteractiveShell.clear_instance()
    ip = ReRaisingShell()
    monkeypatch.setattr("mistral_nbenv.ui.magic.display", Outputs(ip).record)
    ip.run_cell("%load_ext mistral_nbenv")
    try:
        with pytest.raises(ProductionConfirmationRequired):
            early.chat.complete(messages=HELLO)
        with pytest.raises(ProductionConfirmationRequired):
            asyncio.run(early.chat.complete_async(messages=HELLO))
        with pytest.raises(ProductionConfirmationRequired):
            early.chat.stream(messages=HELLO)
        assert lproject.count() == 0
        ip.run_cell("%mistral_env use production --confirm")
        assert early.chat.complete(messages=HELLO).choices
        assert lproject.count() == 1
    finally:
        ip.run_cell("%unload_ext mistral_nbenv")


def test_no_variable_turns_the_notebook_confirmation_off(
    kernel: Any, lproject: MistralTestServer
) -> None:
    ip, out = kernel(MISTRAL_ENV="production", MISTRAL_NBENV_CONFIRM_IN_NOTEBOOKS="false")
    assert "%mistral_env use production --confirm" in out.text
    with pytest.raises(UsageError, match="nothing has confirmed it yet"):
        ip.run_cell("%%mistral\nhello")
    assert lproject.count() == 0
    assert get_settings("production").confirm_in_notebooks is True


def _run_notebook(cells: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    return ["".join(o.get("text", "") for o in cell.outputs) for cell in nb.cells]


CALL = (
    "try:\n"
    "    {client}.chat.complete(messages=[{{'role': 'user', 'content': 'hi'}}])\n"
    "    print('sent')\n"
    "except mn.ProductionConfirmationRequired:\n"
    "    print('refused')\n"
)


@pytest.mark.slow
def test_no_path_reaches_production_unconfirmed_in_a_real_kernel(
    lproject: MistralTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel started with MISTRAL_ENV=production: a client made before %load_ext, an
    environment block, and MISTRAL_NBENV_CONFIRM_IN_NOTEBOOKS=false all stay behind the
    confirmation; the loopback server counts what was sent."""
    monkeypatch.setenv("MISTRAL_ENV", "production")
    monkeypatch.setenv("MISTRAL_NBENV_CONFIRM_IN_NOTEBOOKS", "false")
    outputs = _run_notebook(
        [
            "import mistral_nbenv as mn\nearly = mn.get_client()",
            "%load_ext mistral_nbenv",
            CALL.format(client="early"),
            "with mn.environment('development'):\n"
            + textwrap.indent(CALL.format(client="mn.get_client()"), "    "),
            CALL.format(client="mn.get_client()"),
            "%mistral_env use production --confirm",
            CALL.format(client="early"),
        ],
        tmp_path,
        monkeypatch,
    )
    said = [outputs[i].strip().splitlines()[-1] for i in (2, 3, 4, 6)]  # (development logs)
    assert said == ["refused", "sent", "refused", "sent"]
    sent = [r.api_key for r in lproject.requests]
    assert sent == [KEYS["development"], KEYS["production"]]  # production only once confirmed


_HOLDER = """
import os, signal, sys, diskcache
cache = diskcache.Cache(sys.argv[1])
with cache.transact():
    cache.set("held", 1)
    print("holding", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)  # a debugger, a frozen VM, Ctrl-Z
"""


@pytest.mark.timeout(60)  # a call must not wait on the lock for BUSY_TIMEOUT (60 s) or more
def test_a_stopped_process_holding_the_budget_costs_a_call_at_most_its_timeout(
    lproject: MistralTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import subprocess
    import sys

    path = use_project(tmp_path / "locked", lproject.url, monkeypatch)
    path.write_text(path.read_text().replace("max_retries = 0", "max_retries = 0\ntimeout = 2"))
    reset_core()
    settings = get_settings("staging")
    assert settings.timeout == 2
    directory = budget_dir(settings, KEYS["staging"])
    client = get_client("staging")
    client.chat.complete(messages=HELLO, cache=False)  # the budget exists on disk
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(directory)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            client.chat.complete(messages=HELLO, cache=False)
            client.chat.complete(messages=HELLO, cache=False)
        assert lproject.count() == 3  # both calls went on
        said = [str(w.message) for w in seen if "locked by another process" in str(w.message)]
        assert len(said) == 1, said  # one warning, however many calls
        assert "for more than 2 s (a stopped or hung process?)" in said[0]
        assert "nothing needs deleting" in said[0]
        assert "delete that directory" not in said[0]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder is gone: the shared budget is used again (its state moves on disk)
    from mistral_nbenv.store.local import DiskStore

    before = DiskStore(directory).get("bucket")
    client.chat.complete(messages=HELLO, cache=False)
    assert DiskStore(directory).get("bucket") != before


def _descriptors_under(directory: Path) -> list[str]:
    """This process's open files inside ``directory`` (Linux: /proc/self/fd)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


def test_closing_a_client_releases_its_stores_descriptors(lproject: MistralTestServer) -> None:
    client = get_client("staging")
    client.chat.complete(messages=HELLO)  # cache, budget and usage all opened
    root = Path(client.settings.cache.directory)
    assert _descriptors_under(root)  # SQLite files: the databases and their WAL
    client.close()
    assert _descriptors_under(root) == []
    assert client.chat.complete(messages=HELLO).choices  # reopened on use: a hit
    assert lproject.count() == 1
