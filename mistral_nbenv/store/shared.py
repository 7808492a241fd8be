"""``[E.shared]``: one rate budget, response cache and usage ledger for many hosts (Redis).

A :class:`Shared` is one environment's view of its shared store. It says what goes there
(``shared.cache``, ``shared.rate_limits``; the usage ledger always does), and what happens
when Redis cannot be reached within ``shared.timeout``:

* ``on_unavailable = "local"`` (default): that operation uses the local store (the disk
  cache, the local budget, the local ledger) and one :class:`SharedStoreWarning` says so.
  For :data:`REJOIN_AFTER` seconds no call waits on Redis; then the next call tries it
  again and, once it answers, everything is shared again (logged at INFO).
* ``on_unavailable = "error"``: :class:`~mistral_nbenv.errors.SharedStoreUnavailableError`
  naming the environment and the URL without its password.

The budget of one environment is keyed by a fingerprint of its API key too
(``mistral-nbenv:{<environment>:<fingerprint>}:budget``; the braces are a hash tag, so a
Redis Cluster keeps it on one slot): the provider's limit belongs to the key. So is what the
spending caps count (``...:spend``: the UTC day's and month's USD). Cache keys are
the disk cache's keys under ``mistral-nbenv:cache:<environment>:``; usage buckets
(``day|environment|model``) under ``mistral-nbenv:usage:``.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from mistral_nbenv._forksafe import Lock
from mistral_nbenv.errors import MistralEnvWarning, SharedStoreUnavailableError
from mistral_nbenv.secrets import scrub, url_without_password
from mistral_nbenv.store import NOWAIT, Busy

if TYPE_CHECKING:
    from mistral_nbenv.config import Settings
    from mistral_nbenv.secrets import SecretStr
    from mistral_nbenv.store import KeyValue, Ledger
    from mistral_nbenv.store.redis import Connection

__all__ = [
    "PREFIX",
    "REJOIN_AFTER",
    "FailoverKeyValue",
    "FailoverLedger",
    "Shared",
    "SharedScript",
    "SharedStoreWarning",
    "fingerprint",
]

log = logging.getLogger(__name__)
R = TypeVar("R")

PREFIX = "mistral-nbenv"
#: After a failure, Redis is left alone this many seconds (``on_unavailable = "local"``).
REJOIN_AFTER = 2.0


class SharedStoreWarning(MistralEnvWarning, RuntimeWarning):
    """The shared store (Redis) is unavailable; this host goes on with its local stores."""


def fingerprint(secret: str) -> str:
    """A short, one-way name for an API key (12 hex digits of its SHA-256)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


