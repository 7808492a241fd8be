"""Spending caps: a call's worst-case cost reserved before it is sent, settled after.

``budget.daily_usd``, ``budget.monthly_usd`` (UTC day and month) and ``budget.per_call_usd``
are one environment's ceilings. Before a call is sent, :meth:`Spending.reserve` adds its
worst-case cost (the prompt estimate plus ``max_tokens``, else the model's output cap, at
the price of the model sent) to what the day and the month have spent, in one atomic step
that refuses it instead when a cap would be crossed
(:class:`~mistral_nbenv.errors.BudgetExceededError`: nothing is sent). When the answer
comes, :meth:`Spending.settle` replaces the reservation by the real cost (from the model
the answer names and its usage); a call that failed gives its reservation back.

The state (``{day, day_usd, month, month_usd}``) is a local
:class:`~mistral_nbenv.store.Budget` (``<project>/<environment>/spend``: exact across the
processes of one machine), or with ``[E.shared]`` one Redis script run with Redis's clock
(:data:`~mistral_nbenv.store.redis.SPEND`: exact across hosts), the same arithmetic as
:func:`_step` below. While Redis is down a host counts locally (one warning says so).

A model with no price cannot be capped: a capped environment refuses to send it, naming the
setting to add (``prices``). :meth:`Spending.cost` prices an answer (None: no price, one
note per model).
"""

from __future__ import annotations

import calendar
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from mistral_nbenv.config.prices import PriceTable, table_for, warn_unpriced
from mistral_nbenv.errors import BudgetExceededError, ConfigurationError
from mistral_nbenv.store import without_waiting

if TYPE_CHECKING:
    from mistral_nbenv.config import Settings
    from mistral_nbenv.store import Budget
    from mistral_nbenv.store.shared import SharedScript

__all__ = ["Spending", "period_of", "resets_at"]

_STATE_KEY = "spend"
_LIMITS_KEY = "api-limits"
_SLACK = 1e-9
#: The API's rate-limit headers are kept for ``status`` at most this often (seconds).
LIMITS_EVERY = 5.0
#: The rate-limit headers the API sends (per minute and per month), kept for ``status``.
LIMIT_HEADERS = (
    "x-ratelimit-limit-req-minute",
    "x-ratelimit-remaining-req-minute",
    "x-ratelimit-limit-tokens-minute",
    "x-ratelimit-remaining-tokens-minute",
    "x-ratelimit-limit-tokens-month",
    "x-ratelimit-remaining-tokens-month",
)


