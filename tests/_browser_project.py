"""A throwaway mistral_nbenv project pointing at the loopback server (notebook-layer tests).

Used by the magic, widget, notebook, browser and demo tests: a temporary ``settings.toml``
whose sections carry fake, distinct, key-shaped literals, the test server's URL, a
temporary cache directory and generous rate limits; and a clean process environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mistral_nbenv.testing import MistralTestServer
from tests.conftest import reset_state as reset_core

#: Fake keys shaped like real ones (32 mixed-case alphanumerics); never sent anywhere but loopback.
KEYS: dict[str, str] = {
    "development": "DevFakeKeyAbCdEfGhIjKlMnOpQr0001",
    "staging": "StgFakeKeyAbCdEfGhIjKlMnOpQr0002",
    "production": "PrdFakeKeyAbCdEfGhIjKlMnOpQr0003",
    "qa": "QaaFakeKeyAbCdEfGhIjKlMnOpQr0004",
}

#: Variables that would let the user's own configuration leak into a test.
_PREFIXES = ("MISTRAL_NBENV_", "MISTRAL_API_KEY")
_NAMES = ("MISTRAL_ENV", "VERCEL_ENV", "NODE_ENV", "VAULT_ADDR", "VAULT_TOKEN")


def scrubbed_environ(base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment without Mistral keys, environment selectors or our settings."""
    env = dict(os.environ if base is None else base)
    for name in list(env):
        if name.startswith(_PREFIXES) or name in _NAMES or name.endswith("_FOR_DYNACONF"):
            del env[name]
    return env


def write_project(
    directory: Path,
    server_url: str,
    *,
    environments: Iterable[str] = ("development", "staging", "production", "qa"),
    keys: dict[str, str] | None = None,
    extra: str = "",
) -> Path:
    """Write ``settings.toml`` into ``directory`` and return its path."""
    keys = KEYS if keys is None else keys
    lines = [
        "[default]",
        f'server_url = "{server_url}"',
        "max_retries = 0",
        "[default.cache]",
        f'directory = "{(directory / "cache").as_posix()}"',
    ]
    for env in environments:
        lines += [
            f"[{env}]",
            *([f'api_key = "{keys[env]}"'] if env in keys else []),
            f"[{env}.rate_limits]",
            "requests_per_minute = 100000",
            "tokens_per_minute = 100000000",
        ]
    path = directory / "settings.toml"
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def use_project(
    directory: Path, server_url: str, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> Path:
    """Write a project into ``directory`` (``write_project``'s options) and make it current."""
    directory.mkdir(exist_ok=True)
    path = write_project(directory, server_url, **kwargs)
    monkeypatch.setenv("MISTRAL_NBENV_SETTINGS", str(path))
    reset_core()
    return path


@contextmanager
def loopback_project(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MistralTestServer]:
    """A loopback server and a project in ``directory`` pointing at it; clean global state."""
    for name in set(os.environ) - set(scrubbed_environ()):
        monkeypatch.delenv(name)
    with MistralTestServer() as server:
        use_project(directory, server.url, monkeypatch)
        try:
            yield server
        finally:
            reset_core()


def assert_no_key(*texts: object) -> None:
    """Fail if any full fake key appears in any of ``texts``."""
    blob = "\n".join(str(t) for t in texts)
    for env, key in KEYS.items():
        assert key not in blob, f"the {env} key leaked into output"
