"""The key scanner behind ``mistral-nbenv scan`` and the pre-commit hook."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import string
import subprocess
import uuid
from pathlib import Path

import pytest

from mistral_nbenv.secrets import scan as scan_module
from mistral_nbenv.secrets.scan import Finding, is_scanned_name, mask, run_scan, scan, scan_paths

FIXTURES = Path(__file__).parent / "fixtures" / "scan"
REPO = Path(__file__).resolve().parent.parent
PLACEHOLDER = "@@KEY@@"


def make_key(seed: int) -> str:
    """A Mistral-shaped fake key (32 mixed-case letters and digits), made at run time."""
    rng = random.Random(seed)
    while True:
        key = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(32))
        kinds = (str.isupper, str.islower, str.isdigit)
        if all(any(kind(c) for c in key) for kind in kinds):
            return key


KEY = make_key(1)
OTHER = make_key(2)


def place(template: str, target: Path, key: str = KEY) -> Path:
    """Copy a fixture to ``target`` with the placeholder replaced by ``key``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text((FIXTURES / template).read_text().replace(PLACEHOLDER, key))
    return target


def locations(findings: list[Finding]) -> list[tuple[str, int | None, int, int | None]]:
    return [(f.path.name, f.cell, f.line, f.output) for f in findings]


@pytest.mark.parametrize(
    ("template", "target", "line"),
    [
        ("client.py.tmpl", "client.py", 4),
        ("settings.toml.tmpl", "settings.toml", 3),
        ("secrets.toml.tmpl", ".secrets.toml", 3),
        ("dotenv.tmpl", ".env", 2),
        ("dotenv.tmpl", ".env.local", 2),
        ("dotenv.tmpl", "prod.env", 2),
        ("config.json.tmpl", "config.json", 4),
        ("config.yaml.tmpl", "config.yaml", 4),
        ("config.yaml.tmpl", "config.yml", 4),
    ],
)
def test_finds_pattern_in_each_file_type(
    tmp_path: Path, template: str, target: str, line: int
) -> None:
    place(template, tmp_path / "project" / target)
    findings = scan_paths([tmp_path])
    assert locations(findings) == [(target, None, line, None)]
    finding = findings[0]
    assert finding.masked == "…" + KEY[-4:]
    assert finding.reason.startswith("looks like a Mistral key")
    assert finding.location == f"{tmp_path / 'project' / target}:{line}"
    assert KEY not in str(finding)
    assert KEY not in repr(finding)


def test_placeholder_is_reported_only_when_configured(tmp_path: Path) -> None:
    fake = "FakeProd" + KEY[8:]
    (tmp_path / "a.py").write_text(f'MISTRAL_API_KEY = "{fake}"\n')
    assert scan_paths([tmp_path]) == []
    assert len(scan_paths([tmp_path], [fake])) == 1


@pytest.mark.parametrize(
    "known",
    [[KEY], {"production": KEY}, [type("S", (), {"get_secret_value": lambda self: KEY})()]],
    ids=["list", "labelled", "secret-object"],
)
def test_configured_key_is_found_anywhere(tmp_path: Path, known: object) -> None:
    place("far_from_mistral.py.tmpl", tmp_path / "far.py")
    assert scan_paths([tmp_path]) == []  # too far from "mistral" for the pattern
    findings = scan_paths([tmp_path], known)  # type: ignore[arg-type]
    assert locations(findings) == [("far.py", None, 10, None)]
    expected = "configured key for production" if isinstance(known, dict) else "configured key"
    assert findings[0].reason == expected


def test_notebook_with_key_only_in_an_output(tmp_path: Path) -> None:
    notebook = place("output_only.ipynb", tmp_path / "demo.ipynb")
    findings = scan_paths([notebook])
    assert locations(findings) == [("demo.ipynb", 2, 1, 1)]
    assert findings[0].location == f"{notebook}:2:1"
    assert "output 1" in str(findings[0])
    labelled = scan_paths([notebook], {"production": KEY})
    assert [f.reason for f in labelled] == ["configured key for production"]


