"""``%mistral_env`` and ``%%mistral`` on a real IPython shell that re-raises cell errors."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import ExecutionResult, InteractiveShell

from mistral_nbenv import current_environment, use_environment
from mistral_nbenv.testing import DEFAULT_CATALOG, Fault, MistralTestServer, ModelSpec
from tests._browser_project import (
    KEYS,
    assert_no_key,
    reset_core,
    scrubbed_environ,
    use_project,
)


class ReRaisingShell(InteractiveShell):
    """An InteractiveShell whose ``run_cell`` raises what the cell raised (jupysql's habit)."""

    def run_cell(self, *args: Any, **kwargs: Any) -> ExecutionResult:
        result = super().run_cell(*args, **kwargs)
        result.raise_error()
        return result


class Outputs:
    """Everything the magics displayed (every mime type) plus what the shell printed."""

    def __init__(self, shell: InteractiveShell) -> None:
        self.shell = shell
        self.objects: list[Any] = []
        self.bundles: list[dict[str, Any]] = []

    def record(self, obj: Any, *_args: Any, **_kwargs: Any) -> None:
        self.objects.append(obj)
        data, _meta = self.shell.display_formatter.format(obj)
        self.bundles.append(data)

    @property
    def text(self) -> str:
        return "\n".join(b.get("text/plain", "") for b in self.bundles)

    @property
    def html(self) -> str:
        return "\n".join(b.get("text/html", "") for b in self.bundles)

    def all(self) -> str:
        return "\n".join(str(v) for b in self.bundles for v in b.values())


@pytest.fixture
def ip(lproject: MistralTestServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[ReRaisingShell]:
    """A fresh shell with the extension loaded."""
    InteractiveShell.clear_instance()
    shell = ReRaisingShell()
    shell.run_cell("%load_ext mistral_nbenv")
    yield shell
    shell.run_cell("%unload_ext mistral_nbenv")
    InteractiveShell.clear_instance()


@pytest.fixture
def out(
    ip: ReRaisingShell, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Outputs]:
    """Records every displayed object; after the test, asserts no key in any output."""
    outputs = Outputs(ip)
    monkeypatch.setattr("mistral_nbenv.ui.magic.display", outputs.record)
    yield outputs
    captured = capsys.readouterr()
    assert_no_key(outputs.all(), captured.out, captured.err, [repr(o) for o in outputs.objects])


# ----------------------------------------------------------------------------- loading


def test_load_and_unload_are_idempotent(lproject: MistralTestServer) -> None:
    import mistral_nbenv

    InteractiveShell.clear_instance()
    shell = ReRaisingShell()
    try:
        mistral_nbenv.load_ipython_extension(shell)
        mistral_nbenv.load_ipython_extension(shell)
        assert "mistral_env" in shell.magics_manager.magics["line"]
        assert "mistral" in shell.magics_manager.magics["cell"]
        mistral_nbenv.unload_ipython_extension(shell)
        mistral_nbenv.unload_ipython_extension(shell)
        assert "mistral_env" not in shell.magics_manager.magics["line"]
        assert "mistral" not in shell.magics_manager.magics["cell"]
        with pytest.raises(UsageError, match="not found"):
            shell.run_cell("%mistral_env status")
    finally:
        InteractiveShell.clear_instance()


def test_load_ext_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "before = set(sys.modules)\n"
        "InteractiveShell.instance().run_line_magic('load_ext', 'mistral_nbenv')\n"
        "heavy = [m for m in set(sys.modules) - before if m.split('.')[0] in ("
        "'mistralai', 'ipywidgets', 'dynaconf', 'diskcache', 'hvac', 'boto3', 'google',"
        " 'httpx2')]\n"
        "print(sorted(heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=scrubbed_environ()
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_unload_closes_clients(ip: ReRaisingShell, out: Outputs) -> None:
    from mistral_nbenv import workspace

    first = workspace.get_client()
    ip.run_cell("%unload_ext mistral_nbenv")
    assert workspace.get_client() is not first
    ip.run_cell("%load_ext mistral_nbenv")


# ----------------------------------------------------------------------------- %mistral_env


def test_status_shows_badge_model_masked_key_and_source(ip: ReRaisingShell, out: Outputs) -> None:
    ip.run_cell("%mistral_env status")
    assert "[development]" in out.text
    assert "…0001" in out.text
    assert "settings.toml" in out.text  # where the key came from
    assert "mistral-medium-latest" in out.text  # development rolls out the new model
    assert 'data-environment="development"' in out.html
    assert "#2e7d32" in out.html  # development is green


def test_status_of_another_environment(ip: ReRaisingShell, out: Outputs) -> None:
    ip.run_cell("%mistral_env status prod")
    assert "[production 🔒]" in out.text
    assert "…0003" in out.text
    assert "#c62828" in out.html  # production is red
    assert current_environment() == "development"


def test_no_arguments_in_a_terminal_shows_text_status(ip: ReRaisingShell, out: Outputs) -> None:
    ip.run_cell("%mistral_env")
    assert "[development] active" in out.text
    assert not any(type(o).__name__ == "EnvironmentSwitcher" for o in out.objects)


def test_no_arguments_in_a_kernel_shows_the_switcher(
    ip: ReRaisingShell, out: Outputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mistral_nbenv.ui.magic._widgets_can_render", lambda shell: True)
    ip.run_cell("%mistral_env")
    [switcher] = out.objects
    assert type(switcher).__name__ == "EnvironmentSwitcher"
    assert switcher.picker.value == "development"
    ip.run_cell("%mistral_env use staging")
    assert switcher.picker.value == "staging"
    ip.run_cell("%unload_ext mistral_nbenv")  # closes the switcher and its listener
    assert switcher.comm is None
    ip.run_cell("%load_ext mistral_nbenv")


def test_list_marks_the_active_environment(ip: ReRaisingShell, out: Outputs) -> None:
    ip.run_cell("%mistral_env list")
    lines = out.text.splitlines()
    assert [line[2:].split()[0] for line in lines] == [
        "[development]",
        "[staging]",
        "[production",
        "[qa]",
    ]
    assert lines[0].startswith("*")
    assert "#6b7280" in out.html  # qa (unknown to the palette) is grey
    assert "#f59e0b" in out.html  # staging is amber


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("check", ["ok    development"]),
        ("check staging", ["ok    staging"]),
        ("check --all", ["ok    development", "ok    staging", "ok    production", "ok    qa"]),
    ],
)
def test_check(ip: ReRaisingShell, out: Outputs, line: str, expected: list[str]) -> None:
    ip.run_cell(f"%mistral_env {line}")
    lines = out.text.splitlines()
    assert [r.split(":")[0] for r in lines if not r.startswith("warn")] == expected
    # the same project hygiene findings as `mistral-nbenv check`: literal keys in settings.toml
    assert any(r.startswith("warn") and "literal api_key" in r for r in lines)
    assert "⚠" in out.html


def test_models_commands_in_the_magic(
    ip: ReRaisingShell, out: Outputs, lproject: MistralTestServer
) -> None:
    """``%mistral_env models list|lock|promote``: the CLI's commands, the same guard."""
    ip.run_cell("%mistral_env models list staging")
    assert "mistral-small-latest -> mistral-small-2506 [model]" in out.text
    assert "mistral-nbenv-models" in out.html
    ip.run_cell("%mistral_env models lock --all")
    assert "[production] mistral-small-latest -> mistral-small-2506" in out.text
    lock = Path(os.environ["MISTRAL_NBENV_SETTINGS"]).parent / "models.lock.toml"
    assert lock.is_file()
    lproject.catalog = [  # the alias moves; staging takes it, production waits for --confirm
        ModelSpec("mistral-small-2603", ("mistral-small-latest",)),
        *[s for s in DEFAULT_CATALOG if s.id != "mistral-small-2506"],
    ]
    ip.run_cell("%mistral_env models lock staging")
    assert "[staging] mistral-small-latest -> mistral-small-2603 (was mistral-small-2506)" in (
        out.text
    )
    before = lock.read_text()
    with pytest.raises(UsageError, match="production is protected"):
        ip.run_cell("%mistral_env models promote staging production")
    assert lock.read_text() == before
    ip.run_cell("%mistral_env models promote staging production --confirm")
    promoted = "[production] mistral-small-latest -> mistral-small-2603 (was mistral-small-2506)"
    assert promoted in out.text.splitlines()
    ip.run_cell("%mistral_env check production --online")
    assert "ok    production: model mistral-small-2603" in out.text


def test_check_reports_a_key_shared_by_two_environments(
    tmp_path: Path, lproject: MistralTestServer, monkeypatch: pytest.MonkeyPatch, out: Outputs
) -> None:
    shared = dict(KEYS, staging=KEYS["production"])
    use_project(tmp_path / "shared", lproject.url, monkeypatch, keys=shared)
    out.shell.run_cell("%mistral_env check --all")
    assert "FAIL" in out.text
    assert "✘" in out.html


@pytest.mark.parametrize("line", ["use staging", "staging", "stage", "use STAGE", "preview"])
def test_use_switches(ip: ReRaisingShell, out: Outputs, line: str) -> None:
    ip.run_cell(f"%mistral_env {line}")
    assert current_environment() == "staging"
    assert "[staging] active" in out.text
    assert "…0002" in out.text


@pytest.mark.parametrize("line", ["use production", "production", "prod", "use live"])
def test_protected_environment_without_confirm_explains_and_stays(
    ip: ReRaisingShell, out: Outputs, line: str
) -> None:
    with pytest.raises(UsageError) as info:
        ip.run_cell(f"%mistral_env {line}")
    message = str(info.value)
    assert "\n" not in message
    assert "protected" in message
    assert "%mistral_env use production --confirm" in message
    assert current_environment() == "development"


@pytest.mark.parametrize("line", ["use production --confirm", "prod --confirm"])
def test_protected_environment_with_confirm(ip: ReRaisingShell, out: Outputs, line: str) -> None:
    ip.run_cell(f"%mistral_env {line}")
    assert current_environment() == "production"
    assert "[production 🔒] active" in out.text


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("use", "required: env"),
        ("use staging extra", "unrecognized arguments"),
        ("nowhere", "Unknown environment 'nowhere'"),
        ("--frobnicate", "unrecognized arguments"),
        ("cache", "required: action"),
        ("cache frobnicate", "invalid choice"),
        ("check staging --all", "not allowed with"),
        ("status nowhere", "Unknown environment"),
        ("use staging --confirm=yes", "ignored explicit argument"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(
    ip: ReRaisingShell, out: Outputs, line: str, match: str
) -> None:
    with pytest.raises(UsageError, match=match) as info:
        ip.run_cell(f"%mistral_env {line}")
    assert "\n" not in str(info.value)
    assert current_environment() == "development"


def test_help_prints_the_grammar(ip: ReRaisingShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_cell("%mistral_env --help")
    text = capsys.readouterr().out
    assert "{status,list,check,models,use,cache,usage}" in text
    assert "%mistral_env ENV           the same as: %mistral_env use ENV" in text
    assert "%mistral_env ENV --confirm switch into a protected environment" in text
    assert "the CLI exits" not in text  # notebook terms in a notebook


@pytest.mark.parametrize(("typo", "meant"), [("stauts", "status"), ("chek", "check")])
def test_a_command_typo_suggests_the_command(ip: ReRaisingShell, typo: str, meant: str) -> None:
    with pytest.raises(UsageError) as info:
        ip.run_cell(f"%mistral_env {typo}")
    assert f"unknown command {typo!r}; did you mean {meant!r}?" in str(info.value)
    assert current_environment() == "development"


def test_magic_follows_use_environment(ip: ReRaisingShell, out: Outputs) -> None:
    use_environment("qa")
    ip.run_cell("%mistral_env status")
    assert "[qa] active" in out.text


def test_broken_settings_are_a_usage_error(
    tmp_path: Path, ip: ReRaisingShell, out: Outputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[staging]\ntimeout = "soon"\n', encoding="utf-8")
    monkeypatch.setenv("MISTRAL_NBENV_SETTINGS", str(bad))
    reset_core()
    with pytest.raises(UsageError, match="timeout") as info:
        ip.run_cell("%mistral_env use staging")
    assert "\n" not in str(info.value)


def test_missing_key_is_shown_not_raised_by_status(
    tmp_path: Path, lproject: MistralTestServer, out: Outputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_project(tmp_path / "nokeys", lproject.url, monkeypatch, keys={})
    out.shell.run_cell("%mistral_env status")
    assert "key       not available" in out.text
    assert "MISTRAL_API_KEY_DEV" in out.text


# ----------------------------------------------------------------------------- %%mistral


def test_cell_magic_renders_the_answer_and_returns_it(
    ip: ReRaisingShell, out: Outputs, lproject: MistralTestServer
) -> None:
    result = ip.run_cell("%%mistral -s 'Be brief.' -t 0.2 -m mistral-tiny\nHello there\n")
    answer = result.result
    assert ip.user_ns["_"] is answer
    assert answer.content == "Echo: Hello there"
    assert answer.choices[0].message.content == "Echo: Hello there"  # delegated to the response
    assert type(answer.response).__name__ == "ChatCompletionResponse"
    assert answer.environment == "development"
    assert answer.cached is False
    assert answer._repr_markdown_() == "Echo: Hello there"
    body = lproject.last_request.body
    assert body["model"] == "mistral-tiny"
    assert body["temperature"] == 0.2
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
    ]
    assert "[development] mistral-tiny · from API" in out.text
    assert 'data-environment="development"' in out.html


def test_cell_magic_badge_names_the_model_sent_and_why(
    ip: ReRaisingShell, out: Outputs, lproject: MistralTestServer
) -> None:
    """Development sends new_model (its packaged flag): the badge says which, and why."""
    answer = ip.run_cell("%%mistral\nWhich model?").result
    assert lproject.last_request.body["model"] == "mistral-medium-latest"
    assert answer.model_sent == "mistral-medium-latest"
    assert answer.model_reason == (
        "new_model, because features.use_new_model is on: packaged defaults [development]"
    )
    line = out.text.splitlines()[-1]
    assert line.startswith(
        "[development] mistral-medium-latest (answered as mistral-medium-2508) — new_model, because"
    )
    assert "packaged defaults [development]" in out.html
    ip.run_cell("%%mistral -m mistral-small-latest\nWhich model?")  # named: no reason
    assert out.text.splitlines()[-1].startswith(
        "[development] mistral-small-latest (answered as mistral-small-2506) · from API"
    )


def test_cell_magic_second_run_comes_from_the_cache(
    ip: ReRaisingShell, out: Outputs, lproject: MistralTestServer
) -> None:
    ip.run_cell("%mistral_env staging")
    first = ip.run_cell("%%mistral\nWhat is a cache?").result
    second = ip.run_cell("%%mistral\nWhat is a cache?").result
    assert (first.cached, second.cached) == (False, True)
    assert lproject.count("/v1/chat/completions") == 1
    assert "from cache" in out.text.splitlines()[-1]
    ip.run_cell("%%mistral --no-cache\nWhat is a cache?")
    assert lproject.count("/v1/chat/completions") == 2

    out.bundles.clear()
    ip.run_cell("%mistral_env cache stats")
    assert "[staging] cache: 1 entry" in out.text
    assert 'data-environment="staging"' in out.html
    assert "cache: 1 entry" in out.html
    assert "[staging]" not in out.html  # the HTML shows the badge, not the text one
    ip.run_cell("%mistral_env cache clear")
    assert "removed 1 cached response" in out.text
    ip.run_cell("%mistral_env cache stats --env staging")
    assert "[staging] cache: 0 entries" in out.text


def test_cell_magic_uses_the_default_model(
    ip: ReRaisingShell, out: Outputs, lproject: MistralTestServer
) -> None:
    ip.run_cell("%%mistral\nhi")
    assert lproject.last_request.body["model"] == "mistral-medium-latest"


def test_cell_magic_api_error_is_one_line(
    ip: ReRaisingShell, out: Outputs, lproject: MistralTestServer
) -> None:
    lproject.enqueue(Fault.status(401))
    with pytest.raises(UsageError) as info:
        ip.run_cell("%%mistral\nhi")
    assert "\n" not in str(info.value)
    assert "development" in str(info.value)


@pytest.mark.parametrize(
    ("line", "match"),
    [("-t warm", "invalid float value"), ("--frobnicate", "unrecognized arguments")],
)
def test_cell_magic_bad_arguments(ip: ReRaisingShell, out: Outputs, line: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        ip.run_cell(f"%%mistral {line}\nhi")


def test_cell_magic_empty_cell(ip: ReRaisingShell, out: Outputs) -> None:
    with pytest.raises(UsageError, match="empty"):
        ip.run_cell("%%mistral\n   \n")


def test_cell_magic_without_key_names_the_environment(
    tmp_path: Path, lproject: MistralTestServer, out: Outputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_project(tmp_path / "nokeys", lproject.url, monkeypatch, keys={})
    with pytest.raises(UsageError, match="development") as info:
        out.shell.run_cell("%%mistral\nhi")
    assert "\n" not in str(info.value)
    assert lproject.count() == 0


@pytest.mark.parametrize("line", ["prod --c", "use prod --conf", "use production --confir"])
def test_an_abbreviated_confirm_never_switches(ip: ReRaisingShell, out: Outputs, line: str) -> None:
    before = current_environment()
    with pytest.raises(UsageError, match="unrecognized arguments"):
        ip.run_cell(f"%mistral_env {line}")
    assert current_environment() == before != "production"


def test_clearing_a_protected_cache_needs_confirm(ip: ReRaisingShell, out: Outputs) -> None:
    with pytest.raises(UsageError, match="needs confirmation"):
        ip.run_cell("%mistral_env cache clear --env prod")
    ip.run_cell("%mistral_env cache clear --env prod --confirm")
    assert "removed 0 cached responses" in out.text


def test_usage_shows_the_ledger_as_a_table_and_a_chart(
    ip: ReRaisingShell, out: Outputs, lproject: MistralTestServer
) -> None:
    ip.run_cell("%mistral_env usage")
    assert "nothing recorded yet" in out.text
    ip.run_cell("%mistral_env staging")
    first = ip.run_cell("%%mistral\nHow many tokens?").result
    ip.run_cell("%%mistral\nHow many tokens?")  # a cache hit: counted, no tokens spent
    tokens = first.response.usage.prompt_tokens + first.response.usage.completion_tokens
    out.bundles.clear()
    ip.run_cell("%mistral_env usage")
    assert "staging: 1 requests, 1 cache hits" in out.text
    assert f"{tokens:,} tokens" in out.text
    assert "tokens per day" in out.text
    assert "█" in out.text
    assert "<svg" in out.html
    assert re.search(
        f'data-environment="staging" data-day="[0-9-]+" data-tokens="{tokens}"', out.html
    )
    out.bundles.clear()
    ip.run_cell("%mistral_env usage --env development")
    assert "nothing recorded yet" in out.text
    assert "staging" not in out.text


@pytest.mark.parametrize(
    ("cell", "magic"),
    [
        ("%mistral_env use 'staging", "%mistral_env"),
        ('%%mistral -s "Be brief.\nHello', "%%mistral"),
    ],
)
def test_an_unbalanced_quote_is_one_line(
    ip: ReRaisingShell, lproject: MistralTestServer, cell: str, magic: str
) -> None:
    with pytest.raises(UsageError) as info:
        ip.run_cell(cell)
    message = str(info.value)
    assert message.startswith(f"{magic}: No closing quotation")
    assert "close the quote" in message
    assert lproject.count() == 0


def test_an_interrupted_stream_keeps_what_arrived_and_is_not_cached(
    lproject: MistralTestServer,
) -> None:
    import mistral_nbenv
    from mistral_nbenv.ui.ask import ask_stream

    client = mistral_nbenv.get_client("staging")
    seen: list[str] = []

    def interrupt_after_two(text: str) -> None:
        seen.append(text)
        if len(seen) == 2:
            raise KeyboardInterrupt  # what Ctrl-C / a notebook's interrupt raises

    words = [{"role": "user", "content": "one two three four five six"}]
    answer = ask_stream(client, interrupt_after_two, messages=words)
    assert answer.interrupted is True
    assert answer.content == seen[-1]  # what arrived, kept
    assert 0 < len(answer.content) < len("Echo: one two three four five six")
    assert answer.provenance["interrupted"] is True
    whole = ask_stream(client, messages=words)  # not cached: asked again, whole
    assert whole.content == "Echo: one two three four five six"
    assert (whole.cached, lproject.count()) == (False, 2)
    again = ask_stream(client, messages=words)  # now a replay from the cache
    assert (again.cached, again.content, lproject.count()) == (True, whole.content, 2)