class Shared:
    """One environment's shared store and its failover policy."""

    def __init__(
        self, settings: Settings, url: SecretStr, *, connection: Connection | None = None
    ) -> None:
        from mistral_nbenv.store import redis as redis_store

        self.environment = settings.environment
        self.url = url_without_password(url.get_secret_value())
        self.share_cache = bool(settings.shared.cache)
        self.share_budget = bool(settings.shared.rate_limits)
        self.mode = str(settings.shared.on_unavailable)
        self.timeout = float(settings.shared.timeout)
        self.connection = connection or redis_store.connect(
            url.get_secret_value(), timeout=self.timeout, location=self.url
        )
        self._lock = Lock()
        self._down_until = 0.0
        self._down = False

    def __repr__(self) -> str:
        state = "down" if self._down else "up"
        return f"Shared({self.environment!r}, {self.url!r}, {self.mode}, {state})"

    @property
    def up(self) -> bool:
        """False while the last operation failed (and no later one succeeded)."""
        return not self._down

    # -- the failover rule, once ------------------------------------------------------------

    def _skip(self) -> bool:
        return self.mode == "local" and time.monotonic() < self._down_until

    def _ok(self) -> None:
        if self._down:
            with self._lock:
                was, self._down = self._down, False
            if was:
                log.info("mistral_nbenv: %s: shared store %s is back", self.environment, self.url)

    def _failed(self, exc: BaseException, what: str) -> None:
        problem = scrub(f"{type(exc).__name__}: {exc}")
        if self.mode == "error":
            self._down = True
            raise SharedStoreUnavailableError(
                f"The shared store of environment '{self.environment}' at {self.url} is "
                f"unavailable ({problem}) while {what}. Start or fix that Redis server, or set "
                f'[{self.environment}.shared] on_unavailable = "local" to go on with local '
                "stores.",
                environment=self.environment,
                url=self.url,
            ) from None
        with self._lock:
            first = not self._down
            self._down = True
            self._down_until = time.monotonic() + REJOIN_AFTER
        if first:
            warnings.warn(
                f"mistral_nbenv: the shared store of environment '{self.environment}' at "
                f"{self.url} is unavailable ({problem}) while {what}; going on with this "
                f"host's local cache, budget and ledger, and trying it again every "
                f"{REJOIN_AFTER:g} s.",
                SharedStoreWarning,
                stacklevel=2,
            )

    def run(self, what: str, shared: Callable[[], R], local: Callable[[], R]) -> R:
        """``shared()``; when Redis fails, ``local()`` (or the error, by ``on_unavailable``).

        An event loop running store work itself (:data:`~mistral_nbenv.store.NOWAIT`) never
        waits on a round trip: :class:`~mistral_nbenv.store.Busy` sends the step to a thread.
        """
        if NOWAIT.get():
            raise Busy(f"{what} is a round trip to {self.url}")
        if self._skip():
            return local()
        try:
            result = shared()
        except Exception as exc:
            self._failed(exc, what)
            return local()
        self._ok()
        return result

    async def run_async(
        self, what: str, shared: Callable[[], Awaitable[R]], local: Callable[[], Awaitable[R]]
    ) -> R:
        """:meth:`run` for coroutines."""
        if self._skip():
            return await local()
        try:
            result = await shared()
        except Exception as exc:
            self._failed(exc, what)
            return await local()
        self._ok()
        return result

    # -- the three views --------------------------------------------------------------------

    def cache(self, local: KeyValue) -> KeyValue:
        """The response cache's store: Redis, else ``local``."""
        from mistral_nbenv.store.redis import RedisKeyValue

        prefix = f"{PREFIX}:cache:{self.environment}:"
        return FailoverKeyValue(self, RedisKeyValue(self.connection, prefix), local)

    def budget(self, api_key: str) -> SharedScript:
        """The rate budget's admission in Redis (keyed by environment and key fingerprint)."""
        from mistral_nbenv.store.redis import ADMIT, RedisScript

        key = f"{PREFIX}:{{{self.environment}:{fingerprint(api_key)}}}:budget"
        script = RedisScript(self.connection, key, ADMIT)
        return SharedScript(self, script, "taking from the rate budget")

    def spend(self, api_key: str) -> SharedScript:
        """The spending caps' state in Redis (keyed like the budget: every host sending this
        key from this environment adds to the same day and month)."""
        from mistral_nbenv.store.redis import SPEND, RedisScript

        key = f"{PREFIX}:{{{self.environment}:{fingerprint(api_key)}}}:spend"
        script = RedisScript(self.connection, key, SPEND)
        return SharedScript(self, script, "reserving from the spending caps")

    def ledger(self, local: Ledger) -> FailoverLedger:
        """The usage ledger: Redis, else ``local``."""
        from mistral_nbenv.store.redis import RedisLedger

        return FailoverLedger(self, RedisLedger(self.connection, f"{PREFIX}:usage:"), local)


