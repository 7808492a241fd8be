"""Running the real console script in a subprocess, the one way every CLI test does it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = shutil.which("mistral-nbenv")


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, module: bool = False
) -> subprocess.CompletedProcess[str]:
    """``mistral-nbenv ARGS`` (or ``python -m mistral_nbenv`` with ``module``), the test's
    environment plus ``env``, Python warnings off (they are not the CLI's output)."""
    if module:
        command = [sys.executable, "-m", "mistral_nbenv"]
    else:
        assert SCRIPT is not None, "the package must be installed (pip install -e .)"
        command = [SCRIPT]
    environ = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [*command, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=120
    )