def test_notebook_output_kinds(tmp_path: Path) -> None:
    notebook = place("outputs.ipynb", tmp_path / "outputs.ipynb")
    # execute_result text/plain, display_data text/html, error traceback (ANSI colours)
    assert locations(scan_paths([notebook])) == [
        ("outputs.ipynb", 1, 2, 1),
        ("outputs.ipynb", 2, 2, 1),
        ("outputs.ipynb", 3, 2, 1),
    ]


@pytest.mark.parametrize("in_traceback", [True, False])
def test_error_output_reported_once(tmp_path: Path, in_traceback: bool) -> None:
    evalue = f"'mistral key {KEY}'"
    traceback = ["\x1b[0;31mKeyError\x1b[0m" + (f": {evalue}" if in_traceback else "")]
    output = {"output_type": "error", "ename": "KeyError", "evalue": evalue, "traceback": traceback}
    cell = {"cell_type": "code", "source": "", "outputs": [output], "metadata": {}}
    path = tmp_path / "e.ipynb"
    path.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4}))
    assert len(scan_paths([path])) == 1


def test_notebook_source_and_metadata(tmp_path: Path) -> None:
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "source": ["x = 1\n", f'MISTRAL_API_KEY = "{KEY}"\n'],
                "outputs": [],
                "metadata": {},
            }
        ],
        "metadata": {"widgets": {"state": {"value": OTHER}}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(notebook, indent=1))
    findings = scan_paths([path], [OTHER])
    assert (findings[0].cell, findings[0].line, findings[0].output) == (1, 2, None)
    assert findings[1].cell is None
    assert findings[1].reason == "configured key in notebook metadata"
    assert findings[1].masked == mask(OTHER)


def test_broken_notebook_is_scanned_as_text(tmp_path: Path) -> None:
    path = tmp_path / "broken.ipynb"
    path.write_text('{"cells": [ {"source": "mistral key ' + KEY + '" \n')
    assert locations(scan_paths([path])) == [("broken.ipynb", None, 1, None)]


def test_clean_fixture_tree(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "clean", tmp_path / "clean")
    out = io.StringIO()
    assert run_scan([tmp_path / "clean"], [OTHER], out) == 0
    assert out.getvalue().startswith("No Mistral API keys found (scanned 4 files")


def _not_keys() -> list[str]:
    text = b"mistral prompt"
    return [
        hashlib.md5(text).hexdigest(),
        hashlib.md5(text).hexdigest().upper(),
        hashlib.sha1(text).hexdigest(),
        hashlib.sha256(text).hexdigest(),
        uuid.uuid5(uuid.NAMESPACE_DNS, "mistral.ai").hex,
        str(uuid.uuid5(uuid.NAMESPACE_DNS, "mistral.ai")),
        "MistralClientFactoryForNotebooks",  # example identifier, not a key
        "mistralClientFactoryForNotebooks",  # example identifier, not a key
        KEY[:31],
        KEY + "Z",
        "x_" + KEY,
        "BenchDevFakeKey0000000000000dev1",  # fake placeholder
        "Example" + KEY[7:],
    ]


@pytest.mark.parametrize("value", _not_keys())
def test_digests_uuids_and_identifiers_are_not_keys(tmp_path: Path, value: str) -> None:
    (tmp_path / "a.py").write_text(f'# mistral\nMISTRAL_API_KEY = "{value}"\n')
    assert scan_paths([tmp_path]) == []


@pytest.mark.parametrize(("distance", "found"), [(1, True), (2, True), (3, False), (10, False)])
def test_context_window(tmp_path: Path, distance: int, found: bool) -> None:
    filler = "x = 1\n" * (distance - 1)
    mention, line = "# talks to Mistral\n", f'session = "{KEY}"\n'
    for body in (mention + filler + line, line + filler + mention):
        (tmp_path / "a.py").write_text(body)
        assert bool(scan_paths([tmp_path])) is found


