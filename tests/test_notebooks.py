"""Both example notebooks, executed end to end by a real kernel against the loopback server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from mistral_nbenv.testing import MistralTestServer
from tests._browser_project import KEYS, assert_no_key, write_project

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

pytestmark = pytest.mark.slow


def _run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_url: str) -> Any:
    settings = write_project(tmp_path, server_url)
    monkeypatch.setenv("MISTRAL_NBENV_SETTINGS", str(settings))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    return nb


def _code_cells(nb: Any) -> dict[str, Any]:
    """Code cells by their source (the notebooks' sources are unique enough to look up)."""
    return {cell.source: cell for cell in nb.cells if cell.cell_type == "code"}


def _no_stderr(nb: Any) -> None:
    """No cell wrote to stderr: a warning or a background thread's log would show there to
    the user, and would land in the middle of whatever cell was running."""
    stray = [
        (cell.source.splitlines()[0], output.text)
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream" and output.name == "stderr"
    ]
    assert not stray, stray


def _text(cell: Any) -> str:
    """Every output of a cell as text: streams, and every mime type of rich outputs.

    The kernel sends a long print in several stream messages when it flushes in between (a
    loaded machine): consecutive pieces of one stream are joined as they were written.
    """
    parts: list[str] = []
    previous = None
    for output in cell.outputs:
        if output.output_type == "stream":
            same = previous is not None and previous.output_type == "stream"
            if same and previous.name == output.name:
                parts[-1] += output.text
            else:
                parts.append(output.text)
        elif output.output_type in ("display_data", "execute_result"):
            parts.extend(
                json.dumps(v) if not isinstance(v, str) else v for v in output.data.values()
            )
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}")
        previous = output
    return "\n".join(parts)


def _find(nb: Any, startswith: str) -> Any:
    matches = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(startswith)]
    assert matches, startswith
    return matches


def test_notebooks_are_committed_without_outputs() -> None:
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{path.name} has outputs"
                assert cell.execution_count is None, f"{path.name} has execution counts"


def test_quickstart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mistral_server: MistralTestServer
) -> None:
    nb = _run("quickstart.ipynb", tmp_path, monkeypatch, mistral_server.url)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not [o for o in cell.outputs if o.output_type == "error"], cell.source
    assert_no_key(nbformat.writes(nb))
    _no_stderr(nb)

    [switcher] = [c for c in _find(nb, "%mistral_env") if c.source == "%mistral_env"]
    assert any(WIDGET_MIME in o.get("data", {}) for o in switcher.outputs)

    [listing] = _find(nb, "%mistral_env list")
    assert "* [development]" in _text(listing)
    [use] = _find(nb, "%mistral_env use staging")
    assert "[staging] active" in _text(use)
    assert "…0002" in _text(use)

    first, second = _find(nb, "%%mistral")
    assert "[staging]" in _text(first)
    assert "from API" in _text(first)
    assert "Echo: What is a feature flag?" in first.outputs[-1].data["text/markdown"]
    assert "from cache" in _text(second)
    assert "Echo: What is a feature flag?" in second.outputs[-1].data["text/markdown"]

    [answer] = _find(nb, "answer = _")
    assert "environment=staging cached=True" in _text(answer)
    assert "ChatCompletionResponse" in _text(answer)
    [from_python] = _find(nb, "response = client.chat.complete(")
    assert "Echo: What is a feature flag?" in _text(from_python)
    assert "hits=2 misses=1" in _text(from_python)  # the magic and the client share the cache

    [guard] = _find(nb, "from mistral_nbenv import EnvironmentGuardError")
    assert "Guard:" in _text(guard)
    assert "production" in _text(guard)
    [refusal] = _find(nb, "from mistral_nbenv import ProductionConfirmationRequired")
    assert "Refused:" in _text(refusal)
    assert "still in staging" in _text(refusal)
    [last] = _find(nb, 'print("active environment:"')
    assert "active environment: staging" in _text(last)

    assert mistral_server.count("/v1/chat/completions") == 1  # the rest came from the cache
    assert mistral_server.last_request is not None
    assert mistral_server.last_request.api_key == KEYS["staging"]


def test_environments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mistral_server: MistralTestServer
) -> None:
    nb = _run("environments.ipynb", tmp_path, monkeypatch, mistral_server.url)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not [o for o in cell.outputs if o.output_type == "error"], cell.source
    assert_no_key(nbformat.writes(nb))
    _no_stderr(nb)
    texts = [_text(c) for c in nb.cells if c.cell_type == "code"]

    intro, table, sources, listing, check, flags, guards, protected, status = texts
    assert "detected: development" in intro
    assert "['development', 'staging', 'production', 'qa']" in intro
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert rows["production"][1:] == [
        "mistral-small-latest",
        "60",
        "5",
        "on",
        "600",
        "100000",
        "yes",
    ]
    assert rows["development"][4] == "off"
    assert "from packaged defaults [production]" in sources.splitlines()[0]  # timeout
    assert "from settings.toml [default]" in sources  # server_url
    api_key_line = sources.splitlines()[-1]
    assert "…0003" in api_key_line
    assert "from settings.toml [production]" in api_key_line
    assert "* [development]" in listing
    assert check.count("ok    ") == 4
    assert "staging      new model: False" in flags  # staging mirrors production
    assert "Guard:" in guards
    assert "report published in staging" in guards
    assert "back in development" in guards
    assert "Refused:" in protected
    assert "inside the block: production" in protected
    assert "back in development" in protected
    assert "[production 🔒]" in status
    assert mistral_server.count() == 0  # this notebook makes no API calls
