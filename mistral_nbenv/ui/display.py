"""Plain-text and HTML rendering, shared by the magic, widget and CLI.

The ``*_text`` and ``*_html`` functions turn the records of :mod:`mistral_nbenv.ui.status`
and :mod:`mistral_nbenv.ui.reports` (which never hold a key, only its masked form) into a
terminal line or table, or a notebook badge, table or chart. The usage chart shows tokens
(prompt + completion) per UTC day, one bar per environment in its badge colour; no plotting
library is needed. Nothing here imports IPython or ipywidgets.
"""

from __future__ import annotations

import html
import textwrap
import time
from collections.abc import Iterable, Mapping
from typing import Any

from mistral_nbenv.secrets import scrub
from mistral_nbenv.ui.ask import ChatAnswer
from mistral_nbenv.ui.models import ModelRow
from mistral_nbenv.ui.reports import SpendReport, UsageReport, UsageRow
from mistral_nbenv.ui.status import CheckResult, EnvironmentStatus

__all__ = [
    "Rich",
    "answer_badge_html",
    "answer_badge_text",
    "badge_html",
    "badge_text",
    "cache_line_html",
    "cache_stats_html",
    "cache_stats_text",
    "check_html",
    "check_text",
    "cleared_text",
    "colour_for",
    "environments_html",
    "environments_text",
    "error_html",
    "format_bytes",
    "message_html",
    "status_html",
    "status_text",
    "usage_chart_svg",
    "usage_html",
    "usage_text",
]

#: Badge colours (background, text) per environment; any other environment is grey.
COLOURS: dict[str, tuple[str, str]] = {
    "production": ("#c62828", "#ffffff"),
    "staging": ("#f59e0b", "#1f2937"),
    "development": ("#2e7d32", "#ffffff"),
}
GREY: tuple[str, str] = ("#6b7280", "#ffffff")

#: ANSI colours for terminals that want them (red, yellow, green, default).
_ANSI: dict[str, str] = {"production": "31", "staging": "33", "development": "32"}


def colour_for(environment: str) -> str:
    """The badge background colour of an environment (production red, staging amber, ...)."""
    return COLOURS.get(environment, GREY)[0]


# ---------------------------------------------------------------------------------------- text


def badge_text(environment: str, *, protected: bool = False, ansi: bool = False) -> str:
    """``[production 🔒]`` — the environment as a short terminal badge (ANSI colour optional)."""
    label = f"[{environment}{' 🔒' if protected else ''}]"
    if ansi:
        code = _ANSI.get(environment, "90")
        return f"\x1b[1;{code}m{label}\x1b[0m"
    return label


def _key_text(st: EnvironmentStatus) -> str:
    if st.key_masked:
        return f"{st.key_masked} (from {st.key_source})"
    return f"not available — {st.key_problem}" if st.key_problem else "not available"


def _cache_text(st: EnvironmentStatus) -> str:
    text = f"on, ttl {st.cache_ttl_seconds:g}s" if st.cache_enabled else "off"
    if st.cache_entries is not None:
        text += f", {st.cache_entries} entr{'y' if st.cache_entries == 1 else 'ies'}"
    return text


def _limits_text(st: EnvironmentStatus) -> str:
    return (
        f"{st.requests_per_minute} req/min, {st.tokens_per_minute} tokens/min, "
        f"{st.max_concurrent_requests} concurrent"
    )


def _spend_text(spend: SpendReport) -> str:
    """``$0.0123 of $5.00 today (UTC), $1.20 of $100.00 this month; ≤ $0.50 per call``."""

    def part(spent: float | None, cap: float, period: str) -> str | None:
        if not cap and spent is None:
            return None
        shown = "$0" if spent is None else f"${spent:,.4f}"
        if not cap:
            return f"{shown} {period}"
        left = cap - (spent or 0.0)
        return f"{shown} of ${cap:,.2f} {period} (${max(0.0, left):,.4f} left)"

    parts = [
        p
        for p in (
            part(spend.spent_today, spend.daily_usd, "today (UTC)"),
            part(spend.spent_month, spend.monthly_usd, "this month"),
        )
        if p
    ]
    if spend.per_call_usd:
        parts.append(f"at most ${spend.per_call_usd:,.2f} per call")
    return "; ".join(parts) if parts else "no caps (budget.daily_usd, budget.monthly_usd)"


