"""Shared fixtures: every test starts with a clean process environment and fresh state."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["tests.secret_servers", "tests.redis_server"]

# Variables that could leak a developer's real configuration (or a real key) into a test.
_PREFIXES = ("MISTRAL_", "VAULT_", "AWS_", "GOOGLE_", "SECRET_MANAGER_")
_NAMES = ("VERCEL_ENV", "NODE_ENV", "ENV_FOR_DYNACONF", "SETTINGS_FILE_FOR_DYNACONF")


def reset_state() -> None:
    """Forget the active environment, loaded settings, keys and clients."""
    from mistral_nbenv import workspace

    workspace.reset()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No real keys or settings from the machine; cwd and caches inside tmp_path."""
    for name in list(os.environ):
        if name.startswith(_PREFIXES) or name in _NAMES or name.endswith("_FOR_DYNACONF"):
            monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    reset_state()
    yield
    reset_state()


@pytest.fixture
def lproject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A loopback Mistral server and a project whose environments point at it."""
    from tests._browser_project import loopback_project

    with loopback_project(tmp_path, monkeypatch) as server:
        yield server


ProjectFactory = Callable[..., Path]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ProjectFactory:
    """Write a project (settings.toml, .secrets.toml, .env files) and chdir into it."""

    def make(
        settings: str | None = "",
        secrets: str | None = None,
        files: dict[str, str] | None = None,
        *,
        name: str = "proj",
    ) -> Path:
        root = tmp_path / name
        root.mkdir(exist_ok=True)
        if settings is not None:
            (root / "settings.toml").write_text(textwrap.dedent(settings))
        if secrets is not None:
            (root / ".secrets.toml").write_text(textwrap.dedent(secrets))
        for filename, text in (files or {}).items():
            (root / filename).write_text(textwrap.dedent(text))
        monkeypatch.chdir(root)
        reset_state()
        return root

    return make


def fake_key(label: str) -> str:
    """A 32-character fake key that is different per label (never a real key)."""
    import hashlib

    digest = hashlib.sha256(label.encode()).hexdigest()
    # mixed case like a real key, so masking and scanning see a realistic shape
    return "".join(c.upper() if i % 3 == 0 else c for i, c in enumerate(digest[:32]))
