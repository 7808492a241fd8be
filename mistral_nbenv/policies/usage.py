"""The usage ledger's writer: what this process spent, per day, environment and model.

A :class:`UsageRecorder` adds each call's counts to a :class:`~mistral_nbenv.store.Ledger`
before the call returns (one transaction on disk, one round trip to Redis): a process that
is killed, or a ``multiprocessing.Pool`` worker that is terminated, right after a call has
counted it. The ledger is the shared store's (Redis, every host adds to the same buckets)
or the environment's local one (:mod:`mistral_nbenv.store.layout`). Buckets are
``YYYY-MM-DD|environment|model`` (UTC days); counters are :data:`COUNTERS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from mistral_nbenv.store import Busy

if TYPE_CHECKING:
    from mistral_nbenv.store import Ledger

__all__ = ["COUNTERS", "UsageRecorder", "bucket_parts", "cost_of"]

log = logging.getLogger(__name__)

COUNTERS = (
    "requests",
    "errors",
    "hits",
    "prompt_tokens",
    "completion_tokens",
    "waits",
    "wait_seconds",
)


def bucket_parts(bucket: str) -> tuple[str, str, str] | None:
    """``(day, environment, model)`` of a bucket name, or None if it is not one."""
    parts = bucket.split("|", 2)
    if len(parts) != 3 or len(parts[0]) != 10:
        return None
    return parts[0], parts[1], parts[2]


def cost_of(
    model: str, counters: Mapping[str, float], prices: Mapping[str, Mapping[str, float]]
) -> float | None:
    """USD for a bucket from ``prices`` (per million tokens); None when the model has none."""
    price = prices.get(model)
    if price is None:
        return None
    return (
        counters.get("prompt_tokens", 0.0) * price.get("input", 0.0)
        + counters.get("completion_tokens", 0.0) * price.get("output", 0.0)
    ) / 1e6


class UsageRecorder:
    """One environment's usage, added to its ledger by every call before the call returns."""

    def __init__(
        self,
        ledger: Ledger,
        environment: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self.environment = environment
        self.clock = clock

    def __repr__(self) -> str:
        return f"UsageRecorder({self.environment!r})"

    def record(self, model: str | None, **amounts: float) -> None:
        """Add ``amounts`` to today's bucket of ``model`` now (a failing ledger is logged,
        never raised: usage is bookkeeping, it does not fail a call)."""
        now = self.clock()
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        try:
            self._ledger.add(f"{day}|{self.environment}|{model or '-'}", amounts)
        except Busy:
            raise  # to be written where waiting is allowed (store.without_waiting)
        except Exception as exc:
            log.warning(
                "mistral_nbenv: %s: usage counts could not be written (%s)",
                self.environment,
                type(exc).__name__,
            )
