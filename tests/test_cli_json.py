"""``check --strict`` and ``--json`` on status, list, check and cache stats (issue 16).

The real console script on a real project; the JSON is parsed and its documented fields
asserted; no output ever holds a key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from mistral_nbenv.testing import MistralTestServer
from tests._browser_project import KEYS
from tests._cli import run_cli

ROOT_FIELDS = {"schema"}


def _run(cwd: Path, *args: str) -> tuple[int, str, str]:
    done = run_cli(*args, cwd=cwd, module=True)
    for key in KEYS.values():
        assert key[:-4] not in done.stdout + done.stderr
    return done.returncode, done.stdout, done.stderr


def _doc(cwd: Path, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _err = _run(cwd, *args)
    return code, json.loads(out)


@pytest.fixture
def root(lproject: MistralTestServer) -> Path:
    return Path(os.environ["MISTRAL_NBENV_SETTINGS"]).parent


def test_status_json(root: Path) -> None:
    code, doc = _doc(root, "status", "--env", "staging", "--json")
    assert code == 0
    assert doc["schema"] == "mistral-nbenv/status/1"
    assert doc["active"] == "development"
    env = doc["environment"]
    assert env["environment"] == "staging"
    assert env["key_masked"] == "…" + KEYS["staging"][-4:]
    assert {"model", "server_url", "protected", "cache_enabled", "requests_per_minute"} <= set(env)
    settings = {row["key"]: row for row in doc["settings"]}
    assert settings["api_key"]["value"] == "…" + KEYS["staging"][-4:]
    assert settings["timeout"]["source"]


def test_the_model_sent_is_shown_with_its_reason(root: Path) -> None:
    """Development sends new_model (its packaged flag): status says which and why; staging
    sends model, with no reason to give."""
    code, doc = _doc(root, "status", "--env", "development", "--json")
    assert code == 0
    env = doc["environment"]
    assert env["model"] == "mistral-medium-latest"
    assert env["model_reason"] == (
        "new_model, because features.use_new_model is on: packaged defaults [development]"
    )
    code, doc = _doc(root, "status", "--env", "staging", "--json")
    assert (doc["environment"]["model"], doc["environment"]["model_reason"]) == (
        "mistral-small-latest",
        "",
    )
    code, text, _err = _run(root, "status", "--env", "development")
    assert code == 0
    assert (  # wrapped at 80 columns
        "model mistral-medium-latest (new_model, because features.use_new_model is on: "
        "packaged defaults [development])"
    ) in " ".join(text.split())
    code, text, _err = _run(root, "status", "--env", "staging")
    assert "model     mistral-small-latest" in [line.strip() for line in text.splitlines()]


def test_list_json(root: Path) -> None:
    code, doc = _doc(root, "list", "--json")
    assert code == 0
    assert doc["schema"] == "mistral-nbenv/list/1"
    names = [e["environment"] for e in doc["environments"]]
    assert names == ["development", "staging", "production", "qa"]
    assert [e["active"] for e in doc["environments"]] == [True, False, False, False]


def test_check_json_and_strict(root: Path) -> None:
    # the loopback project keeps literal keys in settings.toml: a warning, not an error
    code, doc = _doc(root, "check", "--all", "--json")
    assert code == 0
    assert doc["schema"] == "mistral-nbenv/check/1"
    assert doc["ok"] is True
    assert doc["strict"] is False
    assert doc["exit_code"] == 0
    assert {e["environment"] for e in doc["environments"]} == set(KEYS)
    warnings = [f for f in doc["findings"] if f["severity"] == "warning"]
    assert any("literal api_key" in f["message"] for f in warnings)
    code, doc = _doc(root, "check", "--all", "--json", "--strict")
    assert (code, doc["ok"], doc["exit_code"]) == (1, False, 1)
    code, out, _ = _run(root, "check", "--all", "--strict")
    assert code == 1
    assert "--strict: the warnings above fail the check." in out


def test_strict_passes_a_clean_project(tmp_path: Path) -> None:
    root = tmp_path / "clean"
    root.mkdir()
    (root / "settings.toml").write_text('[development]\nserver_url = "http://127.0.0.1:9"\n')
    secrets = root / ".secrets.toml"
    secrets.write_text(f'[development]\napi_key = "{KEYS["development"]}"\n')
    secrets.chmod(0o600)
    assert _run(root, "check", "--strict")[0] == 0
    secrets.chmod(0o644)  # readable by others: a warning, which --strict fails
    assert _run(root, "check")[0] == 0
    assert _run(root, "check", "--strict")[0] == 1
    (root / "settings.toml").write_text("[development]\ntimeot = 3\n")  # a typo
    secrets.chmod(0o600)
    code, doc = _doc(root, "check", "--strict", "--json")
    assert code == 1
    assert any("Did you mean `timeout`" in f["message"] for f in doc["findings"])


def test_cache_stats_json(root: Path) -> None:
    code, doc = _doc(root, "cache", "stats", "--env", "staging", "--json")
    assert code == 0
    assert doc["schema"] == "mistral-nbenv/cache-stats/1"
    assert doc["environment"] == "staging"
    assert isinstance(doc["entries"], int)


def test_a_configuration_error_is_exit_2_on_stderr(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    (root / "settings.toml").write_text("[development]\ntimeout = -1\n")
    code, out, err = _run(root, "status", "--json")
    assert code == 2
    assert out == ""
    assert "`timeout`" in err


@pytest.mark.parametrize("args", [("status", "--env", "stagging"), ("status", "stagging")])
def test_an_unknown_environment_prints_nothing_on_stdout(tmp_path: Path, args: tuple[str]) -> None:
    code, out, err = _run(tmp_path, *args)
    assert code == 2
    assert out == ""  # not the first lines of a status, then an error
    assert "Unknown environment 'stagging'" in err


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    import subprocess

    from tests._cli import SCRIPT

    assert SCRIPT is not None
    # `true` exits without reading, long before the CLI has started: every write hits a
    # closed pipe (what `status | head` does to the lines after the first)
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {SCRIPT} status | true"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr  # the CLI's own exit code (pipefail)
    assert "Traceback" not in done.stderr
    assert "BrokenPipeError" not in done.stderr
