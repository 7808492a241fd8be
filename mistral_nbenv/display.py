"""Plain-text and HTML rendering of environment status, shared by the magic, widget and CLI.

``collect_status`` / ``collect_check`` gather what the core knows about an environment into
small frozen records (never holding a key, only its masked form); the ``*_text`` and
``*_html`` functions turn those records into a terminal line or a notebook badge.  Nothing
here imports IPython or ipywidgets, and the cache module is imported only when asked for.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import MistralEnvError

__all__ = [
    "ChatAnswer",
    "CheckResult",
    "EnvironmentStatus",
    "Rich",
    "answer_badge_html",
    "answer_badge_text",
    "ask",
    "badge_html",
    "badge_text",
    "cache_line_html",
    "cache_stats_html",
    "cache_stats_text",
    "check_html",
    "check_text",
    "cleared_text",
    "collect_check",
    "collect_findings",
    "collect_status",
    "colour_for",
    "environments_html",
    "environments_text",
    "error_html",
    "format_bytes",
    "message_html",
    "one_line",
    "status_html",
    "status_text",
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


@dataclass(frozen=True)
class EnvironmentStatus:
    """What one environment looks like right now; holds no secret, only the masked key."""

    environment: str
    active: bool = False
    protected: bool = False
    model: str = ""
    server_url: str = ""
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
    problem: str | None = None

    @property
    def endpoint(self) -> str:
        """The server URL, or the SDK default spelled out."""
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


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (its type name if the message is empty)."""
    return " ".join(str(exc).split()) or type(exc).__name__


class ChatAnswer:
    """A chat answer plus where it came from (what ``%%mistral`` returns, so ``_`` holds it).

    ``.response`` is the SDK's ``ChatCompletionResponse``; any other attribute (``.choices``,
    ``.usage``, ``.model``, ...) is read from it.  ``.content`` is the answer text,
    ``.environment``/``.cached``/``.elapsed_ms`` describe the call.
    """

    def __init__(
        self, response: Any, *, environment: str, model: str, cached: bool, elapsed_ms: float
    ) -> None:
        self.response = response
        self.environment = environment
        self.requested_model = model
        self.cached = cached
        self.elapsed_ms = elapsed_ms

    @property
    def content(self) -> str:
        """The text of the first choice."""
        try:
            content = self.response.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            return ""
        if isinstance(content, str):
            return content
        # structured content: join the text chunks
        return "".join(getattr(c, "text", "") or "" for c in content or [])

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "response":
            raise AttributeError(name)
        return getattr(self.response, name)

    def _repr_markdown_(self) -> str:
        return self.content

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.content)

    def __repr__(self) -> str:
        return (
            f"ChatAnswer(environment={self.environment!r}, model={self.requested_model!r}, "
            f"cached={self.cached}, content={self.content[:60]!r})"
        )


def ask(client: Any, **kwargs: Any) -> ChatAnswer:
    """``client.chat.complete(**kwargs)``, timed, noting whether the cache answered it."""
    hits_before = client.stats.hits
    started = time.perf_counter()
    response = client.chat.complete(**kwargs)
    elapsed_ms = (time.perf_counter() - started) * 1000
    return ChatAnswer(
        response,
        environment=client.environment,
        model=getattr(response, "model", None) or kwargs.get("model") or "",
        cached=client.stats.hits > hits_before,
        elapsed_ms=elapsed_ms,
    )


def collect_status(env: str | None = None, *, with_cache: bool = False) -> EnvironmentStatus:
    """Gather the status of ``env`` (None = active); an unknown name raises ConfigurationError."""
    from ._names import normalize_name
    from .environments import current_environment
    from .keys import get_api_key
    from .settings import get_settings, list_environments

    active = current_environment()
    name = active if env is None else normalize_name(env, list_environments())
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
        key_problem = one_line(exc)
    entries: int | None = None
    if with_cache:
        try:
            from .cache import cache_stats

            entries = int(cache_stats(s.environment).get("entries", 0))
        except Exception:  # status display must never fail because the cache is unreadable
            entries = None
    return EnvironmentStatus(
        environment=s.environment,
        active=s.environment == active,
        protected=s.protected,
        model=s.chat_model,
        server_url=s.server_url,
        offline=s.offline,
        key_masked=key_masked,
        key_source=key_source,
        key_problem=key_problem,
        cache_enabled=s.cache.enabled,
        cache_ttl_seconds=int(s.cache.ttl_seconds),
        cache_entries=entries,
        requests_per_minute=int(s.rate_limits.requests_per_minute),
        tokens_per_minute=int(s.rate_limits.tokens_per_minute),
        max_concurrent_requests=int(s.features.max_concurrent_requests),
    )


def collect_check(env: str | None = None, *, all_environments: bool = False) -> list[CheckResult]:
    """Check ``env`` (or all): settings validate, a key resolves, no key shared."""
    from ._names import normalize_name
    from .environments import current_environment
    from .keys import get_api_key
    from .settings import get_settings, list_environments

    if all_environments:
        names = list_environments()
    else:
        names = [normalize_name(env, list_environments()) if env else current_environment()]
    results: list[CheckResult] = []
    for name in names:
        problems: list[str] = []
        notes: list[str] = []
        try:
            s = get_settings(name)
            notes.append(f"model {s.chat_model}")
            resolved = get_api_key(name)
            notes.append(f"key {resolved.value.masked} from {resolved.source}")
        except MistralEnvError as exc:
            problems.append(one_line(exc))
        results.append(CheckResult(name, tuple(problems), tuple(notes)))
    return results