def _api_limits_text(limits: Mapping[str, Any]) -> str:
    """The API's ``x-ratelimit-*`` headers last seen: ``720 req/min (717 left), ...``."""
    parts = []
    for what, unit in (
        ("req-minute", "req/min"),
        ("tokens-minute", "tokens/min"),
        ("tokens-month", "tokens/month"),
    ):
        limit = limits.get(f"x-ratelimit-limit-{what}")
        left = limits.get(f"x-ratelimit-remaining-{what}")
        if limit is not None:
            parts.append(f"{_int(limit)} {unit}" + (f" ({_int(left)} left)" if left else ""))
    seen = limits.get("seen_at")
    if parts and isinstance(seen, int | float):
        parts.append(time.strftime("seen %Y-%m-%d %H:%M UTC", time.gmtime(seen)))
    return ", ".join(parts)


def _int(text: Any) -> str:
    try:
        return f"{int(float(text)):,}"
    except (TypeError, ValueError):
        return str(text)


def _rows(st: EnvironmentStatus) -> list[tuple[str, str]]:
    rows = [
        ("model", f"{st.model} ({st.model_reason})" if st.model_reason else st.model),
        ("key", _key_text(st)),
        ("server", st.endpoint),
        ("cache", _cache_text(st)),
        ("limits", _limits_text(st)),
    ]
    if st.spend is not None:
        rows.append(("spend", _spend_text(st.spend)))
        api = _api_limits_text(st.spend.api_limits)
        if api:
            rows.append(("api", api))
    if st.offline:
        rows.append(("offline", "answers come from the cache only"))
    if st.protected:
        rows.append(("protected", "switching here needs confirmation"))
    return rows


def status_text(st: EnvironmentStatus, *, ansi: bool = False) -> str:
    """A few aligned lines describing one environment."""
    head = badge_text(st.environment, protected=st.protected, ansi=ansi)
    if st.active:
        head += " active"
    if st.problem:
        return f"{head}\n  problem: {st.problem}"
    rows = [(k, f"yes — {v}" if k in ("offline", "protected") else v) for k, v in _rows(st)]
    lines = [head]
    for k, v in rows:  # 80 columns: a long value goes on under itself
        lines += textwrap.wrap(
            v,
            width=80,
            initial_indent=f"  {k:<9} ",
            subsequent_indent=" " * 12,
            break_long_words=False,  # a path stays whole
            break_on_hyphens=False,
        ) or [f"  {k}"]
    return "\n".join(lines)


def environments_text(statuses: Iterable[EnvironmentStatus], *, ansi: bool = False) -> str:
    """One line per environment, the active one marked with ``*``."""
    lines = []
    for st in statuses:
        mark = "*" if st.active else " "
        badge = badge_text(st.environment, protected=st.protected, ansi=ansi)
        if st.problem:
            lines.append(f"{mark} {badge}  problem: {st.problem}")
            continue
        key = st.key_masked or "no key"
        lines.append(f"{mark} {badge}  {st.model}  key {key}")
    return "\n".join(lines)


def models_text(environment: str, rows: Iterable[ModelRow]) -> str:
    """``models list``: one line per model, the ones the settings use first."""
    lines = [f"{badge_text(environment)} models.list"]
    for r in rows:
        parts = [r.id]
        if r.points_to:
            parts.append(f"-> {r.points_to}")
        if r.used_by:
            parts.append(f"[{', '.join(r.used_by)}]")
        if r.pinned:
            parts.append(f"pinned: {r.pinned}")
        if r.deprecation:
            instead = f", use {r.replacement}" if r.replacement else ""
            parts.append(f"(deprecated: retires {r.deprecation}{instead})")
        lines.append("  " + " ".join(parts))
    return "\n".join(lines)


