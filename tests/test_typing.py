"""Typed namespaces: ``client.chat`` and the rest carry the SDK's own signatures and return
types (plus ``cache=`` and ``retry=``) for type checkers and editors.

The stub (``mistral_nbenv/client/sdk_types.pyi``) is generated from the installed SDK by
``tools/gen_sdk_types.py``; a test fails when it no longer matches. mypy then checks a small
user script and must see the SDK's response types, not ``Any``, and refuse a misspelt
keyword.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests._tools import load_tool

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
from mistralai.client.models import UserMessage

from mistral_nbenv import get_client

client = get_client()
reply = client.chat.complete(model="m", messages=[UserMessage(content="hi")], cache=True)
reveal_type(reply)
vectors = client.embeddings.create(model="mistral-embed", inputs=["a"], retry="unsent")
reveal_type(vectors)
reveal_type(client.beta.conversations)
client.chat.complete(model="m", messages=[UserMessage(content="hi")], modle="typo")
"""


def test_the_stub_matches_the_installed_sdk() -> None:
    import ast

    module = load_tool("gen_sdk_types")

    stub = (ROOT / "mistral_nbenv" / "client" / "sdk_types.pyi").read_text("utf-8")
    # the same tree (the text may differ by the Python that unparsed it)
    same = ast.dump(ast.parse(module.generate())) == ast.dump(ast.parse(stub))
    assert same, "run `python tools/gen_sdk_types.py` and commit the stub"


def test_mypy_sees_the_sdks_types_through_the_client(tmp_path: Path) -> None:
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT, "utf-8")
    done = subprocess.run(
        [
            sys.executable, "-m", "mypy", str(script),
            "--cache-dir", str(tmp_path / "cache"), "--no-error-summary", "--show-error-codes",
        ],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env={**os.environ, "MYPYPATH": str(ROOT)},
    )  # fmt: skip
    out = done.stdout
    assert 'Revealed type is "mistralai.client.models.' in out, out
    assert "ChatCompletionResponse" in out
    assert "EmbeddingResponse" in out
    assert "Conversations" in out
    assert "Any" not in "".join(line for line in out.splitlines() if "Revealed type" in line)
    assert 'Unexpected keyword argument "modle"' in out, out
    errors = [line for line in out.splitlines() if line.startswith("user_script.py:")]
    errors = [line for line in errors if " error: " in line]
    assert len(errors) == 1, out  # the typo, and nothing else in the user's script