@pytest.mark.parametrize(
    ("line", "found"),
    [
        (f'API_KEY = "{KEY}"', True),
        (f'"apiKey": "{KEY}"', True),
        (f"llm_api_key: {KEY}", True),
        (f'session_id = "{KEY}"', False),
        (f"# {KEY}", False),
    ],
)
def test_variable_name_context(tmp_path: Path, line: str, found: bool) -> None:
    (tmp_path / "a.py").write_text(line + "\n")
    assert bool(scan_paths([tmp_path])) is found


def test_run_scan_reports_masked_and_exits_1(tmp_path: Path) -> None:
    place("client.py.tmpl", tmp_path / "client.py")
    place("output_only.ipynb", tmp_path / "nb" / "demo.ipynb", OTHER)
    out = io.StringIO()
    assert run_scan([tmp_path], {"production": OTHER}, out) == 1
    text = out.getvalue()
    assert KEY not in text
    assert OTHER not in text
    assert f"{tmp_path / 'client.py'}:4: …{KEY[-4:]} (looks like a Mistral key" in text
    assert (
        f"{tmp_path / 'nb' / 'demo.ipynb'}:2:1: …{OTHER[-4:]} (configured key for production"
        in (text)
    )
    assert "2 possible Mistral API keys in 2 files (scanned 2 files)" in text


def test_run_scan_missing_path(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_scan([tmp_path / "nope"], [], out) == 2
    assert "no such file or directory" in out.getvalue()


@pytest.mark.parametrize(
    "skipped",
    [
        ".git/config.py",
        ".venv/lib/site.py",
        "venv/lib/site.py",
        "myenv/lib/site.py",  # has pyvenv.cfg
        "node_modules/pkg/index.json",
        "__pycache__/x.py",
        ".ipynb_checkpoints/demo-checkpoint.ipynb",
        ".tox/py311/x.py",
    ],
)
def test_skipped_directories(tmp_path: Path, skipped: str) -> None:
    (tmp_path / "myenv").mkdir()
    (tmp_path / "myenv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    target = tmp_path / skipped
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".ipynb":
        place("output_only.ipynb", target)
    else:
        target.write_text(f'MISTRAL_API_KEY = "{KEY}"\n')
    assert scan_paths([tmp_path]) == []
    (tmp_path / "visible.py").write_text(f'MISTRAL_API_KEY = "{KEY}"\n')
    assert locations(scan_paths([tmp_path])) == [("visible.py", None, 1, None)]


def test_unsupported_files_only_when_named(tmp_path: Path) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text(f"mistral key {KEY}\n")
    assert scan_paths([tmp_path]) == []
    assert len(scan_paths([notes])) == 1


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.ipynb", True),
        ("a.py", True),
        ("a.toml", True),
        (".secrets.toml", True),
        (".env", True),
        (".env.production", True),
        ("prod.env", True),
        ("a.json", True),
        ("a.yaml", True),
        ("a.yml", True),
        ("README.md", False),
        ("environment.txt", False),
    ],
)
def test_is_scanned_name(name: str, expected: bool) -> None:
    assert is_scanned_name(name) is expected


def test_binary_huge_and_undecodable_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "blob.py").write_bytes(b"\0\1mistral " + KEY.encode())
    (tmp_path / "latin.py").write_bytes(b"# caf\xe9 mistral\nk = '" + KEY.encode() + b"'\n")
    (tmp_path / "big.json").write_text('{"mistral": "' + OTHER + '"}' + " " * 5000)
    monkeypatch.setattr(scan_module, "MAX_FILE_BYTES", 4096)
    result = scan([tmp_path])
    assert locations(result.findings) == [("latin.py", None, 2, None)]
    assert result.skipped == {"binary": 1, "too large": 1}
    assert result.files_scanned == 1


