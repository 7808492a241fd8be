"""Models per environment (issue 35): what is sent is what was configured, pinned and promoted.

The real console script and the real SDK against the loopback server, whose ``models.list``
serves aliases, deprecation dates and replacements, and whose answers carry the API's
deprecation header. Every project here keeps its keys in a private ``.secrets.toml``, so
``check --strict`` has nothing else to say.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import textwrap
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mistral_nbenv import ModelDeprecationWarning, get_client, get_settings
from mistral_nbenv.testing import DEFAULT_CATALOG, MistralTestServer, ModelSpec
from tests._cli import run_cli
from tests.conftest import reset_state

KEYS = {
    "development": "DevModelsKeyAbCdEfGhIjKlMnOp0001",
    "staging": "StgModelsKeyAbCdEfGhIjKlMnOp0002",
    "production": "PrdModelsKeyAbCdEfGhIjKlMnOp0003",
}
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def server() -> Iterator[MistralTestServer]:
    with MistralTestServer(catalog=list(DEFAULT_CATALOG)) as running:
        yield running


class Project:
    """A project on disk whose environments point at the loopback server."""

    def __init__(self, root: Path, server: MistralTestServer) -> None:
        self.root = root
        self.server = server

    def write(self, staging: str = "", production: str = "", extra: str = "") -> None:
        """settings.toml: staging and production both name mistral-large-latest, plus the
        given lines under ``[staging]`` / ``[production]``, then ``extra`` tables."""
        base = textwrap.dedent(
            f"""
            [default]
            server_url = "{self.server.url}"
            max_retries = 0
            [default.cache]
            directory = "{(self.root / "cache").as_posix()}"
            [default.rate_limits]
            requests_per_minute = 0
            tokens_per_minute = 0
            """
        )
        base += f'[staging]\nmodel = "mistral-large-latest"\n{textwrap.dedent(staging)}\n'
        base += f'[production]\nmodel = "mistral-large-latest"\n{textwrap.dedent(production)}\n'
        (self.root / "settings.toml").write_text(base + textwrap.dedent(extra))
        reset_state()

    def cli(self, *args: str) -> tuple[int, str]:
        done = run_cli(*args, cwd=self.root)
        text = done.stdout + done.stderr
        for key in KEYS.values():
            assert key[:-4] not in text
        return done.returncode, text

    def lock(self) -> dict[str, Any]:
        return tomllib.loads((self.root / "models.lock.toml").read_text())

    def sent(self, env: str, **kwargs: Any) -> str:
        """The model the server received for one chat call in ``env`` (cache off)."""
        get_client(env).chat.complete(messages=HELLO, cache=False, **kwargs)
        assert self.server.last_request is not None
        return str(self.server.last_request.body["model"])


@pytest.fixture
def proj(tmp_path: Path, server: MistralTestServer, monkeypatch: pytest.MonkeyPatch) -> Project:
    root = tmp_path / "team"
    root.mkdir()
    secrets = "".join(f'[{env}]\napi_key = "{key}"\n' for env, key in KEYS.items())
    (root / ".secrets.toml").write_text(secrets)
    (root / ".secrets.toml").chmod(0o600)
    monkeypatch.chdir(root)
    project = Project(root, server)
    project.write()
    return project


# ------------------------------------------------------------------ staging mirrors production


def test_staging_sends_what_production_sends_and_check_compares_them(proj: Project) -> None:
    assert proj.sent("staging") == proj.sent("production") == "mistral-large-latest"
    assert get_settings("staging").model_sent == "mistral-large-latest"
    code, text = proj.cli("check", "--all", "--strict")
    assert code == 0, text
    assert "staging sends" not in text

    # a flag turned on in the project's own [staging]: a difference with its cause
    proj.write(extra="[staging.features]\nuse_new_model = true\n")
    assert proj.sent("staging") == "mistral-medium-latest"
    code, text = proj.cli("check", "--all")
    assert code == 0, text  # a warning
    assert (
        "warn  staging sends chat model 'mistral-medium-latest' (new_model, because "
        "features.use_new_model is on: settings.toml [staging]) but production sends "
        "'mistral-large-latest' (model from settings.toml [production])"
    ) in text
    code, text = proj.cli("check", "--all", "--strict")
    assert code == 1
    code, out = proj.cli("check", "--all", "--strict", "--json")
    doc = json.loads(out)
    warned = [f for f in doc["findings"] if f["severity"] == "warning"]
    assert [f["environments"] for f in warned] == [["staging", "production"]]

    # the project says staging leads: a note, and --strict passes
    proj.write(
        staging="models_lead_production = true",
        extra="[staging.features]\nuse_new_model = true\n",
    )
    code, text = proj.cli("check", "--all", "--strict")
    assert code == 0, text
    assert "note  staging sends chat model 'mistral-medium-latest'" in text
    assert "models_lead_production = true, from settings.toml [staging]" in text


def test_check_compares_embeddings_fim_and_the_server(proj: Project) -> None:
    other = proj.server.url.replace("127.0.0.1", "localhost")
    proj.write(
        staging=f'server_url = "{other}"',
        production='embedding_model = "mistral-embed-2312"\nfim_model = "codestral-2508"',
    )
    code, text = proj.cli("check", "--all", "--strict")
    assert code == 1
    assert "staging sends embeddings model 'mistral-embed'" in text
    assert "production sends 'mistral-embed-2312' (embedding_model from settings.toml" in text
    assert "staging sends FIM model 'codestral-latest'" in text
    assert f"staging sends server '{other}' (server_url from settings.toml [staging])" in text
    # leading excuses the models, never the server
    proj.write(staging=f'server_url = "{other}"\nmodels_lead_production = true')
    code, text = proj.cli("check", "--all", "--strict")
    assert code == 1
    assert "warn  staging sends server" in text


# ------------------------------------------------------------------ pins


def test_lock_pins_each_environment_and_calls_send_the_pinned_ids(proj: Project) -> None:
    code, text = proj.cli("models", "lock", "--all")
    assert code == 0, text
    assert "[production] mistral-large-latest -> mistral-large-2512" in text
    lock = proj.lock()
    assert lock["production"]["mistral-large-latest"]["id"] == "mistral-large-2512"
    assert lock["staging"]["mistral-embed"]["id"] == "mistral-embed-2312"
    assert lock["development"]["mistral-medium-latest"]["id"] == "mistral-medium-2508"
    reset_state()

    # the alias moves on the server: pinned environments keep sending the dated ID
    proj.server.catalog = [
        ModelSpec("mistral-large-2602", ("mistral-large-latest",)),
        *[s for s in DEFAULT_CATALOG if s.id != "mistral-large-2512"],
        ModelSpec("mistral-large-2512", ()),
    ]
    assert proj.sent("production") == "mistral-large-2512"
    assert proj.sent("staging", model="mistral-large-latest") == "mistral-large-2512"  # named
    client = get_client("production")
    client.embeddings.create(inputs=["x"])
    assert proj.server.last_request.body["model"] == "mistral-embed-2312"
    client.fim.complete(prompt="def f():")
    assert proj.server.last_request.body["model"] == "codestral-2508"
    stats = client.stats.as_dict()
    assert stats["model"] == "mistral-large-2512"
    assert stats["model_reason"] == (
        "mistral-large-latest pinned to mistral-large-2512 by models.lock.toml"
    )
    assert stats["models"]["mistral-large-2512"] == 1

    code, out = proj.cli("status", "--env", "production", "--json")
    env = json.loads(out)["environment"]
    assert (env["model"], env["model_reason"]) == (
        "mistral-large-2512",
        "mistral-large-latest pinned to mistral-large-2512 by models.lock.toml",
    )
    code, out = proj.cli("usage", "--env", "production", "--json")
    assert {row["model"] for row in json.loads(out)["rows"]} >= {"mistral-large-2512"}

    # roll the alias through staging, then promote to production (protected: --confirm)
    code, text = proj.cli("models", "lock", "--env", "staging")
    assert code == 0, text
    assert "[staging] mistral-large-latest -> mistral-large-2602 (was mistral-large-2512)" in text
    reset_state()
    assert proj.sent("staging") == "mistral-large-2602"
    before = (proj.root / "models.lock.toml").read_text()
    code, text = proj.cli("models", "promote", "staging", "production")
    assert code == 2
    assert "production is protected" in text
    assert "--confirm" in text
    assert "Nothing was written" in text
    assert (proj.root / "models.lock.toml").read_text() == before
    code, text = proj.cli("models", "lock", "--env", "production")  # would move a pin
    assert code == 2
    assert "production is protected" in text
    assert (proj.root / "models.lock.toml").read_text() == before
    code, text = proj.cli("models", "promote", "staging", "production", "--confirm")
    assert code == 0, text
    assert (
        "[production] mistral-large-latest -> mistral-large-2602 (was mistral-large-2512)" in text
    )
    reset_state()
    assert proj.sent("production") == "mistral-large-2602"


def test_models_list_shows_aliases_deprecations_and_what_the_settings_use(proj: Project) -> None:
    code, text = proj.cli("models", "list", "--env", "production")
    assert code == 0, text
    lines = [line.strip() for line in text.splitlines()]
    assert "mistral-large-latest -> mistral-large-2512 [model]" in lines
    assert "mistral-large-2411 (deprecated: retires 2027-05-31, use mistral-large-2512)" in lines
    code, out = proj.cli("models", "list", "production", "--json")
    rows = {row["id"]: row for row in json.loads(out)["models"]}
    assert rows["codestral-latest"]["used_by"] == ["fim_model"]
    assert rows["codestral-latest"]["points_to"] == "codestral-2508"


def test_a_name_the_server_does_not_list_is_refused_by_lock(proj: Project) -> None:
    (proj.root / "settings.toml").write_text(
        f'[default]\nserver_url = "{proj.server.url}"\n[staging]\nmodel = "mistral-huge-latest"\n'
    )
    code, text = proj.cli("models", "lock", "--env", "staging")
    assert code == 2
    assert "[staging] The API's models.list does not list 'mistral-huge-latest'" in text
    assert not (proj.root / "models.lock.toml").exists()


def test_check_fails_on_a_pin_that_retires_within_30_days(proj: Project) -> None:
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(days=10)).replace(microsecond=0)
    proj.server.catalog = [
        ModelSpec(
            "mistral-large-2512",
            ("mistral-large-latest",),
            soon.isoformat().replace("+00:00", "Z"),
            "mistral-large-2602",
        ),
        *[s for s in DEFAULT_CATALOG if s.id != "mistral-large-2512"],
    ]
    assert proj.cli("models", "lock", "--all")[0] == 0
    code, text = proj.cli("check", "--env", "production")
    assert code == 1
    assert (
        f"[production] 'mistral-large-latest' is pinned to 'mistral-large-2512', which retires "
        f"on {soon.date().isoformat()}; its replacement is 'mistral-large-2602'."
    ) in text


def test_check_online_sees_a_deprecation_announced_after_the_lock(proj: Project) -> None:
    assert proj.cli("models", "lock", "--all")[0] == 0
    past = "2026-01-01T00:00:00Z"
    proj.server.catalog = [
        ModelSpec("mistral-large-2512", ("mistral-large-latest",), past, "mistral-large-2602"),
        *[s for s in DEFAULT_CATALOG if s.id != "mistral-large-2512"],
    ]
    code, text = proj.cli("check", "--env", "production")
    assert code == 0, text  # the lock knows nothing of it yet
    code, text = proj.cli("check", "--env", "production", "--online")
    assert code == 1
    assert "which was deprecated on 2026-01-01; its replacement is 'mistral-large-2602'" in text


def test_a_model_the_lock_does_not_pin_is_a_warning(proj: Project) -> None:
    assert proj.cli("models", "lock", "--all")[0] == 0
    proj.write(production='fim_model = "codestral-2508"')
    code, text = proj.cli("check", "--env", "production", "--strict")
    assert code == 1
    assert "[production] 'codestral-2508' not pinned in models.lock.toml" in text


def test_a_broken_lock_file_is_a_clear_error(proj: Project) -> None:
    (proj.root / "models.lock.toml").write_text('[production."mistral-large-latest"]\nid = 3\n')
    code, text = proj.cli("status")
    assert code == 2
    assert "models.lock.toml [production.'mistral-large-latest'] needs id" in text


# ------------------------------------------------------------------ the deprecation header


def test_a_deprecated_model_warns_once_per_model_per_process(
    proj: Project, caplog: pytest.LogCaptureFixture
) -> None:
    proj.server.catalog = [
        *DEFAULT_CATALOG,
        ModelSpec("mistral-old-2401", (), "2027-02-01T00:00:00Z", "mistral-small-2506"),
        ModelSpec("mistral-older-2312", (), "2027-03-01T00:00:00Z"),
    ]
    client = get_client("staging")
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        for _ in range(3):
            client.chat.complete(model="mistral-old-2401", messages=HELLO, cache=False)
        for _event in client.chat.stream(model="mistral-older-2312", messages=HELLO, cache=False):
            pass  # a stream carries no deprecation header (the SDK would fail reading it)
        client.chat.complete(model="mistral-older-2312", messages=HELLO, cache=False)
    said = [w for w in seen if issubclass(w.category, ModelDeprecationWarning)]
    assert [str(w.message).split(" is deprecated")[0] for w in said] == [
        "[staging] the API says model mistral-old-2401",
        "[staging] the API says model mistral-older-2312",
    ]
    assert "retired on 2027-02-01T00:00:00Z" in str(said[0].message)
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]  # not the SDK's


def test_a_retired_model_answers_400(proj: Project) -> None:
    from mistral_nbenv import APIError

    proj.server.catalog = [ModelSpec("mistral-gone-2301", (), "2026-01-01T00:00:00Z", "x-2")]
    with pytest.raises(APIError) as info:
        get_client("staging").chat.complete(model="mistral-gone-2301", messages=HELLO)
    assert info.value.status_code == 400
    assert "retired" in str(info.value)


def test_the_deprecation_note_is_one_line_in_a_notebook(
    proj: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MISTRAL_ENV", "staging")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext mistral_nbenv"),
        # --no-stream: the header comes with a plain answer (a stream carries none: the
        # SDK's own hook would fail reading a streamed body to log it)
        nbformat.v4.new_code_cell("%%mistral --no-stream -m mistral-large-2411\nHello"),
        nbformat.v4.new_code_cell(
            "%%mistral --no-stream -m mistral-large-2411 --no-cache\nHello again"
        ),
    ]
    NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(proj.root)}}
    ).execute()

    def stderr(cell: Any) -> list[str]:
        return [
            line
            for output in cell.outputs
            if output.output_type == "stream" and output.name == "stderr"
            for line in output.text.splitlines()
        ]

    first, second = stderr(nb.cells[1]), stderr(nb.cells[2])
    assert first == [
        "mistral_nbenv: [staging] the API says model mistral-large-2411 is deprecated and will "
        "be retired on 2027-05-31T00:00:00Z. Choose its replacement in the settings "
        "(`mistral-nbenv models list` shows each model's replacement), test it, then "
        "`mistral-nbenv models lock`."
    ]
    assert second == []  # once per model per process
    assert proj.server.count("/v1/chat/completions") == 2


# ------------------------------------------------------------------ region and token files


def test_server_region_is_validated_shown_and_separates_state(proj: Project) -> None:
    from mistral_nbenv.policies.cache import ResponseCache
    from mistral_nbenv.store.layout import budget_dir
    from mistral_nbenv.store.local import MemoryStore

    proj.write(production='server = "eu"')
    code, text = proj.cli("status", "--env", "production")
    assert code == 2
    assert "`server` = 'eu' (from settings.toml [production]) and `server_url` (from " in text
    assert "set one of them" in text

    (proj.root / "settings.toml").write_text(
        '[production]\nserver = "eu"\n[staging]\nserver = "us"\n'
    )
    reset_state()
    code, out = proj.cli("status", "--env", "production", "--json")
    assert code == 0, out
    env = json.loads(out)["environment"]
    assert (env["server_url"], env["server"]) == ("https://api.eu.mistral.ai", "eu")
    code, text = proj.cli("status", "--env", "production")
    assert "server    https://api.eu.mistral.ai (server = eu)" in text
    client = get_client("production")  # nothing is sent: the SDK object is only built
    assert client.raw.sdk_configuration.get_server_details()[0] == "https://api.eu.mistral.ai"
    eu, us = get_settings("production"), get_settings("staging")
    eu_us = dataclasses.replace(eu, server="us")  # the same environment in another region
    assert us.base_url == eu_us.base_url == "https://api.us.mistral.ai"
    assert budget_dir(eu, "k") != budget_dir(eu_us, "k")  # the budget: per key and region
    store = MemoryStore()
    request = ("chat.complete", {"model": "m", "messages": HELLO})
    eu_key = ResponseCache.for_settings(eu, store).key(*request)
    assert eu_key != ResponseCache.for_settings(eu_us, store).key(*request)

    (proj.root / "settings.toml").write_text('[production]\nserver = "asia"\n')
    reset_state()
    code, text = proj.cli("status", "--env", "production")
    assert code == 2
    assert "`server` must be 'global', 'eu' or 'us' (or empty), got 'asia'" in text


def test_a_token_file_is_read_on_every_request(
    proj: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mistral_nbenv import MissingAPIKeyError

    token = proj.root / "run" / "token"
    token.parent.mkdir()
    token.write_text("SaTokenVersionOneAbCdEfGhIjKl0001\n")
    text = (proj.root / ".secrets.toml").read_text()
    text = text.replace(f'api_key = "{KEYS["staging"]}"', 'api_key = "file:run/token"')
    (proj.root / ".secrets.toml").write_text(text)
    reset_state()
    proj.server.expected_api_key = "SaTokenVersionOneAbCdEfGhIjKl0001"
    client = get_client("staging")
    assert "…0001" in repr(client)
    client.chat.complete(messages=HELLO, cache=False)

    # rotated in place: the same client sends the new token
    token.write_text("Bearer SaTokenVersionTwoAbCdEfGhIjKl0002\n")
    proj.server.expected_api_key = "SaTokenVersionTwoAbCdEfGhIjKl0002"
    client.chat.complete(messages=HELLO, cache=False)
    assert proj.server.last_request.api_key == "SaTokenVersionTwoAbCdEfGhIjKl0002"

    code, out = proj.cli("status", "--env", "staging")
    assert code == 0, out
    assert "…0002" in out  # the token as it is now
    # (status wraps long values at 80 columns)
    assert "file:run/token from .secrets.toml [staging]; read on every request" in " ".join(
        out.split()
    )
    assert "SaTokenVersion" not in out

    cases = (
        (None, "does not exist"),
        ("  \n", "is empty"),
        ("Bearer \n", "holds only 'Bearer'"),
        (b"\xff\xfe", "is not UTF-8 text"),
        ("dir", "is a directory"),  # unreadable (root reads any file, so not by its mode)
    )
    for content, why in cases:
        if token.is_dir():
            token.rmdir()
        if content is None:
            token.unlink()
        elif content == "dir":
            token.unlink(missing_ok=True)
            token.mkdir()
        elif isinstance(content, bytes):
            token.write_bytes(content)
        else:
            token.write_text(content)
        with pytest.raises(MissingAPIKeyError) as info:
            client.chat.complete(messages=HELLO, cache=False)
        message = str(info.value)
        assert f"the token file {token} (file:run/token from .secrets.toml [staging]" in message
        assert why in message
        assert "SaTokenVersion" not in message


def test_the_sdk_service_account_variable_gives_production_its_key(
    proj: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = proj.root / "sa-token"
    token.write_text("SaPodTokenAbCdEfGhIjKlMnOpQrSt0009")
    text = (proj.root / ".secrets.toml").read_text()
    (proj.root / ".secrets.toml").write_text(
        text.replace(f'[production]\napi_key = "{KEYS["production"]}"\n', "")
    )
    monkeypatch.setenv("MISTRAL_SA_TOKEN_PATH", str(token))
    reset_state()
    proj.server.expected_api_key = "SaPodTokenAbCdEfGhIjKlMnOpQrSt0009"
    assert proj.sent("production") == "mistral-large-latest"
    code, out = proj.cli("status", "--env", "production", "--json")
    assert code == 0, out
    env = json.loads(out)["environment"]
    assert env["key_masked"] == "…0009"
    assert env["key_source"] == (
        "MISTRAL_SA_TOKEN_PATH from process environment; read on every request"
    )
    assert "SaPodToken" not in out
    assert os.environ["MISTRAL_SA_TOKEN_PATH"] == str(token)
