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

from mistral_nbenv._forksafe import Lock
from mistral_nbenv.store import Busy, Locked, warn_once

if TYPE_CHECKING:
    from mistral_nbenv.store import Ledger

__all__ = ["COUNTERS", "PRICED", "UsageRecorder", "bucket_parts", "cost_of"]

log = logging.getLogger(__name__)

COUNTERS = (
    "requests",
    "errors",
    "hits",
    "prompt_tokens",
    "completion_tokens",
    "waits",
    "wait_seconds",
    "cost_usd",  # what the answers cost, priced when they came (policies.spend)
    "saved_usd",  # what the cache hits would have cost
    "unpriced",  # answers of a model with no price (their cost is unknown)
)
#: ``priced@<version>``: answers priced with that price table (config.prices).
PRICED = "priced@"


def bucket_parts(bucket: str) -> tuple[str, str, str] | None:
    """``(day, environment, model)`` of a bucket name, or None if it is not one."""
    parts = bucket.split("|", 2)
    if len(parts) != 3 or len(parts[0]) != 10:
        return None
    return parts[0], parts[1], parts[2]


def cost_of(
    model: str, counters: Mapping[str, float], prices: Mapping[str, Mapping[str, float]]
) -> tuple[float | None, tuple[str, ...]]:
    """USD of a bucket and the price tables that priced it.

    The cost recorded with each answer (``cost_usd``, with ``priced@<version>``) when there
    is one; None when its answers had no price; for a bucket an earlier release wrote
    (tokens, no cost) the current table's price, marked ``now``.
    """
    versions = tuple(sorted(k[len(PRICED) :] for k in counters if k.startswith(PRICED)))
    if versions:
        return counters.get("cost_usd", 0.0), versions
    if counters.get("unpriced", 0.0) > 0 or not (
        counters.get("prompt_tokens") or counters.get("completion_tokens")
    ):
        return (None if counters.get("unpriced", 0.0) > 0 else 0.0), ()
    from mistral_nbenv.config.prices import table_for

    found = table_for(prices).cost(
        model, counters.get("prompt_tokens", 0.0), counters.get("completion_tokens", 0.0)
    )
    return found, (("now",) if found is not None else ())


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
        # counts a locked ledger could not take yet: added with the next record
        self._owed: dict[str, dict[str, float]] = {}
        self._owed_lock = Lock()

    def __repr__(self) -> str:
        return f"UsageRecorder({self.environment!r})"

    def record(self, model: str | None, **amounts: float) -> None:
        """Add ``amounts`` to today's bucket of ``model`` now (a failing ledger is logged,
        never raised: usage is bookkeeping, it does not fail a call)."""
        now = self.clock()
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        bucket = f"{day}|{self.environment}|{model or '-'}"
        try:
            self._ledger.add(bucket, amounts)
        except Busy:
            raise  # to be written where waiting is allowed (store.without_waiting)
        except Locked as exc:  # a stopped process holds it: kept, written with the next call
            self._owe(bucket, amounts)
            warn_once(
                f"{getattr(self._ledger, 'location', 'usage')} (locked)",
                str(exc),
                what=f"the usage ledger of environment '{self.environment}'",
                then="this process keeps its counts and adds them once it is free",
                fix="Resume or end the process that holds it; nothing needs deleting.",
            )
            return
        except Exception as exc:
            log.warning(
                "mistral_nbenv: %s: usage counts could not be written (%s)",
                self.environment,
                type(exc).__name__,
            )
            return
        if self._owed:
            self._pay_back()

    def _pay_back(self) -> None:
        """Add what a locked ledger could not take earlier (it took this call's counts)."""
        with self._owed_lock:
            owed, self._owed = self._owed, {}
        for bucket, amounts in owed.items():
            try:
                self._ledger.add(bucket, amounts)
            except Exception:  # still locked (or Busy on a loop): owed again
                self._owe(bucket, amounts)

    def _owe(self, bucket: str, amounts: Mapping[str, float]) -> None:
        with self._owed_lock:
            owed = self._owed.setdefault(bucket, {})
            for name, amount in amounts.items():
                owed[name] = owed.get(name, 0.0) + amount
