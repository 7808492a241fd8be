"""What a route of the loopback server produced (shared by the server and its routes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Reply"]


@dataclass
class Reply:
    """What a route produced: a JSON body, or SSE events."""

    status: int = 200
    body: Any = None
    events: list[Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