def collect_findings(results: Iterable[CheckResult]) -> list[Any]:
    """Project hygiene findings (``checks.Finding``) for the environments just checked."""
    from .checks import project_findings
    from .settings import get_settings

    checked = []
    for result in results:
        try:
            checked.append(get_settings(result.environment))
        except MistralEnvError:  # already reported by collect_check
            continue
    return list(project_findings(checked))


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


def _rows(st: EnvironmentStatus) -> list[tuple[str, str]]:
    rows = [
        ("model", st.model),
        ("key", _key_text(st)),
        ("server", st.endpoint),
        ("cache", _cache_text(st)),
        ("limits", _limits_text(st)),
    ]
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
    return "\n".join([head] + [f"  {k:<9} {v}" for k, v in rows])


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


def check_text(results: Iterable[CheckResult], findings: Iterable[Any] = ()) -> str:
    """``ok``/``FAIL`` per environment with its problems, then ``FAIL``/``warn`` findings."""
    lines = []
    for r in results:
        if r.ok:
            lines.append(f"ok    {r.environment}: {'; '.join(r.notes)}")
        else:
            lines.append(f"FAIL  {r.environment}: {'; '.join(r.problems)}")
    for f in findings:
        lines.append(f"{'FAIL ' if f.is_error else 'warn '} {f.message}")
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
    entries = int(stats.get("entries", 0) or 0)
    size = format_bytes(float(stats.get("bytes", 0) or 0))
    ttl = stats.get("ttl_seconds", stats.get("ttl"))
    state = f"on, ttl {ttl:g}s" if stats.get("enabled") else "off (per call: cache=True)"
    if stats.get("offline"):
        state += ", offline"
    where = stats.get("directory") or "?"
    return f"cache: {entries} entr{'y' if entries == 1 else 'ies'}, {size} in {where} ({state})"


def cache_stats_text(environment: str, stats: Mapping[str, Any]) -> str:
    """``[staging] cache: 3 entries, 4.1 KB in /path (on, ttl 300s)``."""
    return f"{badge_text(environment)} {_cache_summary(stats)}"


def cache_line_html(stats: Mapping[str, Any]) -> str:
    """``cached: 3 responses, 4.1 KB`` with the directory as a tooltip (the widget's cache row)."""
    entries = int(stats.get("entries", 0) or 0)
    size = format_bytes(float(stats.get("bytes", 0) or 0))
    where = str(stats.get("directory") or "")
    return (
        f'<span title="{_E(where)}" style="{_FONT}">cached: {entries} '
        f"response{'' if entries == 1 else 's'}, {size}</span>"
    )


def _answer_detail(answer: ChatAnswer) -> str:
    origin = "from cache" if answer.cached else "from API"
    return f"{answer.requested_model} · {origin} · {answer.elapsed_ms:.0f} ms"


def answer_badge_text(answer: ChatAnswer) -> str:
    """The line printed above a ``%%mistral`` answer in a terminal."""
    return f"{badge_text(answer.environment)} {_answer_detail(answer)}"


# ---------------------------------------------------------------------------------------- html

_E = html.escape
_FONT = "font-family:var(--jp-ui-font-family,system-ui,sans-serif);font-size:13px"


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
        pill += f' <span style="color:#6b7280;{_FONT}">{_E(detail)}</span>'
    return pill


def _table(rows: Iterable[tuple[str, str]]) -> str:
    cells = "".join(
        f'<tr><td style="padding:0 12px 0 0;color:#6b7280;text-align:left">{_E(k)}</td>'
        f'<td style="padding:0;text-align:left">{_E(v)}</td></tr>'
        for k, v in rows
    )
    return f'<table style="border-collapse:collapse;margin:4px 0;{_FONT}">{cells}</table>'


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
    """A ✔/✘ line per environment with its problems, then findings (✘ error, ⚠ warning)."""
    rows = []
    for r in results:
        mark = (
            '<span style="color:#2e7d32">✔</span>'
            if r.ok
            else '<span style="color:#c62828">✘</span>'
        )
        text = "; ".join(r.notes if r.ok else r.problems)
        rows.append(
            f'<div style="margin:2px 0;{_FONT}">{mark} {badge_html(r.environment)} {_E(text)}</div>'
        )
    for f in findings:
        colour, sign = ("#c62828", "✘") if f.is_error else ("#b45309", "⚠")
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


def error_html(message: str) -> str:
    """An error line (no traceback) in red."""
    return f'<div style="color:#c62828;{_FONT}">⚠ {_E(message)}</div>'


def message_html(message: str, environment: str | None = None) -> str:
    """A short message, optionally after an environment badge."""
    badge = f"{badge_html(environment)} " if environment else ""
    return f'<div style="{_FONT}">{badge}{_E(message)}</div>'


class Rich:
    """An object IPython displays as HTML in a notebook and as plain text in a terminal."""

    def __init__(self, text: str, html_text: str) -> None:
        self.text = text
        self.html = html_text

    def _repr_html_(self) -> str:
        return self.html

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text)

    def __repr__(self) -> str:
        return self.text
