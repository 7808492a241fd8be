"""What the package knows about an environment, gathered for the magic, widget and CLI.

``collect_status`` / ``collect_check`` / ``collect_findings`` ask the workspace and return
small frozen records that never hold a key, only its masked form; :mod:`display` renders
them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mistral_nbenv.errors import MistralEnvError
from mistral_nbenv.ui.checks import project_findings
from mistral_nbenv.ui.reports import SpendReport, cache_stats, collect_spend
from mistral_nbenv.workspace import (
    current_environment,
    environment_name,
    get_api_key,
    get_settings,
    list_environments,
    project,
)

__all__ = [
    "CheckResult",
    "EnvironmentStatus",
    "collect_check",
    "collect_findings",
    "collect_status",
    "one_line",
]


@dataclass(frozen=True)
class EnvironmentStatus:
    """What one environment looks like right now; holds no secret, only the masked key."""

    environment: str
    active: bool = False
    protected: bool = False
    model: str = ""  # the model sent (Settings.model_sent)
    model_reason: str = ""  # why it is not `model`; empty when it is
    server_url: str = ""  # where calls go (`server_url`, or the `server` region's URL)
    server: str = ""  # the region named by `server` ("global", "eu", "us"), if any
    offline: bool = False
    key_masked: str | None = None
    key_source: str = ""
    key_problem: str | None = None
    cache_enabled: bool = False
    cache_ttl_seconds: int = 0
    cache_entries: int | None = None
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_concurrent_requests: int = 0
    spend: SpendReport | None = None  # caps, spent today / this month, the API's limits
    problem: str | None = None

    @property
    def endpoint(self) -> str:
        """The server URL (with its region), or the SDK default spelled out."""
        if self.server:
            return f"{self.server_url} (server = {self.server})"
        return self.server_url or "api.mistral.ai (SDK default)"


@dataclass(frozen=True)
class CheckResult:
    """The outcome of checking one environment: settings valid, key found and isolated."""

    environment: str
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


def caps_text(budget: Any) -> str:
    """``caps: $5.00/day, $100.00/month, $0.50/call`` (``caps: none``)."""
    parts = [
        f"${value:,.2f}/{unit}"
        for value, unit in (
            (budget.daily_usd, "day"),
            (budget.monthly_usd, "month"),
            (budget.per_call_usd, "call"),
        )
        if value
    ]
    if budget.confirm_above_usd:
        parts.append(f"ask above ${budget.confirm_above_usd:,.2f} in notebooks")
    return "caps: " + (", ".join(parts) if parts else "none (budget.daily_usd ... not set)")


def first_line(exc: BaseException) -> str:
    """The first line of a message that lists details on the next ones (what to do)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (its type name if the message is empty)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def collect_status(env: str | None = None, *, with_cache: bool = False) -> EnvironmentStatus:
    """Gather the status of ``env`` (None = active); an unknown name raises ConfigurationError."""
    active = current_environment()
    name = environment_name(env)
    try:
        s = get_settings(name)
    except MistralEnvError as exc:  # broken settings are shown, not raised
        return EnvironmentStatus(environment=name, active=name == active, problem=one_line(exc))
    key_masked: str | None = None
    key_source = ""
    key_problem: str | None = None
    try:
        resolved = get_api_key(s.environment)
        key_masked = resolved.value.masked
        key_source = resolved.source
    except MistralEnvError as exc:
        key_problem = first_line(exc)
    spend: SpendReport | None = None
    b = s.budget
    if with_cache or b.daily_usd or b.monthly_usd or b.per_call_usd:
        try:
            spend = collect_spend(s.environment)
        except Exception:  # status display must never fail because a store is unreadable
            spend = None
    entries: int | None = None
    if with_cache:
        try:
            entries = int(cache_stats(s.environment).get("entries", 0))
        except Exception:  # status display must never fail because the cache is unreadable
            entries = None
    return EnvironmentStatus(
        environment=s.environment,
        active=s.environment == active,
        protected=s.protected,
        model=s.model_sent,
        model_reason=s.model_reason,
        server_url=s.base_url,
        server=s.server,
        offline=s.offline,
        key_masked=key_masked,
        key_source=key_source,
        key_problem=key_problem,
        cache_enabled=s.cache.enabled and s.cache.ttl_seconds > 0,
        cache_ttl_seconds=int(s.cache.ttl_seconds),
        cache_entries=entries,
        requests_per_minute=int(s.rate_limits.requests_per_minute),
        tokens_per_minute=int(s.rate_limits.tokens_per_minute),
        max_concurrent_requests=int(s.features.max_concurrent_requests),
        spend=spend,
    )


def collect_check(env: str | None = None, *, all_environments: bool = False) -> list[CheckResult]:
    """Check ``env`` (or all): settings validate, a key resolves, no key shared."""
    names = list_environments() if all_environments else [environment_name(env)]
    results: list[CheckResult] = []
    for name in names:
        problems: list[str] = []
        notes: list[str] = []
        try:
            s = get_settings(name)
            notes.append(
                f"model {s.model_sent}" + (f" ({s.model_reason})" if s.model_reason else "")
            )
            resolved = get_api_key(name)
            notes.append(f"key {resolved.value.masked} from {resolved.source}")
            notes.append(caps_text(s.budget))
        except MistralEnvError as exc:
            problems.append(str(exc).strip() or type(exc).__name__)  # its lines kept
        results.append(CheckResult(name, tuple(problems), tuple(notes)))
    return results


def collect_findings(results: Iterable[CheckResult], *, online: bool = False) -> list[Any]:
    """Project hygiene and model findings (``checks.Finding``) for the environments just
    checked; ``online`` asks each one's ``models.list`` for deprecations now."""
    from mistral_nbenv.ui.models import model_findings

    checked = []
    for result in results:
        try:
            checked.append(get_settings(result.environment))
        except MistralEnvError:  # already reported by collect_check
            continue
    findings = list(project_findings(project(), checked))
    try:
        findings += model_findings(checked, online=online)
    except MistralEnvError as exc:  # --online: a server that cannot answer is a problem
        from mistral_nbenv.ui.checks import Finding

        findings.append(Finding(f"models: {one_line(exc)}", "error"))
    return findings