class FailoverKeyValue:
    """:class:`~mistral_nbenv.store.KeyValue` on Redis, failing over to a local store."""

    def __init__(self, shared: Shared, primary: Any, local: KeyValue) -> None:
        self.shared = shared
        self.primary = primary
        self.local = local

    @property
    def location(self) -> str:
        """The URL without its password (the local store while Redis is down)."""
        return self.shared.url if self.shared.up else self.local.location

    def get(self, key: str) -> str | None:
        """GET from Redis."""
        return self.shared.run(
            "reading the cache", lambda: self.primary.get(key), lambda: self.local.get(key)
        )

    def set(self, key: str, value: str, ttl: float | None) -> None:
        """SET in Redis."""
        self.shared.run(
            "writing the cache",
            lambda: self.primary.set(key, value, ttl),
            lambda: self.local.set(key, value, ttl),
        )

    def delete(self, key: str) -> None:
        """DEL in Redis."""
        self.shared.run(
            "dropping a cache entry",
            lambda: self.primary.delete(key),
            lambda: self.local.delete(key),
        )

    def count(self) -> tuple[int, int]:
        """Entries and bytes in Redis."""
        result: tuple[int, int] = self.shared.run(
            "counting the cache", self.primary.count, self.local.count
        )
        return result

    def clear(self) -> int:
        """Clear this environment's entries in Redis *and* locally."""
        local = self.local.clear()
        removed: int = self.shared.run("clearing the cache", self.primary.clear, lambda: 0)
        return removed + local


class FailoverLedger:
    """:class:`~mistral_nbenv.store.Ledger` in Redis, failing over to a local one.

    What is recorded locally while Redis is down is merged into Redis once it answers
    again, exactly once: the local counters are sealed into a named batch in one
    transaction, the batch is added by one script that also sets its marker (a batch sent
    twice counts once), then forgotten. A batch left by a process that stopped half-way is
    merged by the next process that reaches Redis.
    """

    def __init__(self, shared: Shared, primary: Any, local: Ledger) -> None:
        self.shared = shared
        self.primary = primary
        self.local = local
        self._pending = True  # check once per process for batches another process left

    def _record_locally(self, bucket: str, amounts: Mapping[str, float]) -> None:
        self.local.add(bucket, amounts)
        self._pending = True

    def _merge_pending(self) -> None:
        """Move what was recorded locally into Redis (after a successful round trip)."""
        if not self._pending or not hasattr(self.local, "seal"):
            return
        import uuid

        local: Any = self.local
        try:
            local.seal(uuid.uuid4().hex)
            for batch, buckets in local.sealed().items():
                self.primary.merge(batch, buckets)
                local.discard(batch)
        except Exception as exc:  # Redis went away again: the batches wait, sealed
            log.debug("mistral_nbenv: usage merge into %s postponed (%s)", self.location, exc)
            return
        self._pending = False

    @property
    def location(self) -> str:
        """The URL without its password."""
        return self.shared.url

    def add(self, bucket: str, amounts: Mapping[str, float]) -> None:
        """Add to one bucket in Redis (locally while it is down; merged when it is back)."""

        def shared() -> None:
            self.primary.add(bucket, amounts)
            self._merge_pending()

        self.shared.run("recording usage", shared, lambda: self._record_locally(bucket, amounts))

    def totals(self) -> dict[str, dict[str, float]]:
        """The shared totals, with what was recorded locally merged in first (the local
        ones while Redis is down)."""

        def shared() -> dict[str, dict[str, float]]:
            self._merge_pending()
            result: dict[str, dict[str, float]] = self.primary.totals()
            return result

        result: dict[str, dict[str, float]] = self.shared.run(
            "reading usage", shared, self.local.totals
        )
        return result


class SharedScript:
    """A Redis script of one environment (the rate budget's admission, the spending caps)
    behind the failover rule: :meth:`run` returns its reply, or None when Redis is
    unavailable and the caller should use its local state for this request."""

    def __init__(self, shared: Shared, script: Any, what: str) -> None:
        self.shared = shared
        self.script = script
        self.what = what

    @property
    def location(self) -> str:
        """The URL without its password."""
        return self.shared.url

    def run(self, args: list[float | int | str]) -> list[str] | None:
        """One run in one round trip."""
        return self.shared.run(self.what, lambda: self.script.run(args), lambda: None)

    async def run_async(self, args: list[float | int | str]) -> list[str] | None:
        """:meth:`run` with ``redis.asyncio``."""

        async def local() -> None:
            return None

        return await self.shared.run_async(self.what, lambda: self.script.run_async(args), local)
