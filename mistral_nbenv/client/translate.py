"""Failures into the package's error tree: one table of rules, and the key masked in each.

:data:`TRANSLATIONS` maps an SDK/``httpx2`` exception to ours (the first row whose test
holds); :func:`scrub_secret` masks the API key, in every form it can take (str, bytes and
their reprs), in the exception and everything it was raised from.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from mistral_nbenv.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    MistralEnvError,
    RateLimitError,
)
from mistral_nbenv.policies.retry import (
    is_local,
    is_malformed_body,
    is_monthly_limit,
    is_timeout,
    is_transport,
    retry_after_of,
    status_of,
)
from mistral_nbenv.secrets import redact, redact_bytes

__all__ = ["TRANSLATIONS", "quotes_secret", "scrub_secret", "translate_error"]

_BODY_SNIPPET = 300


def _scrub(text: str, secret: str | None) -> str:
    if secret:
        return redact(text, (secret,))
    return text


def scrub_secret(exc: BaseException, secret: str | None) -> None:
    """Mask ``secret`` in what ``exc`` shows in a traceback (args, the SDK's message and body).

    A server may echo the key in an error body, which the SDK copies into its message.
    """
    if not secret:
        return
    for current in _chain(exc):
        with contextlib.suppress(AttributeError, TypeError):
            for name in ("message", "body", "object"):  # object: a UnicodeError's text
                value = getattr(current, name, None)
                if isinstance(value, str | bytes):
                    clean = _scrub_any(value, secret)
                    if clean != value:
                        object.__setattr__(current, name, clean)  # the SDK's are frozen
            current.args = tuple(_scrub_any(a, secret) for a in current.args)


def quotes_secret(exc: BaseException, secrets: list[str]) -> bool:
    """Whether ``exc``'s traceback or the repr of anything in its chain still shows a secret.

    Some errors render text the scrub cannot reach (a pydantic ``ValidationError`` keeps its
    input internally): the caller then raises its own error ``from None``.
    """
    import traceback

    shown = "".join(traceback.format_exception(exc))
    for current in _chain(exc):
        with contextlib.suppress(Exception):
            shown += repr(current)
        for name in ("headers", "body", "raw_response"):
            with contextlib.suppress(Exception):
                shown += repr(getattr(current, name, None))
    return redact(shown, secrets) != shown


def _scrub_any(value: Any, secret: str) -> Any:
    if isinstance(value, str):
        return _scrub(value, secret)
    if isinstance(value, bytes):
        return redact_bytes(value, (secret,))
    return value


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during (each once)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _snippet(text: str | None, secret: str | None) -> str:
    if not text:
        return ""
    text = _scrub(" ".join(str(text).split()), secret)
    if len(text) > _BODY_SNIPPET:
        text = text[:_BODY_SNIPPET] + "…"
    return text


def _plural(n: int) -> str:
    return f"{n} attempt" + ("" if n == 1 else "s")


@dataclass(frozen=True)
class _Failure:
    """What a translation rule knows about one failed call."""

    exc: BaseException
    environment: str
    attempts: int
    retry_max_wait: float | None
    timeout: float | None
    timeout_setting: str
    key_source: str
    secret: str | None

    @property
    def env(self) -> str:
        return f"environment '{self.environment}'" if self.environment else "this environment"

    @property
    def body(self) -> str:
        return _snippet(getattr(self.exc, "body", None), self.secret)

    def common(self) -> dict[str, Any]:
        return {"attempts": self.attempts, "environment": self.environment}


def _malformed(f: _Failure) -> MistralEnvError:
    cause = f.exc.__cause__ if f.exc.__cause__ is not None else f.exc
    first_line = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return APIError(
        f"The Mistral API ({f.env}) answered HTTP 200 with a body that is not a valid "
        f"response ({_snippet(first_line, f.secret)}). Nothing was cached; check that "
        "server_url points at a Mistral-compatible API.",
        status_code=200,
        body=f.body,
        **f.common(),
    )


def _unauthorized(f: _Failure) -> MistralEnvError:
    where = f" (from {f.key_source})" if f.key_source else ""
    return APIError(
        f"The Mistral API rejected the API key for {f.env} (HTTP 401 Unauthorized). "
        f"Check the key configured for '{f.environment or '?'}'{where}; "
        "`mistral-nbenv check` shows where each key comes from.",
        status_code=401,
        body=f.body,
        **f.common(),
    )


def _seconds(value: float) -> str:
    """``10.5 s``; a wait with no end says so instead of ``inf s``."""
    return f"{value:g} s" if value != float("inf") else "without end"


def _rate_limited(f: _Failure) -> MistralEnvError:
    retry_after = retry_after_of(f.exc)
    cap = f.retry_max_wait
    if is_monthly_limit(f.exc):
        from mistral_nbenv.policies.spend import resets_at

        when = resets_at("monthly", time.time())
        msg = (
            f"The monthly limit of the API key used by environment {f.env} is reached "
            f"(HTTP 429), so the call was not retried: waiting minutes cannot help. It resets "
            f"at the start of next month ({when}, if the limit follows the calendar month). "
            "Raise the limit in the Mistral console (Workspace > Limits) or use another key."
        )
        return RateLimitError(msg, retry_after=None, limit="monthly", body=f.body, **f.common())
    if retry_after is not None and cap is not None and retry_after > cap:
        msg = (
            f"Rate limited by the Mistral API ({f.env}): the server asks to wait "
            f"{_seconds(retry_after)}, more than retry_max_wait={cap:g} s, "
            "so the call was not retried. Try again later or raise retry_max_wait."
        )
    else:
        detail = f": {f.body}" if f.body else ""
        msg = (
            f"Rate limited by the Mistral API ({f.env}) after {_plural(f.attempts)} (HTTP 429)"
            f"{detail}. Lower rate_limits in the settings or try again later."
        )
    return RateLimitError(msg, retry_after=retry_after, body=f.body, **f.common())


#: The hint added to an HTTP error, by status (the first row whose test holds).
_HTTP_HINTS: tuple[tuple[Callable[[int], bool], str], ...] = (
    (lambda status: status == 403, " The key for {env} is not allowed to do this."),
    (lambda status: status == 404, " Check the model name and server_url."),
    (lambda status: status >= 500, " The server failed; retries were exhausted."),
)


def _http_error(f: _Failure) -> MistralEnvError:
    status = status_of(f.exc)
    assert status is not None
    hint = next((text for test, text in _HTTP_HINTS if test(status)), "").format(env=f.env)
    detail = f": {f.body}" if f.body else ""
    return APIError(
        f"Mistral API error HTTP {status} ({f.env}) after {_plural(f.attempts)}{detail}.{hint}",
        status_code=status,
        body=f.body,
        **f.common(),
    )


def _timed_out(f: _Failure) -> MistralEnvError:
    limit = f" of {f.timeout:g} s" if f.timeout is not None else ""
    if f.timeout_setting == "stream_timeout":
        msg = (
            f"The stream from the Mistral API ({f.env}) did not end within "
            f"stream_timeout{limit}. Raise `stream_timeout` in the settings (0: no limit)."
        )
    else:
        msg = (
            f"The Mistral API ({f.env}) did not answer within the timeout{limit} "
            f"({_plural(f.attempts)}; the timeout is a deadline for each attempt, and for a "
            "stream the longest wait for its next event). Raise `timeout` in the settings "
            "or pass timeout_ms=."
        )
    return APITimeoutError(msg, **f.common())


def _unsendable(f: _Failure) -> MistralEnvError:
    return APIConnectionError(
        f"The request to the Mistral API ({f.env}) could not be sent from this machine "
        f"({type(f.exc).__name__}: {_snippet(str(f.exc), f.secret)}), so it was not retried. "
        "Check the API key (`mistral-nbenv check`), server_url and any http_headers= you "
        "passed.",
        **f.common(),
    )


def _unreachable(f: _Failure) -> MistralEnvError:
    return APIConnectionError(
        f"Could not reach the Mistral API ({f.env}) after {_plural(f.attempts)}: "
        f"{type(f.exc).__name__}: {_snippet(str(f.exc), f.secret)}. "
        "Check server_url and the network.",
        **f.common(),
    )


#: How an SDK/``httpx2`` failure becomes ours: the first rule whose test holds.
#: Order matters: a malformed 200 body is a ``MistralError`` with a status code too.
TRANSLATIONS: tuple[
    tuple[str, Callable[[BaseException], bool], Callable[[_Failure], MistralEnvError]], ...
] = (
    ("malformed 200 body", lambda e: is_malformed_body(e), _malformed),
    ("HTTP 401", lambda e: status_of(e) == 401, _unauthorized),
    ("HTTP 429", lambda e: status_of(e) == 429, _rate_limited),
    ("other HTTP status", lambda e: status_of(e) is not None, _http_error),
    ("timeout", lambda e: is_timeout(e), _timed_out),
    ("request that cannot be sent", lambda e: is_local(e), _unsendable),
    ("transport error", lambda e: is_transport(e), _unreachable),
)


def translate_error(
    exc: BaseException,
    *,
    environment: str = "",
    attempts: int | None = None,
    retry_max_wait: float | None = None,
    timeout: float | None = None,
    key_source: str = "",
    secret: str | None = None,
    timeout_setting: str = "timeout",
) -> BaseException:
    """Map an SDK/``httpx2`` exception to our tree (:data:`TRANSLATIONS`); others unchanged.

    ``secret`` (the API key) is masked in any server text quoted in the message and in
    ``exc`` itself (:func:`scrub_secret`); request headers are never quoted.  Raise the
    result ``from exc``.
    """
    if isinstance(exc, MistralEnvError):
        return exc
    scrub_secret(exc, secret)
    failure = _Failure(
        exc,
        environment,
        attempts if attempts is not None else int(exc.__dict__.get("__attempts__", 1)),
        retry_max_wait,
        timeout,
        timeout_setting,
        key_source,
        secret,
    )
    for _name, test, build in TRANSLATIONS:
        if test(exc):
            return build(failure)
    return exc
