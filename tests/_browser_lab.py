"""A throwaway JupyterLab server for the real-browser test (isolated HOME and Jupyter dirs)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    """The Debian chromium binary, if installed."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    return shutil.which("chromium")


@dataclass
class Lab:
    """A running JupyterLab: base URL, token, the directory it serves, and its log file."""

    url: str
    token: str
    root: Path
    log: Path

    def page_url(self, path: str) -> str:
        """The URL of a lab page (``tree/x.ipynb``) with the token."""
        return f"{self.url}/lab/{path}?token={self.token}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def jupyterlab(root: Path, home: Path, env: dict[str, str], timeout: float = 60) -> Iterator[Lab]:
    """Start JupyterLab on 127.0.0.1 serving ``root``; stop it (by its PID) afterwards."""
    token = secrets.token_hex(16)
    port = _free_port()
    dirs = {
        "HOME": home,
        "JUPYTER_CONFIG_DIR": home / "jupyter-config",
        "JUPYTER_DATA_DIR": home / "jupyter-data",
        "JUPYTER_RUNTIME_DIR": home / "jupyter-runtime",
        "IPYTHONDIR": home / "ipython",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    # answer "no" to the "official Jupyter news?" toast, which would cover screenshots
    notification = dirs["JUPYTER_CONFIG_DIR"] / "lab/user-settings/@jupyterlab/apputils-extension"
    notification.mkdir(parents=True, exist_ok=True)
    (notification / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    full_env = dict(env, **{k: str(v) for k, v in dirs.items()})
    log = home / "jupyterlab.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--port={port}",
        "--ServerApp.ip=127.0.0.1",
        "--allow-root",
        f"--IdentityProvider.token={token}",
        "--LabApp.news_url=",
        "--LabApp.extension_manager=readonly",
        f"--ServerApp.root_dir={root}",
    ]
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            cmd, env=full_env, cwd=root, stdout=log_file, stderr=subprocess.STDOUT
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"JupyterLab exited:\n{log.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                        break
                except (urllib.error.URLError, OSError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"JupyterLab did not start:\n{log.read_text()[-3000:]}"
                        ) from None
                    time.sleep(0.2)
            yield Lab(url=url, token=token, root=root, log=log)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, 9)
                proc.wait(timeout=5)