def period_of(now: float) -> tuple[int, int]:
    """``(day, month)`` of a time: days since 1970 (UTC) and ``YYYYMM``."""
    tm = time.gmtime(now)
    return int(now // 86_400), tm.tm_year * 100 + tm.tm_mon


def resets_at(cap: str, now: float) -> str:
    """When the period of ``cap`` (``daily`` / ``monthly``) ends: ISO 8601, UTC."""
    tm = time.gmtime(now)
    if cap == "daily":
        end = (int(now // 86_400) + 1) * 86_400
    else:
        year, month = (tm.tm_year + 1, 1) if tm.tm_mon == 12 else (tm.tm_year, tm.tm_mon + 1)
        end = calendar.timegm((year, month, 1, 0, 0, 0))
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(end))


def _usd(value: Any) -> float:
    """A stored amount; anything no writer of this package leaves counts as 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) and 0 <= number <= 1e12 else 0.0


def _step(
    raw: str | None, now: float, amount: float, daily: float, monthly: float, check: bool
) -> tuple[str | None, tuple[str, float, float, float]]:
    """The state change of one reservation or correction (the Lua :data:`SPEND`'s twin):
    ``(new state, (refused cap or '', spent today, spent this month, now))``."""
    day, month = period_of(now)
    try:
        state = json.loads(raw) if raw else {}
    except ValueError:
        state = {}
    if not isinstance(state, dict):
        state = {}
    spent_day = _usd(state.get("day_usd")) if state.get("day") == day else 0.0
    spent_month = _usd(state.get("month_usd")) if state.get("month") == month else 0.0
    if check and amount > 0:
        if monthly > 0 and spent_month + amount > monthly + _SLACK:
            return None, ("monthly", spent_day, spent_month, now)
        if daily > 0 and spent_day + amount > daily + _SLACK:
            return None, ("daily", spent_day, spent_month, now)
    spent_day = max(0.0, spent_day + amount)
    spent_month = max(0.0, spent_month + amount)
    new = {"day": day, "day_usd": spent_day, "month": month, "month_usd": spent_month}
    return json.dumps(new), ("", spent_day, spent_month, now)


class Spending:
    """One environment's prices and caps, and what its day and month have spent."""

    def __init__(
        self,
        settings: Settings,
        store: Budget,
        shared: SharedScript | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.environment = settings.environment
        self.table: PriceTable = table_for(settings.prices)
        budget = settings.budget
        self.daily = float(budget.daily_usd)
        self.monthly = float(budget.monthly_usd)
        self.per_call = float(budget.per_call_usd)
        self.confirm_above = float(budget.confirm_above_usd)
        #: True when a cap is set: every priced call reserves its worst case first.
        self.capped = self.daily > 0 or self.monthly > 0 or self.per_call > 0
        #: True when a day or month is capped: what calls cost is counted against it.
        self.counts = self.daily > 0 or self.monthly > 0
        self._store = store
        self._shared = shared
        self.clock = clock
        self._limits_written = float("-inf")  # when observe() last wrote the headers

    def __repr__(self) -> str:
        return (
            f"Spending({self.environment!r}, daily={self.daily:g}, monthly={self.monthly:g}, "
            f"per_call={self.per_call:g}, prices={self.table.version})"
        )

    # -- prices ----------------------------------------------------------------------------

    def cost(
        self,
        model: str | None,
        prompt: float,
        completion: float,
        pages: float = 0,
        minutes: float = 0,
    ) -> float | None:
        """USD of one answer of ``model``; None (and one note) when it has no price."""
        if not (prompt or completion or pages or minutes):
            return 0.0 if self.table.price(model) is not None else None
        found = self.table.cost(model, prompt, completion, pages, minutes)
        if found is None and model:
            warn_unpriced(model, self.environment)
        return found

    def worst_case(self, model: str | None, prompt: float, max_tokens: Any) -> float:
        """The most one call can cost; a capped environment refuses a model with no price."""
        found = self.table.worst_case(model, prompt, max_tokens)
        if found is None:
            raise ConfigurationError(
                f"Environment '{self.environment}' has spending caps (budget.*), but model "
                f"'{model}' has no price, so what a call costs cannot be capped: nothing was "
                f"sent. Add it under [{self.environment}.prices]: "
                f'"{model}" = {{ input = USD, output = USD }} per million tokens.'
            )
        return found

    # -- caps ------------------------------------------------------------------------------

    def check_per_call(self, worst: float, model: str, prompt: float, max_tokens: Any) -> None:
        """Refuse a call whose worst case is above ``budget.per_call_usd``."""
        if self.per_call > 0 and worst > self.per_call + _SLACK:
            raise BudgetExceededError(
                f"This call to {model} may cost up to ${worst:.4f} (about {int(prompt):,} "
                f"prompt tokens plus {_output(max_tokens)}), above the budget.per_call_usd cap "
                f"of ${self.per_call:.2f} in environment '{self.environment}': nothing was sent. "
                f"Lower max_tokens, or raise budget.per_call_usd under [{self.environment}].",
                environment=self.environment,
                cap="budget.per_call_usd",
                limit=self.per_call,
                needed=worst,
            )

    def _args(self, amount: float, check: bool) -> list[float | int | str]:
        return [repr(float(amount)), repr(self.daily), repr(self.monthly), 1 if check else 0]

    def _local(self, amount: float, check: bool) -> tuple[str, float, float, float]:
        result: tuple[str, float, float, float] = self._store.update(
            _STATE_KEY,
            lambda raw: _step(raw, self.clock(), amount, self.daily, self.monthly, check),
        )
        return result

    def _apply(self, amount: float, check: bool) -> tuple[str, float, float, float]:
        """One reservation / correction: Redis when shared (and up), else the local state."""
        if self._shared is not None:
            got = self._shared.run(self._args(amount, check))
            if got is not None:
                return str(got[0]), float(got[1]), float(got[2]), float(got[3])
        return self._local(amount, check)

    def reserve(self, amount: float, *, model: str = "", needed_for: str = "") -> None:
        """Add ``amount`` to the day and month, or refuse it (nothing added) with a
        :class:`BudgetExceededError` when it would cross a cap."""
        self._refused(self._apply(amount, True), amount, model, needed_for)

    async def reserve_async(self, amount: float, *, model: str = "", needed_for: str = "") -> None:
        """:meth:`reserve` with the event loop free (Redis awaited, the disk in a thread)."""
        got = None
        if self._shared is not None:
            got = await self._shared.run_async(self._args(amount, True))
        if got is not None:
            result = (str(got[0]), float(got[1]), float(got[2]), float(got[3]))
        else:
            result = await without_waiting(lambda: self._local(amount, True))
        self._refused(result, amount, model, needed_for)

    def _refused(
        self, result: tuple[str, float, float, float], amount: float, model: str, needed_for: str
    ) -> None:
        cap, spent_day, spent_month, now = result
        if not cap:
            return
        limit, spent = (self.daily, spent_day) if cap == "daily" else (self.monthly, spent_month)
        period = "today (UTC)" if cap == "daily" else "this month (UTC)"
        when = resets_at(cap, now)
        what = f" ({needed_for})" if needed_for else ""
        raise BudgetExceededError(
            f"Environment '{self.environment}' has spent ${spent:.4f} {period} of its "
            f"budget.{cap}_usd cap of ${limit:.2f}; this call to {model or 'the API'} may cost "
            f"up to ${amount:.4f}{what}, so nothing was sent. The cap resets at {when}. "
            f"Raise budget.{cap}_usd under [{self.environment}], or lower max_tokens.",
            environment=self.environment,
            cap=f"budget.{cap}_usd",
            limit=limit,
            spent=spent,
            needed=amount,
            resets=when,
        )

    def settle(self, reserved: float, actual: float | None) -> None:
        """Replace a reservation by what the call cost (``actual``; None: unknown, the
        reservation stands; 0: a failed call gives it back)."""
        if actual is None or (not reserved and not actual):
            return
        adjust = actual - reserved
        if adjust:
            self._apply(adjust, False)

    def spent(self) -> tuple[float, float]:
        """``(today, this month)`` in USD (reservations of calls in flight included)."""
        _cap, day, month, _now = self._apply(0.0, False)
        return day, month

    # -- the API's own limits, as last seen ------------------------------------------------

    def observe(self, headers: Mapping[str, str]) -> None:
        """Keep the rate-limit headers of an answer for ``status``: written at most every
        :data:`LIMITS_EVERY` seconds per process (every answer carries them; ``status`` needs
        recent ones, not one more transaction per call)."""
        seen = {name: headers[name] for name in LIMIT_HEADERS if name in headers}
        now = self.clock()
        if not seen or now - self._limits_written < LIMITS_EVERY:
            return
        self._limits_written = now
        text = json.dumps({"seen_at": now, **seen})
        self._store.update(_LIMITS_KEY, lambda _raw: (text, None))

    def last_limits(self) -> dict[str, Any]:
        """The rate-limit headers last seen (``seen_at``: when), or ``{}``."""
        raw = self._store.update(_LIMITS_KEY, lambda raw: (None, raw))
        try:
            found = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return found if isinstance(found, dict) else {}


def _output(max_tokens: Any) -> str:
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0:
        return f"max_tokens {max_tokens:,}"
    return "the model's longest answer (no max_tokens)"