def _git(cwd: Path, *args: str) -> None:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd)}
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(name, None)
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_ignored_files_are_skipped(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / ".gitignore").write_text(".env\n.env.*\nprivate/\n*.local.py\n")
    place("dotenv.tmpl", repo / ".env")
    place("dotenv.tmpl", repo / ".env.local")
    place("client.py.tmpl", repo / "private" / "client.py")
    place("client.py.tmpl", repo / "settings.local.py")
    place("client.py.tmpl", repo / "src" / "client.py")
    place("dotenv.tmpl", repo / "forced" / ".env.production")
    _git(repo, "add", "-f", "forced/.env.production")  # tracked despite .gitignore: scanned

    result = scan([repo])
    assert sorted(str(f.path.relative_to(repo)) for f in result.findings) == [
        "forced/.env.production",
        "src/client.py",
    ]
    assert result.skipped == {"git-ignored": 4}
    # A file named explicitly is skipped too when git ignores it.
    assert scan_paths([repo / ".env"]) == []
    # Relative paths from inside the repository work the same.
    cwd = Path.cwd()
    os.chdir(repo)
    try:
        found = scan_paths(["."])
    finally:
        os.chdir(cwd)
    assert sorted(str(f.path) for f in found) == ["forced/.env.production", "src/client.py"]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_nested_repository_uses_its_own_ignore_rules(tmp_path: Path) -> None:
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "vendor" / "inner"
    inner.mkdir(parents=True)
    _git(outer, "init", "-q")
    _git(inner, "init", "-q")
    (outer / ".gitignore").write_text("*.toml\n")
    (inner / ".gitignore").write_text("*.py\n")
    place("settings.toml.tmpl", outer / "settings.toml")
    place("settings.toml.tmpl", inner / "settings.toml")
    place("client.py.tmpl", outer / "client.py")
    place("client.py.tmpl", inner / "client.py")
    found = sorted(str(f.path.relative_to(outer)) for f in scan_paths([outer]))
    assert found == ["client.py", "vendor/inner/settings.toml"]


def test_outside_git_everything_is_scanned(tmp_path: Path) -> None:
    place("dotenv.tmpl", tmp_path / ".env")
    (tmp_path / ".gitignore").write_text(".env\n")  # no repository: not consulted
    assert len(scan_paths([tmp_path])) == 1


@pytest.mark.parametrize(("value", "masked"), [(KEY, "…" + KEY[-4:]), ("short", "…")])
def test_mask(value: str, masked: str) -> None:
    assert mask(value) == masked


def test_pre_commit_hook_definition() -> None:
    import yaml

    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    (hook,) = [h for h in hooks if h["id"] == "mistral-nbenv-scan"]
    assert hook["entry"] == "mistral-nbenv scan"
    assert hook["language"] == "python"
    assert {"jupyter", "python", "toml", "json", "yaml"} <= set(hook["types_or"])
    files = re.compile(hook["files"])
    for name in ["a.ipynb", "src/a.py", "pyproject.toml", ".secrets.toml", "x/.env"]:
        assert files.search(name), name
    for name in [".env.local", "deploy/prod.env", "a.json", "a.yaml", "a.yml"]:
        assert files.search(name), name
    for name in ["README.md", "notes.txt", "environment.cfg", "a.envy"]:
        assert not files.search(name), name
    (gate,) = [h for h in hooks if h["id"] == "mistral-nbenv-check"]
    assert gate["entry"] == "mistral-nbenv check --all --strict"
    assert gate["pass_filenames"] is False
    assert re.search(gate["files"], "config/settings.toml")


# ------------------------------------------------------------------ Bearer, names, print()


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("h.json", f'{{"headers": {{"Authorization": "Bearer {KEY}"}}}}\n', "after 'Bearer'"),
        ("c.py", f'headers = {{"Authorization": f"Bearer {KEY}"}}\n', "after 'Bearer'"),
        ("curl.yaml", f"run: curl -H 'Authorization: Bearer {KEY}' $URL\n", "after 'Bearer'"),
        ("a.py", f'token = "{KEY}"\n', "credential-like name"),
        ("a.py", f'connect(client_secret="{KEY}")\n', "credential-like name"),
        ("a.yaml", f"password: {KEY}\n", "credential-like name"),
        ("a.py", f'print("{KEY}")\n', "print()"),
        ("a.py", f'print("auth", "{KEY}")\n', "print()"),
        ("a.py", f'print(f"token={KEY}")\n', "credential-like name"),
    ],
)
def test_credential_shapes_without_mistral_nearby(
    tmp_path: Path, name: str, text: str, reason: str
) -> None:
    (tmp_path / name).write_text("import os\n\n\n" + text)
    findings = scan_paths([tmp_path])
    assert [f.line for f in findings] == [4]
    assert reason in findings[0].reason
    assert KEY not in str(findings[0])


