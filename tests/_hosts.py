"""Processes that play other hosts (or other kernels) in the multi-process tests.

Each gets its own HOME (and so its own user cache directory), the project's settings through
``MISTRAL_NBENV_SETTINGS`` and this checkout on ``PYTHONPATH``; a worker module prints one
JSON line last, which :func:`result` reads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests._browser_project import scrubbed_environ

ROOT = Path(__file__).resolve().parent.parent


def host_environ(tmp_path: Path, name: str, settings: Path, **more: str) -> dict[str, str]:
    """A clean environment for host ``name``: its own HOME, the project's settings."""
    home = tmp_path / name / "home"
    home.mkdir(parents=True, exist_ok=True)
    return dict(
        scrubbed_environ(),
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        MISTRAL_NBENV_SETTINGS=str(settings),
        PYTHONPATH=str(ROOT),
        **more,
    )


def start(module: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """``python -m module args`` in this checkout, with ``env``."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def result(worker: subprocess.Popen[str], timeout: float = 180) -> dict[str, Any]:
    """The JSON line a worker printed last (its stderr when it failed)."""
    out, err = worker.communicate(timeout=timeout)
    assert worker.returncode == 0, err[-2000:]
    found: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return found
