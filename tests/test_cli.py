"""The real ``mistral-nbenv`` console script, run in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests._cli import run_cli as run
from tests.conftest import ProjectFactory, fake_key

DEV, STG, PROD = fake_key("cli-dev"), fake_key("cli-staging"), fake_key("cli-prod")


def all_keys_project(project: ProjectFactory) -> Path:
    return project(
        "[qa]\nmodel = 'qa-model'\n",
        f"[development]\napi_key = '{DEV}'\n[staging]\napi_key = 'env:STAGING_KEY'\n",
        {
            ".env.local": f"STAGING_KEY={STG}\nMISTRAL_API_KEY_PROD={PROD}\nMISTRAL_API_KEY_QA="
            f"{fake_key('cli-qa')}\n"
        },
    )


def assert_no_full_key(text: str) -> None:
    for key in (DEV, STG, PROD, fake_key("cli-qa")):
        assert key not in text


def test_status_shows_masked_key_source_and_every_value_source(project: ProjectFactory) -> None:
    root = all_keys_project(project)
    done = run("status", cwd=root)
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())  # long values wrap at 80 columns
    assert "active environment: development" in out
    assert f"…{DEV[-4:]}" in out
    assert ".secrets.toml [development] (literal)" in out
    # one screen by default: what the project sets; every setting with --full
    assert len(done.stdout.splitlines()) <= 30
    assert all(len(line) <= 80 for line in done.stdout.splitlines()[:14])
    assert "status --full shows every one" in out
    assert "secrets.vault_url" not in out  # a packaged default, left to --full
    full = run("status", "--full", cwd=root)
    assert full.returncode == 0, full.stderr
    assert "cache.ttl_seconds" in full.stdout
    assert "secrets.vault_url" in full.stdout
    assert "packaged defaults [development]" in full.stdout
    assert_no_full_key(out + done.stderr + full.stdout)


def test_status_of_another_environment_via_python_m(project: ProjectFactory) -> None:
    root = all_keys_project(project)
    done = run("status", "--env", "prod", cwd=root, module=True)
    assert done.returncode == 0, done.stderr
    assert "[production 🔒]" in done.stdout
    assert f"MISTRAL_API_KEY_PROD from {root / '.env.local'}" in " ".join(done.stdout.split())
    assert_no_full_key(done.stdout)


def test_list_shows_every_environment(project: ProjectFactory) -> None:
    root = all_keys_project(project)
    done = run("list", cwd=root, env={"MISTRAL_ENV": "staging"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[1 if line.startswith("*") else 0] for line in lines] == [
        "[development]",
        "[staging]",
        "[production",
        "[qa]",
    ]
    assert lines[1].startswith("*")  # the active one is marked
    assert "qa-model" in lines[3]
    assert_no_full_key(done.stdout)


def test_check_all_passes_with_distinct_keys(project: ProjectFactory) -> None:
    root = all_keys_project(project)
    (root / ".secrets.toml").chmod(0o600)
    done = run("check", "--all", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok ") == 4
    assert_no_full_key(done.stdout)


def test_check_fails_on_a_shared_key_without_printing_it(project: ProjectFactory) -> None:
    root = all_keys_project(project)
    done = run(
        "check", "--all", cwd=root, env={"MISTRAL_API_KEY_STAGING": PROD, "STAGING_KEY": PROD}
    )
    assert done.returncode == 1
    assert "is the same as the key for" in done.stdout
    assert_no_full_key(done.stdout + done.stderr)


def test_check_env_as_a_ci_deploy_gate(project: ProjectFactory) -> None:
    root = project("")
    missing = run("check", "--env", "production", cwd=root)
    assert missing.returncode == 1
    assert "MISTRAL_API_KEY_PROD" in missing.stdout
    ok = run("check", "--env", "production", cwd=root, env={"MISTRAL_API_KEY_PROD": PROD})
    assert ok.returncode == 0, ok.stdout
    assert "ok    production" in ok.stdout


def test_check_reports_invalid_settings_with_key_and_source(project: ProjectFactory) -> None:
    root = project("[staging]\ntimeout = -2\n")
    done = run("check", "--env", "staging", cwd=root, env={"MISTRAL_API_KEY_STAGING": STG})
    assert done.returncode == 1
    assert "`timeout`" in done.stdout
    assert "settings.toml [staging]" in done.stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_check_fails_when_secrets_file_is_tracked_by_git(project: ProjectFactory) -> None:
    root = all_keys_project(project)
    (root / ".secrets.toml").chmod(0o644)
    git = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(
        ["git", "add", "-f", ".secrets.toml"], cwd=root, check=True, env={**os.environ, **git}
    )
    done = run("check", cwd=root)
    assert done.returncode == 1
    assert "tracked by git" in done.stdout
    assert "readable by other users" in done.stdout


def test_check_warns_about_typos_and_ignored_variables(project: ProjectFactory) -> None:
    root = project("[development]\ntimout = 5\n")
    done = run(
        "check",
        cwd=root,
        env={"MISTRAL_API_KEY_DEV": DEV, "MISTRAL_NBENV_API_KEY": fake_key("ignored")},
    )
    assert done.returncode == 0, done.stdout
    assert "Did you mean `timeout`?" in done.stdout
    assert "MISTRAL_NBENV_API_KEY is ignored" in done.stdout
    assert fake_key("ignored") not in done.stdout


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (("status",), {"MISTRAL_ENV": "prodd"}, "MISTRAL_ENV='prodd' is not an environment"),
        (("check", "--env", "nope"), {}, "Unknown environment 'nope'"),
        (
            ("list",),
            {"MISTRAL_NBENV_SETTINGS": "/nonexistent/settings.toml"},
            "MISTRAL_NBENV_SETTINGS",
        ),
    ],
)
def test_errors_are_one_clear_line_with_exit_2(
    args: tuple[str, ...], env: dict[str, str], fragment: str
) -> None:
    done = run(*args, env=env)
    assert done.returncode == 2
    assert fragment in done.stderr
    assert "Traceback" not in done.stderr


def test_usage_and_version() -> None:
    assert run().returncode == 2
    version = run("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("mistral-nbenv ")
    assert run("check", "--env", "dev", "--all").returncode == 2  # mutually exclusive


def _notebook_with_output(text: str) -> str:
    import json

    cell = {
        "cell_type": "code",
        "execution_count": 1,
        "metadata": {},
        "source": ["import os\n", "print(os.environ['SOME_VAR'])\n"],
        "outputs": [{"output_type": "stream", "name": "stdout", "text": [text + "\n"]}],
    }
    return json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def test_scan_finds_a_configured_key_in_a_notebook_output(project: ProjectFactory) -> None:
    root = all_keys_project(project)
    (root / "analysis.ipynb").write_text(_notebook_with_output(f"token is {PROD}"))
    done = run("scan", str(root / "analysis.ipynb"), cwd=root)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"analysis.ipynb:1:1: …{PROD[-4:]}" in done.stdout
    assert "production" in done.stdout
    assert_no_full_key(done.stdout + done.stderr)


def test_scan_of_a_clean_tree_exits_0(project: ProjectFactory) -> None:
    root = all_keys_project(project)
    clean = root / "src"
    clean.mkdir()
    (clean / "app.py").write_text("from mistral_nbenv import get_client\nclient = get_client()\n")
    (clean / "run.ipynb").write_text(_notebook_with_output("Echo: hello"))
    done = run("scan", str(clean), cwd=root)
    assert done.returncode == 0, done.stdout
    assert "No Mistral API keys found" in done.stdout


def test_the_magics_positional_environment_works_on_the_cli_too(project: ProjectFactory) -> None:
    root = all_keys_project(project)
    positional = run("check", "staging", cwd=root)
    option = run("check", "--env", "staging", cwd=root)
    assert positional.returncode == option.returncode == 0, positional.stderr
    assert positional.stdout == option.stdout
    assert "staging" in positional.stdout
    refused = run("check", "--al", cwd=root)
    assert refused.returncode == 2
    assert "unrecognized arguments: --al" in refused.stderr