@pytest.mark.parametrize(
    "text",
    [
        f'session_id = "{KEY}"\n',
        f"# {KEY}\n",
        f'print("done", n)  # {KEY}\n',
        f"value = compute({KEY!r})\n",
    ],
)
def test_key_shapes_without_a_credential_context_are_not_reported(
    tmp_path: Path, text: str
) -> None:
    (tmp_path / "a.py").write_text(text)
    assert scan_paths([tmp_path]) == []


def test_base64_and_identifiers_near_mistral_are_not_keys(tmp_path: Path) -> None:
    rng = random.Random(7)
    blob = "".join(rng.choice(string.ascii_letters + string.digits + "+/") for _ in range(6000))
    cell = {
        "cell_type": "code",
        "source": (
            "from mistralai import Mistral\n"
            "from transformers import " + "Mistral3For" + "ConditionalGeneration\n"
        ),
        "outputs": [
            {
                "output_type": "display_data",
                "data": {"text/markdown": f"![x](data:image/png;base64,{blob})"},
            },
            {"output_type": "stream", "text": "EvaluationRunV2" + "ResponseTypedDict\n"},
        ],
    }
    (tmp_path / "n.ipynb").write_text(json.dumps({"cells": [cell], "metadata": {}}))
    assert scan_paths([tmp_path]) == []
    cell["outputs"].append({"output_type": "stream", "text": f"key: {KEY}\n"})
    (tmp_path / "n.ipynb").write_text(json.dumps({"cells": [cell], "metadata": {}}))
    assert [f.output for f in scan_paths([tmp_path])] == [3]  # a real key-shaped one still is


def test_a_key_in_cell_metadata_or_an_attachment_is_found(tmp_path: Path) -> None:
    import base64

    note = base64.b64encode(f"mistral api key: {OTHER}\n".encode()).decode()
    notebook = {
        "cells": [
            {
                "cell_type": "markdown",
                "source": "See the attachment.",
                "metadata": {"tags": ["mistral"], "mistral_api_key": KEY},
                "attachments": {"key.txt": {"text/plain": note}},
            }
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(notebook, indent=1))
    found = {(f.cell, f.masked) for f in scan_paths([path])}
    assert found == {(1, mask(KEY)), (1, mask(OTHER))}


@pytest.mark.parametrize(
    "broken",
    [
        {"cells": [{"cell_type": "code", "source": "x", "outputs": 5}]},
        {"cells": [{"source": "x", "outputs": [{"output_type": "display_data", "data": 5}]}]},
        "[" * 100_000,  # nesting no JSON reader takes
    ],
)
def test_a_malformed_notebook_is_said_and_every_other_file_still_scanned(
    tmp_path: Path, broken: object
) -> None:
    bad = tmp_path / "a-broken.ipynb"
    bad.write_text(broken if isinstance(broken, str) else json.dumps(broken))
    (tmp_path / "b.py").write_text(f'MISTRAL_API_KEY = "{KEY}"\n')
    out = io.StringIO()
    assert run_scan([tmp_path], [], out) == 1  # the key in b.py is still found
    text = out.getvalue()
    assert f"{bad}: could not read (not a notebook:" in text
    assert "b.py" in text
    (tmp_path / "b.py").unlink()
    out = io.StringIO()
    assert run_scan([tmp_path], [], out) == 2  # nothing found, but a file was not read whole
