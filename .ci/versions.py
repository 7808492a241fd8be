"""Print the versions a test run used (called by noxfile.py in each session)."""

from __future__ import annotations

import platform
import shutil
import subprocess
from importlib import metadata

PACKAGES = (
    "mistralai",
    "httpx2",
    "pydantic",
    "dynaconf",
    "tenacity",
    "diskcache",
    "redis",
    "hiredis",
    "ipython",
    "ipywidgets",
    "pytest",
    "playwright",
    "jupyterlab",
)


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def _tool(command: list[str]) -> str:
    if shutil.which(command[0]) is None:
        return "not installed"
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.stdout or out.stderr else "?"


print(f"versions: Python {platform.python_version()} ({platform.machine()})")
print("versions: " + ", ".join(f"{name} {_version(name)}" for name in PACKAGES))
print(f"versions: chromium: {_tool(['chromium', '--version'])}")
print(f"versions: redis-server: {_tool(['redis-server', '--version'])}")
