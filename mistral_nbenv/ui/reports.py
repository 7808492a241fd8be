"""What the ui asks of the stores: cache statistics, clearing a cache, the usage report.

Each function takes an environment name (None: the active one) and finds its stores the way
its client does: the shared store of ``[E.shared]`` when one is set (its URL resolved by the
workspace), else the local ones under the cache root.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from mistral_nbenv import environments
from mistral_nbenv.errors import MistralEnvError
from mistral_nbenv.workspace import get_settings, list_environments, workspace

__all__ = [
    "SpendReport",
    "UsageReport",
    "UsageRow",
    "cache_stats",
    "clear_cache",
    "collect_spend",
    "collect_usage",
]


def cache_stats(env: str | None = None) -> dict[str, Any]:
    """Entries, bytes, where (directory or shared URL), enabled flag and TTL of one
    environment's cache."""
    from mistral_nbenv.policies.cache import stats_for

    settings = get_settings(env)
    return stats_for(settings, workspace().shared(settings))


def clear_cache(env: str | None = None, *, confirm: bool = False) -> int:
    """Remove every cached response of one environment (never another's); return how many.

    A protected environment's cache is cleared only with ``confirm=True``. A shared cache is
    cleared for every host using it.
    """
    from mistral_nbenv.policies.cache import clear_for

    settings = get_settings(env)
    environments.check_destructive(settings, "clearing its response cache", confirm=confirm)
    return clear_for(settings, workspace().shared(settings))


@dataclass(frozen=True)
class SpendReport:
    """One environment's caps, what its UTC day and month have spent (as the caps count it:
    every process, every host through Redis) and the API's rate-limit headers last seen."""

    daily_usd: float = 0.0
    monthly_usd: float = 0.0
    per_call_usd: float = 0.0
    spent_today: float | None = None  # None: not counted (no cap, nothing recorded)
    spent_month: float | None = None
    api_limits: dict[str, Any] = field(default_factory=dict)
    prices: str = ""  # the price table's version, date and source

    @property
    def capped(self) -> bool:
        """Whether any cap is set."""
        return bool(self.daily_usd or self.monthly_usd or self.per_call_usd)


def collect_spend(env: str | None = None) -> SpendReport:
    """The spending caps and counts of ``env`` (None: the active one); the key decides
    where a shared count lives, so without a key only the local state is read."""
    from mistral_nbenv.policies.spend import Spending
    from mistral_nbenv.store.layout import cache_dir, open_stores
    from mistral_nbenv.workspace import get_api_key

    settings = get_settings(env)
    budget = settings.budget
    spending_dir = cache_dir(settings) / "spend"
    try:
        identity = get_api_key(settings.environment).identity
    except MistralEnvError:
        identity = ""
    shared = workspace().shared(settings) if identity else None
    report = SpendReport(
        daily_usd=float(budget.daily_usd),
        monthly_usd=float(budget.monthly_usd),
        per_call_usd=float(budget.per_call_usd),
    )
    if shared is None and not spending_dir.is_dir():
        from mistral_nbenv.config.prices import table_for

        return _with_prices(report, table_for(settings.prices))
    stores = open_stores(settings, shared, identity)
    try:
        spending = Spending(settings, stores.spend, stores.shared_spend)
        today, month = spending.spent()
        limits = spending.last_limits()
    finally:
        stores.close()
    report = replace(report, spent_today=today, spent_month=month, api_limits=limits)
    return _with_prices(report, spending.table)


def _with_prices(report: SpendReport, table: Any) -> SpendReport:
    return replace(report, prices=f"{table.version} (as of {table.as_of}, {table.source})")


@dataclass(frozen=True)
class UsageRow:
    """One bucket of the ledger: a UTC day, an environment, a model, and its counters."""

    day: str
    environment: str
    model: str
    requests: int = 0
    errors: int = 0
    hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    waits: int = 0
    wait_seconds: float = 0.0
    cost: float | None = None  # USD, priced when each answer came (None: no price)
    saved: float = 0.0  # USD the cache hits would have cost
    priced_with: tuple[str, ...] = ()  # the price tables' versions ("now": priced today)

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class UsageReport:
    """The ledger's buckets for some environments, newest day first."""

    rows: tuple[UsageRow, ...]
    ledgers: dict[str, str] = field(default_factory=dict)  # environment -> where (no password)
    problems: tuple[str, ...] = ()

    def tokens_by_day(self, days: int = 14) -> list[tuple[str, dict[str, int]]]:
        """``[(day, {environment: tokens})]`` for the last ``days`` days with usage, oldest
        first (the chart)."""
        by_day: dict[str, dict[str, int]] = {}
        for row in self.rows:
            per_env = by_day.setdefault(row.day, {})
            per_env[row.environment] = per_env.get(row.environment, 0) + row.tokens
        return sorted(by_day.items())[-days:]

    def totals(self) -> dict[str, dict[str, float]]:
        """Per environment: requests, hits, tokens, cost (None when a model has no price)
        and what the cache hits saved."""
        out: dict[str, dict[str, Any]] = {}
        for row in self.rows:
            t = out.setdefault(
                row.environment,
                {"requests": 0, "hits": 0, "tokens": 0, "cost": 0.0, "saved": 0.0},
            )
            t["saved"] += row.saved
            t["requests"] += row.requests
            t["hits"] += row.hits
            t["tokens"] += row.tokens
            t["cost"] = None if t["cost"] is None or row.cost is None else t["cost"] + row.cost
        return out


def collect_usage(env: str | None = None, *, all_environments: bool = True) -> UsageReport:
    """The usage of ``env`` (or of every environment)."""
    from mistral_nbenv.policies.usage import bucket_parts, cost_of
    from mistral_nbenv.store.layout import cache_dir, open_stores

    names: Iterable[str] = (
        list_environments() if all_environments and env is None else [get_settings(env).environment]
    )
    rows: list[UsageRow] = []
    ledgers: dict[str, str] = {}
    problems: list[str] = []
    for name in names:
        try:
            settings = get_settings(name)
            shared = workspace().shared(settings)
            if shared is None and not (cache_dir(settings) / "usage").is_dir():
                continue  # nothing recorded here yet: do not create the directory
            ledger = open_stores(settings, shared).ledger
            totals = ledger.totals()
        except MistralEnvError as exc:
            problems.append(f"{name}: {exc}")
            continue
        except Exception as exc:  # an unreadable local ledger
            problems.append(f"{name}: usage could not be read ({type(exc).__name__}: {exc})")
            continue
        ledgers[name] = shared.url if shared is not None else str(cache_dir(settings) / "usage")
        for bucket, counters in totals.items():
            parts = bucket_parts(bucket)
            if parts is None or parts[1] != name:
                continue
            day, _, model = parts
            cost, versions = cost_of(model, counters, settings.prices)
            rows.append(
                UsageRow(
                    day,
                    name,
                    model,
                    **{k: int(counters.get(k, 0)) for k in _COUNTS},
                    wait_seconds=round(counters.get("wait_seconds", 0.0), 3),
                    cost=cost,
                    saved=counters.get("saved_usd", 0.0),
                    priced_with=versions,
                )
            )
    rows.sort(key=lambda r: (_negated(r.day), r.environment, r.model))
    return UsageReport(tuple(rows), ledgers, tuple(problems))


_COUNTS = ("requests", "errors", "hits", "prompt_tokens", "completion_tokens", "waits")


def _negated(day: str) -> float:
    """Newest day first."""
    try:
        return -time.mktime(time.strptime(day, "%Y-%m-%d"))
    except ValueError:
        return 0.0
