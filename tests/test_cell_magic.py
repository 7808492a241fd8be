"""``%%mistral``, second edition (issue 38): streamed, ``{{name}}``, chats across cells, and
provenance in the notebook file. A real kernel (nbclient) against the loopback server."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from mistral_nbenv.secrets.scan import run_scan
from mistral_nbenv.testing import MistralTestServer
from tests._browser_project import KEYS, write_project

pytestmark = pytest.mark.slow


def _run(cells: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> Any:
    settings = write_project(tmp_path, url)
    monkeypatch.setenv("MISTRAL_NBENV_SETTINGS", str(settings))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    NotebookClient(
        nb,
        timeout=60,
        kernel_name="python3",
        allow_errors=True,  # the last cell's UsageError is part of the test
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    path = tmp_path / "saved.ipynb"
    nbformat.write(nb, path)
    return nbformat.read(path, as_version=4), path


def _provenance(cell: Any) -> list[dict[str, Any]]:
    return [
        o.metadata["mistral_nbenv"]
        for o in cell.outputs
        if o.output_type == "display_data" and "mistral_nbenv" in o.get("metadata", {})
    ]


def _markdown(cell: Any) -> list[str]:
    return [
        o.data["text/markdown"]
        for o in cell.outputs
        if o.output_type in ("display_data", "execute_result") and "text/markdown" in o.data
    ]


def test_streamed_interpolated_chatted_and_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with MistralTestServer(chunk_delay=0.01) as server:
        nb, path = _run(
            [
                "%load_ext mistral_nbenv",
                "city = 'Paris'\ncode = 'def f(): return {1: 2}'",
                "%%mistral\nTell me about {{city}}.",
                "%%mistral -s 'Answer about {{city}}.'\nExplain {code} and {{code}}",
                "%%mistral --chat trip\nPlan a day in {{city}}.",
                "%%mistral --chat trip\nAnd the evening?",
                "import json\nprint(json.dumps(mistral_chat('trip')))",
                "%%mistral --chat trip --reset\nStart again.",
                "print(len(mistral_chat('trip')))",
                "%%mistral\n{{nowhere}}",
            ],
            tmp_path,
            monkeypatch,
            server.url,
        )
    cells = [c for c in nb.cells if c.cell_type == "code"]
    # the prompt the API received is the interpolated text; single braces stay
    bodies = [r.body for r in server.requests if r.path == "/v1/chat/completions"]
    assert all(body["stream"] is True for body in bodies)  # streamed by default
    assert bodies[0]["messages"] == [{"role": "user", "content": "Tell me about Paris."}]
    assert bodies[1]["messages"] == [
        {"role": "system", "content": "Answer about Paris."},
        {"role": "user", "content": "Explain {code} and def f(): return {1: 2}"},
    ]
    # the answer shows as Markdown, with its provenance in the saved notebook
    assert _markdown(cells[2]) == ["Echo: Tell me about Paris."]
    recorded = _provenance(cells[2])  # on the badge and on the answer, the same
    assert len(recorded) == 2
    assert recorded[0] == recorded[1]
    first = recorded[0]
    assert first["environment"] == "development"
    assert first["model_sent"] == "mistral-medium-latest"
    assert first["model_answered"] == "mistral-medium-2508"  # the ID the alias stands for
    assert first["source"] == "api"
    assert first["cache_on"] is False
    assert first["streamed"] is True
    assert first["tokens"]["total"] > 0
    assert len(first["request_digest"]) == 16
    assert first["elapsed_ms"] > 0
    assert not [o for o in cells[2].outputs if o.output_type == "execute_result"]  # shown once
    badge = next(o.data["text/plain"] for o in cells[2].outputs if "text/plain" in o.data)
    assert "not cached: the cache is off in development" in badge
    # a chat continues across cells, and mistral_chat shows it
    chat = [b for b in bodies if any("day in Paris" in m["content"] for m in b["messages"])]
    assert [m["role"] for m in chat[-1]["messages"]] == ["user", "assistant", "user"]
    history = json.loads(cells[6].outputs[0]["text"])
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[2]["content"] == "And the evening?"
    assert cells[8].outputs[0]["text"].strip() == "2"  # --reset started over
    # an unknown name is one line naming it
    (error,) = [o.text for o in cells[9].outputs if o.get("name") == "stderr"]
    assert error.startswith("UsageError: %%mistral: {{nowhere}} names 'nowhere', which is not")
    assert "Traceback" not in error
    # the saved notebook holds no key
    text = path.read_text()
    assert all(key[:-4] not in text for key in KEYS.values())
    out = io.StringIO()
    assert run_scan([path], list(KEYS.values()), out) == 0, out.getvalue()


def test_logs_stay_out_of_cells_and_a_wait_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Development has debug on: its log records go to the kernel's own stderr, not into the
    cells; a rate-limit wait shows as one grey line in the cell that waited."""
    with MistralTestServer() as server:
        settings = write_project(tmp_path, server.url)
        text = settings.read_text().replace(
            "[development.rate_limits]\nrequests_per_minute = 100000",
            "[development.rate_limits]\nrequests_per_minute = 30",
        )
        settings.write_text(text)
        monkeypatch.setenv("MISTRAL_NBENV_SETTINGS", str(settings))
        monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
        nb = nbformat.v4.new_notebook()
        nb.cells = [
            nbformat.v4.new_code_cell(source)
            for source in (
                "%load_ext mistral_nbenv",
                "%mistral_env staging",
                "%mistral_env development",
                "%%mistral\nfirst",
                # as a 429's Retry-After does: the next call waits for the whole budget
                "from mistral_nbenv import get_client\nget_client()._limiter.pause(1.5)",
                "%%mistral\nsecond",
            )
        ]
        NotebookClient(
            nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    stderr = [o.text for c in nb.cells for o in c.outputs if o.get("name") == "stderr"]
    assert stderr == []  # no "INFO switched environment", no pink log lines
    waited = [
        o.data["text/plain"]
        for o in nb.cells[5].outputs
        if o.output_type == "display_data" and "waiting" in o.data.get("text/plain", "")
    ]
    assert len(waited) == 1
    assert "for development's 30 requests/min, 100,000,000 tokens/min" in waited[0]
