"""pytest fixtures handing tests a loopback Mistral API server (no autouse, no global state)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mistral_nbenv.testing.server import MistralTestServer


@pytest.fixture
def mistral_server() -> Iterator[MistralTestServer]:
    """A fresh running :class:`MistralTestServer`, stopped after the test."""
    from mistral_nbenv.testing.server import MistralTestServer

    with MistralTestServer() as server:
        yield server


@pytest.fixture(scope="session")
def mistral_server_session() -> Iterator[MistralTestServer]:
    """One :class:`MistralTestServer` shared by the session (call ``clear()`` as needed)."""
    from mistral_nbenv.testing.server import MistralTestServer

    with MistralTestServer() as server:
        yield server
