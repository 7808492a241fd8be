"""``client.stats``: what one client did since it was created, counted thread-safely."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from mistral_nbenv._forksafe import Lock

__all__ = ["ClientStats"]


@dataclass
class ClientStats:
    """Counters of one client since it was created, and the models it sends.

    ``model`` is the chat model a call that names none sends (pins applied) and
    ``model_reason`` why it is not the ``model`` setting; ``models`` counts the answers
    the API gave per model sent (a cache hit sends nothing).
    """

    model: str = ""
    model_reason: str = ""
    models: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    hits: int = 0
    misses: int = 0
    retries: int = 0
    errors: int = 0
    rate_limit_waits: int = 0
    rate_limit_wait_seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0  # what the answers cost (models with a price)
    saved_usd: float = 0.0  # what the cache hits would have cost
    _lock: Lock = field(default_factory=Lock, repr=False, compare=False)

    def add(self, **amounts: float) -> None:
        """Add to several counters at once (thread-safe)."""
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def sent(self, model: str) -> None:
        """Count one answer from the API for ``model`` (thread-safe)."""
        with self._lock:
            self.models[model] = self.models.get(model, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict (``models`` copied)."""
        with self._lock:
            values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_lock"}
            values["models"] = dict(self.models)
        return values
