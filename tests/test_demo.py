"""``mistral-nbenv demo``: with no key it runs against the built-in local server."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mistral_nbenv import current_environment
from mistral_nbenv.testing import MistralTestServer
from mistral_nbenv.ui.demo import _LOCAL_KEYS, run_demo
from tests._browser_project import KEYS, assert_no_key, scrubbed_environ

pytestmark = pytest.mark.slow


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = scrubbed_environ()
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "xdg-cache"), **extra)
    return env


def _assert_no_demo_key(text: str) -> None:
    for key in _LOCAL_KEYS.values():
        assert key not in text


def _check_local_run(done: subprocess.CompletedProcess[str], tmp_path: Path) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "No MISTRAL_API_KEY" in out
    assert "built-in local server at http://127.0.0.1:" in out
    assert "2. A chat call" in out
    assert "from the cache" in out
    assert "refused: Operation" in out  # the guard
    assert "'production' is a protected environment" in out
    assert "still in: development" in out
    assert "Traceback" not in out + done.stderr
    _assert_no_demo_key(out + done.stderr)
    assert not (tmp_path / "xdg-cache").exists()  # the user's cache was not touched


def test_demo_without_a_key_uses_the_local_server(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "mistral_nbenv", "demo"],
        capture_output=True,
        text=True,
        cwd=tmp_path / "work",
        env=_env(tmp_path),
        timeout=120,
    )
    _check_local_run(done, tmp_path)


@pytest.mark.skipif(shutil.which("mistral-nbenv") is None, reason="console script not installed")
def test_console_script(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir(exist_ok=True)
    done = subprocess.run(
        [str(shutil.which("mistral-nbenv")), "demo"],
        capture_output=True,
        text=True,
        cwd=tmp_path / "work",
        env=_env(tmp_path),
        timeout=120,
    )
    _check_local_run(done, tmp_path)


def test_demo_with_a_key_uses_the_configured_server(
    tmp_path: Path, mistral_server: MistralTestServer
) -> None:
    """With a key, the demo talks to the configured endpoint (loopback here, never the internet)."""
    (tmp_path / "work").mkdir(exist_ok=True)
    env = _env(
        tmp_path,
        MISTRAL_API_KEY_DEV=KEYS["development"],
        MISTRAL_NBENV_SERVER_URL=mistral_server.url,
        MISTRAL_NBENV_CACHE__DIRECTORY=str(tmp_path / "cache"),
    )
    done = subprocess.run(
        [sys.executable, "-m", "mistral_nbenv", "demo"],
        capture_output=True,
        text=True,
        cwd=tmp_path / "work",
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Using {mistral_server.url} with your development key …0001" in done.stdout
    assert "No MISTRAL_API_KEY" not in done.stdout
    assert "from the cache" in done.stdout
    assert_no_key(done.stdout, done.stderr)
    assert mistral_server.count("/v1/chat/completions") == 1
    assert mistral_server.last_request is not None
    assert mistral_server.last_request.api_key == KEYS["development"]


def test_demo_in_process_restores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    before = dict(os.environ)
    out = io.StringIO()
    assert run_demo(out) == 0
    assert "built-in local server" in out.getvalue()
    assert dict(os.environ) == before
    assert current_environment() == "development"
    _assert_no_demo_key(out.getvalue())
