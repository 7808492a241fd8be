"""The usage report as a terminal table and bar chart, or as HTML with an SVG chart.

Shared by ``mistral-nbenv usage``, ``%mistral_env usage`` and the widget. The chart shows
tokens (prompt + completion) per UTC day, one bar per environment in its badge colour, so a
team sees at a glance which environment spends what. No plotting library is needed.
"""

from __future__ import annotations

import html

from .display import colour_for
from .stores import UsageReport, UsageRow

__all__ = ["usage_chart_svg", "usage_html", "usage_text"]

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


def usage_text(report: UsageReport, *, days: int = 14) -> str:
    """A table of the last ``days`` days' buckets, a bar chart and per-environment totals."""
    lines: list[str] = []
    if not report.rows:
        lines.append("usage: nothing recorded yet (calls made with get_client() count here)")
    else:
        shown_days = {day for day, _ in report.tokens_by_day(days)}
        rows = [_cells(r) for r in report.rows if r.day in shown_days]
        head = (*_HEADERS, *_MORE)
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
        env_width = max(len(e) for _, per in chart for e in per)
        for day, per in chart:
            for i, (env, tokens) in enumerate(sorted(per.items())):
                bar = "█" * max(1 if tokens else 0, round(_BAR * tokens / top))
                label = day if i == 0 else ""
                lines.append(f"{label:<10}  {env:<{env_width}}  {bar} {tokens:,}")
        lines.append("")
        for env, t in report.totals().items():
            lines.append(
                f"{env}: {int(t['requests']):,} requests, {int(t['hits']):,} cache hits, "
                f"{int(t['tokens']):,} tokens, cost {_cost(t['cost'])}"
            )
    for env, where in report.ledgers.items():
        lines.append(f"ledger of {env}: {where}")
    lines.extend(f"problem: {p}" for p in report.problems)
    return "\n".join(lines)


def usage_chart_svg(report: UsageReport, *, days: int = 14, width: int = 560) -> str:
    """Grouped bars: tokens per day, one bar per environment (its badge colour)."""
    chart = report.tokens_by_day(days)
    if not chart:
        return ""
    envs = sorted({e for _, per in chart for e in per})
    top = max(n for _, per in chart for n in per.values()) or 1
    height, base, left = 140, 118, 44
    group = (width - left) / len(chart)
    bar = max(2.0, min(18.0, (group - 6) / len(envs)))
    parts = [
        f'<svg class="mistral-nbenv-usage-chart" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" role="img" '
        f'aria-label="tokens per day per environment" style="{_FONT}">',
        f'<line x1="{left}" y1="{base}" x2="{width}" y2="{base}" stroke="#9ca3af"/>',
        f'<text x="{left - 4}" y="12" text-anchor="end" fill="#6b7280">{top:,}</text>',
        f'<text x="{left - 4}" y="{base}" text-anchor="end" fill="#6b7280">0</text>',
    ]
    for g, (day, per) in enumerate(chart):
        x0 = left + g * group + (group - bar * len(envs)) / 2
        for i, env in enumerate(envs):
            tokens = per.get(env, 0)
            h = (base - 16) * tokens / top
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
        f'<span style="color:{colour_for(e)};font-weight:600">■ {_E(e)}</span>' for e in envs
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
            for env, t in report.totals().items()
        )
        body = (
            usage_chart_svg(report, days=days)
            + f'<table class="mistral-nbenv-usage" style="border-collapse:collapse;{_FONT}">'
            + f"<tr>{head}</tr>{rows}</table><div style='{_FONT}'>{totals}</div>"
        )
    problems = "".join(f'<div style="color:#c62828;{_FONT}">{_E(p)}</div>' for p in report.problems)
    return f'<div class="mistral-nbenv-usage-report">{body}{problems}</div>'