def changes_text(changes: Iterable[Any]) -> str:
    """``models lock`` / ``promote``: one line per pin written."""
    lines = [str(c) for c in changes]
    return "\n".join([*lines, "models.lock.toml written; commit it."]) if lines else "no pins"


def check_text(results: Iterable[CheckResult], findings: Iterable[Any] = ()) -> str:
    """``ok``/``FAIL`` per environment with its problems, then ``FAIL``/``warn`` findings."""
    lines = []
    for r in results:
        if r.ok:
            lines.append(f"ok    {r.environment}: {'; '.join(r.notes)}")
        else:
            for problem in r.problems:  # a problem's detail lines, indented under it
                first, *rest = problem.splitlines()
                lines.append(f"FAIL  {r.environment}: {first}")
                lines.extend(f"      {line}" for line in rest)
    for f in findings:
        mark = "FAIL " if f.is_error else ("note " if f.severity == "note" else "warn ")
        lines.append(f"{mark} {f.message}")
    return "\n".join(lines)


def cleared_text(removed: int) -> str:
    """``removed 3 cached responses`` — the outcome of clearing a cache."""
    return f"removed {removed} cached response{'' if removed == 1 else 's'}"


def format_bytes(n: float) -> str:
    """1536 -> ``1.5 KB``."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def _cache_summary(stats: Mapping[str, Any]) -> str:
    if stats.get("available") is False:
        where = stats.get("shared") or stats.get("directory") or "?"
        return f"cache: UNAVAILABLE at {where} ({stats.get('problem') or 'cannot be read'})"
    entries = int(stats.get("entries", 0) or 0)
    size = format_bytes(float(stats.get("bytes", 0) or 0))
    ttl = stats.get("ttl_seconds", stats.get("ttl"))
    state = f"on, ttl {ttl:g}s" if stats.get("enabled") else "off (per call: cache=True)"
    if stats.get("offline"):
        state += ", offline"
    where = stats.get("shared") or stats.get("directory") or "?"
    return f"cache: {entries} entr{'y' if entries == 1 else 'ies'}, {size} in {where} ({state})"


def cache_stats_text(environment: str, stats: Mapping[str, Any]) -> str:
    """``[staging] cache: 3 entries, 4.1 KB in /path (on, ttl 300s)``."""
    return f"{badge_text(environment)} {_cache_summary(stats)}"


def cache_line_html(stats: Mapping[str, Any]) -> str:
    """``cached: 3 responses, 4.1 KB`` with the directory as a tooltip (the widget's cache row)."""
    entries = int(stats.get("entries", 0) or 0)
    size = format_bytes(float(stats.get("bytes", 0) or 0))
    where = str(stats.get("shared") or stats.get("directory") or "")
    return (
        f'<span title="{_E(where)}" style="{_FONT}">cached: {entries} '
        f"response{'' if entries == 1 else 's'}, {size}</span>"
    )


def _answer_detail(answer: ChatAnswer) -> str:
    origin = "from cache" if answer.cached else "from API"
    model = answer.model_sent
    if answer.model_answered and answer.model_answered != model:
        model += f" (answered as {answer.model_answered})"
    if answer.model_reason:
        model += f" — {answer.model_reason}"
    parts = [model, origin, f"{answer.elapsed_ms:.0f} ms"]
    tokens = answer.tokens["total"]
    if tokens:
        parts.append(f"{tokens} tokens")
    if answer.cost_usd is None:
        parts.append("cost unknown (no price)")
    elif answer.cached:
        parts.append(f"$0 (saved ${answer.cost_usd:.6f})")
    else:
        parts.append(f"${answer.cost_usd:.6f}")
    if not answer.cache_on and not answer.cached:
        parts.append(f"not cached: the cache is off in {answer.environment}")
    if answer.interrupted:
        parts.append("interrupted: the answer is cut short (not cached)")
    return " · ".join(parts)


def pending_badge_text(environment: str, model: str) -> str:
    """The badge while an answer streams in."""
    return f"{badge_text(environment)} {model} · …"


def pending_badge_html(environment: str, model: str) -> str:
    """The HTML badge while an answer streams in."""
    return f"<div>{badge_html(environment, detail=f'{model} · …')}</div>"


def answer_badge_text(answer: ChatAnswer) -> str:
    """The line printed above a ``%%mistral`` answer in a terminal."""
    return f"{badge_text(answer.environment)} {_answer_detail(answer)}"


# ---------------------------------------------------------------------------------------- html

_E = html.escape
_FONT = "font-family:var(--jp-ui-font-family,system-ui,sans-serif);font-size:13px"
#: Keeps the notebook's MathJax away: "$0 (saved $0.000005)" is money, not LaTeX.
NO_MATH = "tex2jax_ignore mathjax_ignore"


def badge_html(environment: str, *, protected: bool = False, detail: str = "") -> str:
    """A coloured pill naming the environment (and optionally a detail in grey after it)."""
    bg, fg = COLOURS.get(environment, GREY)
    pill = (
        f'<span class="mistral-nbenv-badge" data-environment="{_E(environment)}" '
        f'style="background:{bg};color:{fg};padding:1px 8px;border-radius:9px;'
        f'font-weight:600;{_FONT}">{_E(environment)}</span>'
    )
    if protected:  # a word, not an emoji: headless browsers often lack an emoji font
        pill += (
            f' <span class="mistral-nbenv-protected" style="border:1px solid {bg};color:{bg};'
            f'padding:0 6px;border-radius:9px;font-size:11px;font-weight:600">protected</span>'
        )
    if detail:
        pill += f' <span class="{NO_MATH}" style="color:#6b7280;{_FONT}">{_E(detail)}</span>'
    return pill


def _table(rows: Iterable[tuple[str, str]]) -> str:
    cells = "".join(
        f'<tr><td style="padding:0 12px 0 0;color:#6b7280;text-align:left">{_E(k)}</td>'
        f'<td style="padding:0;text-align:left">{_E(v)}</td></tr>'
        for k, v in rows
    )
    return (
        f'<table class="{NO_MATH}" style="border-collapse:collapse;margin:4px 0;{_FONT}">'
        f"{cells}</table>"
    )


def status_html(st: EnvironmentStatus, *, badge: bool = True) -> str:
    """The badge and a small table: model, key and source, server, cache, limits."""
    head = ""
    if badge:
        detail = "active" if st.active else ""
        head = badge_html(st.environment, protected=st.protected, detail=detail)
    if st.problem:
        return f"<div>{head}{error_html(st.problem)}</div>"
    return f'<div class="mistral-nbenv-status">{head}{_table(_rows(st))}</div>'


def environments_html(statuses: Iterable[EnvironmentStatus]) -> str:
    """One row per environment: badge, model, masked key; the active one in bold."""
    rows = []
    for st in statuses:
        weight = "font-weight:600;" if st.active else ""
        detail = st.problem or f"{st.model} · key {st.key_masked or 'none'}"
        rows.append(
            f'<div style="margin:2px 0;{weight}{_FONT}">'
            f"{'▶ ' if st.active else '&nbsp;&nbsp;&nbsp;'}"
            f"{badge_html(st.environment, protected=st.protected)} {_E(detail)}</div>"
        )
    return f'<div class="mistral-nbenv-list">{"".join(rows)}</div>'


def check_html(results: Iterable[CheckResult], findings: Iterable[Any] = ()) -> str:
    """A ✔/✘ line per environment with its problems, then findings (✘ error, ⚠ warning,
    ℹ note)."""
    rows = []
    for r in results:
        mark = (
            '<span style="color:#2e7d32">✔</span>'
            if r.ok
            else '<span style="color:#c62828">✘</span>'
        )
        text = "; ".join(r.notes if r.ok else r.problems)
        rows.append(  # pre-line: a problem's detail lines (the places looked) stay lines
            f'<div style="margin:2px 0;white-space:pre-line;{_FONT}">{mark} '
            f"{badge_html(r.environment)} {_E(text)}</div>"
        )
    for f in findings:
        colour, sign = (
            ("#c62828", "✘")
            if f.is_error
            else (("#6b7280", "ℹ") if f.severity == "note" else ("#b45309", "⚠"))
        )
        rows.append(
            f'<div style="margin:2px 0;{_FONT}"><span style="color:{colour}">{sign}</span> '
            f"{_E(f.message)}</div>"
        )
    return f'<div class="mistral-nbenv-check">{"".join(rows)}</div>'


def cache_stats_html(environment: str, stats: Mapping[str, Any]) -> str:
    """The cache statistics of one environment next to its badge."""
    return (
        f"<div>{badge_html(environment)} "
        f"<span style='{_FONT}'>{_E(_cache_summary(stats))}</span></div>"
    )


def answer_badge_html(answer: ChatAnswer) -> str:
    """The badge above a ``%%mistral`` answer: environment, model, cache or API, time."""
    return f"<div>{badge_html(answer.environment, detail=_answer_detail(answer))}</div>"


def models_html(environment: str, rows: Iterable[ModelRow]) -> str:
    """``models list`` as a table under the environment's badge."""
    cells = "".join(
        "<tr>"
        + "".join(
            f'<td style="padding:1px 8px">{_E(v)}</td>'
            for v in (
                r.id,
                r.points_to,
                ", ".join(r.used_by),
                r.pinned,
                f"{r.deprecation} (use {r.replacement})" if r.replacement else r.deprecation,
            )
        )
        + "</tr>"
        for r in rows
    )
    head = "".join(
        f'<th style="text-align:left;padding:1px 8px">{h}</th>'
        for h in ("model", "points to", "used by", "pinned", "retires")
    )
    return (
        f'<div class="mistral-nbenv-models" style="{_FONT}">{badge_html(environment)} '
        f"models.list<table><tr>{head}</tr>{cells}</table></div>"
    )


def changes_html(changes: Iterable[Any]) -> str:
    """``models lock`` / ``promote``: the pins written."""
    lines = changes_text(changes).splitlines()
    return f'<div style="{_FONT}">' + "<br>".join(_E(line) for line in lines) + "</div>"


def error_html(message: str) -> str:
    """An error line (no traceback) in red."""
    return f'<div style="color:#c62828;{_FONT}">⚠ {_E(message)}</div>'


def message_html(message: str, environment: str | None = None) -> str:
    """A short message, optionally after an environment badge."""
    badge = f"{badge_html(environment)} " if environment else ""
    return f'<div style="{_FONT}">{badge}{_E(message)}</div>'


class Rich:
    """An object IPython displays as HTML in a notebook and as plain text in a terminal."""

    def __init__(self, text: str, html_text: str, metadata: dict[str, Any] | None = None) -> None:
        self.text = scrub(text)  # nothing displayed can show a key, whatever it quotes
        self.html = scrub(html_text)
        self.metadata = metadata  # recorded with the output (a %%mistral answer's provenance)

    def _repr_html_(self) -> str:
        return self.html

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        # only the metadata here: IPython takes text/html and text/plain from the methods
        return ({}, {"mistral_nbenv": self.metadata}) if self.metadata else None

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text)

    def __repr__(self) -> str:
        return self.text


# ------------------------------------------------------------------------- usage report

_E = html.escape
_FONT = "font-family:var(--jp-ui-font-family,system-ui,sans-serif);font-size:12px"
_BAR = 40  # characters of the longest terminal bar
_HEADERS = ("day", "environment", "model", "requests", "hits", "errors", "prompt", "completion")
_MORE = ("waits", "cost")


def _cost(cost: float | None) -> str:
    return "-" if cost is None else f"${cost:,.4f}"


def _cells(row: UsageRow) -> tuple[str, ...]:
    return (
        row.day,
        row.environment,
        row.model,
        f"{row.requests:,}",
        f"{row.hits:,}",
        f"{row.errors:,}",
        f"{row.prompt_tokens:,}",
        f"{row.completion_tokens:,}",
        f"{row.waits:,}",
        _cost(row.cost),
    )


def _narrow(rows: list[UsageRow]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The terminal's table, made to fit 80 columns: tokens in one column (prompt and
    completion are in ``--json`` and the notebook's table), errors and waits only when some
    row has them."""
    errors = any(r.errors for r in rows)
    waits = any(r.waits for r in rows)
    head: tuple[str, ...] = ("day", "environment", "model", "req", "hits")
    head += ("err",) if errors else ()
    head += ("tokens",) + (("waits",) if waits else ()) + ("cost",)
    out: list[tuple[str, ...]] = []
    for r in rows:
        cells: tuple[str, ...] = (r.day, r.environment, r.model, f"{r.requests:,}", f"{r.hits:,}")
        cells += (f"{r.errors:,}",) if errors else ()
        cells += (f"{r.tokens:,}",) + ((f"{r.waits:,}",) if waits else ()) + (_cost(r.cost),)
        out.append(cells)
    return head, out


def usage_text(report: UsageReport, *, days: int = 14) -> str:
    """A table of the last ``days`` days' buckets, a bar chart and per-environment totals."""
    lines: list[str] = []
    if not report.rows:
        lines.append("usage: nothing recorded yet (calls made with get_client() count here)")
    else:
        shown_days = {day for day, _ in report.tokens_by_day(days)}
        shown = [r for r in report.rows if r.day in shown_days]
        head, rows = _narrow(shown)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

        def line(cells: tuple[str, ...]) -> str:
            return "  ".join(
                c.ljust(w) if i < 3 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        lines.append(line(head))
        lines.extend(line(r) for r in rows)
        lines.append("")
        lines.append("tokens per day (prompt + completion)")
        chart = report.tokens_by_day(days)
        top = max((n for _, per in chart for n in per.values()), default=0) or 1
        bar_width = min(_BAR, 80 - 10 - 2 - max(len(e) for _, p in chart for e in p) - 2 - 12)
        env_width = max(len(e) for _, per in chart for e in per)
        for day, per in chart:
            for i, (env, tokens) in enumerate(sorted(per.items())):
                bar = "█" * max(1 if tokens else 0, round(bar_width * tokens / top))
                label = day if i == 0 else ""
                lines.append(f"{label:<10}  {env:<{env_width}}  {bar} {tokens:,}")
        lines.append("")
        for env, t in report.totals().items():
            saved = f", the cache saved {_cost(t['saved'])}" if t["saved"] else ""
            lines.append(
                f"{env}: {int(t['requests']):,} requests, {int(t['hits']):,} cache hits, "
                f"{int(t['tokens']):,} tokens"
            )
            lines.append(f"  cost {_cost(t['cost'])}{saved}")
        versions = sorted({v for r in report.rows for v in r.priced_with})
        if versions:
            lines.append(f"priced with: {', '.join(versions)} (the price tables' versions)")
    for env, where in report.ledgers.items():
        lines.append(f"ledger of {env}: {where}")
    lines.extend(f"problem: {p}" for p in report.problems)
    return "\n".join(lines)


def _environment_order(names: Iterable[str]) -> list[str]:
    """development, staging, production (the picker's order), then the others by name."""
    from mistral_nbenv.config.names import CANONICAL

    names = set(names)
    known = [n for n in CANONICAL if n in names]
    return known + sorted(names - set(known))


def usage_chart_svg(report: UsageReport, *, days: int = 14, width: int = 560) -> str:
    """Grouped bars: tokens per day, one bar per environment (its badge colour), with a
    title, a labelled axis, and a legend in the picker's order. The chart is as wide as its
    days need (one day is not a small cluster on a wide empty axis)."""
    chart = report.tokens_by_day(days)
    if not chart:
        return ""
    envs = _environment_order(e for _, per in chart for e in per)
    top = max(n for _, per in chart for n in per.values()) or 1
    height, base, left, head = 170, 140, 58, 34
    width = max(360, min(width, left + len(chart) * max(48, 12 * len(envs) + 12)))
    group = (width - left) / len(chart)
    bar = max(2.0, min(18.0, (group - 6) / len(envs)))
    span = f"last {len(chart)} day{'s' if len(chart) != 1 else ''}"
    parts = [
        f'<svg class="mistral-nbenv-usage-chart" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" role="img" '
        f'aria-label="tokens per day per environment" style="{_FONT}">',
        f'<text class="title" x="{left}" y="14" font-weight="600" fill="#374151">'
        f"Tokens per day ({span}, UTC)</text>",
        f'<text class="axis-label" transform="translate(12,{(head + base) / 2:.0f}) '
        f'rotate(-90)" text-anchor="middle" fill="#6b7280">tokens</text>',
        f'<line x1="{left}" y1="{head}" x2="{left}" y2="{base}" stroke="#d1d5db"/>',
        f'<line x1="{left}" y1="{base}" x2="{width}" y2="{base}" stroke="#9ca3af"/>',
        f'<text x="{left - 4}" y="{head + 4}" text-anchor="end" fill="#6b7280">{top:,}</text>',
        f'<text x="{left - 4}" y="{base}" text-anchor="end" fill="#6b7280">0</text>',
    ]
    for g, (day, per) in enumerate(chart):
        x0 = left + g * group + (group - bar * len(envs)) / 2
        for i, env in enumerate(envs):
            tokens = per.get(env, 0)
            h = (base - head) * tokens / top
            parts.append(
                f'<rect data-environment="{_E(env)}" data-day="{_E(day)}" data-tokens="{tokens}"'
                f' x="{x0 + i * bar:.1f}" y="{base - h:.1f}" width="{bar - 1:.1f}"'
                f' height="{h:.1f}" fill="{colour_for(env)}"><title>{_E(env)} {_E(day)}: '
                f"{tokens:,} tokens</title></rect>"
            )
        parts.append(
            f'<text x="{left + g * group + group / 2:.1f}" y="{base + 14}" '
            f'text-anchor="middle" fill="#6b7280">{_E(day[5:])}</text>'
        )
    parts.append("</svg>")
    legend = " ".join(
        f'<span class="legend" data-environment="{_E(e)}" '
        f'style="color:{colour_for(e)};font-weight:600">■ {_E(e)}</span>'
        for e in envs
    )
    return "".join(parts) + f'<div style="{_FONT}">{legend}</div>'


def usage_html(report: UsageReport, *, days: int = 14) -> str:
    """The chart, then the table and totals (the notebook's ``%mistral_env usage``)."""
    if not report.rows:
        body = f'<div style="{_FONT}">usage: nothing recorded yet</div>'
    else:
        shown_days = {day for day, _ in report.tokens_by_day(days)}
        head = "".join(
            f'<th style="padding:0 8px;text-align:{"left" if i < 3 else "right"}">{_E(h)}</th>'
            for i, h in enumerate((*_HEADERS, *_MORE))
        )
        rows = "".join(
            "<tr>"
            + "".join(
                f'<td style="padding:0 8px;text-align:{"left" if i < 3 else "right"}">{_E(c)}</td>'
                for i, c in enumerate(_cells(r))
            )
            + "</tr>"
            for r in report.rows
            if r.day in shown_days
        )
        totals = "<br>".join(
            f"{_E(env)}: {int(t['requests']):,} requests, {int(t['hits']):,} hits, "
            f"{int(t['tokens']):,} tokens, cost {_E(_cost(t['cost']))}"
            + (f" (the cache saved {_E(_cost(t['saved']))})" if t["saved"] else "")
            for env, t in report.totals().items()
        )
        body = (
            usage_chart_svg(report, days=days)
            + f'<table class="mistral-nbenv-usage" style="border-collapse:collapse;{_FONT}">'
            + f"<tr>{head}</tr>{rows}</table><div style='{_FONT}'>{totals}</div>"
        )
    problems = "".join(f'<div style="color:#c62828;{_FONT}">{_E(p)}</div>' for p in report.problems)
    return f'<div class="mistral-nbenv-usage-report {NO_MATH}">{body}{problems}</div>'
