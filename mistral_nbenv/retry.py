"""Retry policy (tenacity) and the translation of SDK/HTTP errors into our exception tree.

What is retried: HTTP 408, 429 and 5xx answers, timeouts and transport errors (the SDK
raises ``httpx2`` exceptions).  Never retried: every other 4xx (400/401/403/404/422) and a
200 whose body does not match the response model.  The wait between attempts is the
server's ``Retry-After`` (seconds or HTTP-date) when given, otherwise exponential backoff
with jitter; no single wait exceeds ``retry_max_wait``.  A ``Retry-After`` above that cap
is not waited for: the call fails at once with :class:`RateLimitError` carrying
``retry_after``.

The SDK and ``httpx2`` are recognised by class name and module, so importing this
module imports neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import tenacity

from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    MistralEnvError,
    RateLimitError,
)
from .secrets import redact

__all__ = [
    "RETRYABLE_STATUS",
    "RetryPolicy",
    "is_retryable",
    "parse_retry_after",
    "retry_after_of",
    "scrub_secret",
    "status_of",
    "translate_error",
]

T = TypeVar("T")

#: HTTP statuses that are retried (plus every status >= 500).
RETRYABLE_STATUS = frozenset({408, 429})

_BODY_SNIPPET = 300


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _is_httpx_error(exc: BaseException, name: str) -> bool:
    for cls in type(exc).__mro__:
        if cls.__name__ == name and cls.__module__.split(".")[0] in ("httpx2", "httpx"):
            return True
    return False


def _is_sdk_http_error(exc: BaseException) -> bool:
    """True for the SDK's ``MistralError`` family (an HTTP response was received)."""
    return "MistralError" in _class_names(exc) and isinstance(
        getattr(exc, "status_code", None), int
    )


def _is_malformed_body(exc: BaseException) -> bool:
    return "ResponseValidationError" in _class_names(exc)


def _is_timeout(exc: BaseException) -> bool:
    return _is_httpx_error(exc, "TimeoutException") or isinstance(exc, TimeoutError)


def _is_transport(exc: BaseException) -> bool:
    return _is_httpx_error(exc, "TransportError") or "NoResponseError" in _class_names(exc)


def status_of(exc: BaseException) -> int | None:
    """HTTP status of an SDK error, or None when no response was received."""
    if _is_sdk_http_error(exc):
        return int(exc.status_code)  # type: ignore[attr-defined]
    return None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def retry_after_of(exc: BaseException, *, now: float | None = None) -> float | None:
    """The ``Retry-After`` of an SDK HTTP error, in seconds, if the server sent one."""
    headers = getattr(exc, "headers", None)
    if headers is None or not _is_sdk_http_error(exc):
        return None
    try:
        raw = headers.get("retry-after")
    except Exception:
        return None
    return parse_retry_after(raw, now=now)


def is_retryable(exc: BaseException, *, retry_max_wait: float = float("inf")) -> bool:
    """Whether ``exc`` is worth another attempt under this module's rules."""
    if isinstance(exc, MistralEnvError) or _is_malformed_body(exc):
        return False
    status = status_of(exc)
    if status is not None:
        if status not in RETRYABLE_STATUS and status < 500:
            return False
        retry_after = retry_after_of(exc)
        return retry_after is None or retry_after <= retry_max_wait
    return _is_timeout(exc) or _is_transport(exc)


@dataclass
class _WaitRetryAfterOrBackoff(tenacity.wait.wait_base):
    """Wait for the server's ``Retry-After`` when present, else exponential backoff + jitter."""

    cap: float
    backoff: tenacity.wait.wait_base = field(repr=False)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if exc is not None:
            retry_after = retry_after_of(exc)
            if retry_after is not None:
                return min(retry_after, self.cap)
        return min(float(self.backoff(retry_state)), self.cap)


@dataclass
class RetryPolicy:
    """How often and how long to retry one call; ``sleep``/``async_sleep`` are injectable."""

    max_retries: int = 3
    retry_max_wait: float = 60.0
    initial_wait: float = 0.5
    jitter: float = 0.5
    sleep: Callable[[float], None] = time.sleep
    async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    on_retry: Callable[[int, BaseException, float], None] | None = None

    def _kwargs(self) -> dict[str, Any]:
        state = (self.max_retries, self.retry_max_wait, self.initial_wait, self.jitter)
        cached = self.__dict__.get("_kwargs_cache")
        if cached is not None and cached[0] == state:
            return dict(cached[1])
        kwargs = self._build_kwargs()
        self.__dict__["_kwargs_cache"] = (state, kwargs)
        return dict(kwargs)

    def _build_kwargs(self) -> dict[str, Any]:
        cap = max(0.0, float(self.retry_max_wait))
        wait = _WaitRetryAfterOrBackoff(
            cap=cap,
            # exponential backoff plus random jitter (as wait_exponential_jitter, any tenacity)
            backoff=tenacity.wait_exponential(multiplier=self.initial_wait, max=cap)
            + tenacity.wait_random(0, self.jitter),
        )

        def before_sleep(state: tenacity.RetryCallState) -> None:
            if self.on_retry is not None and state.outcome is not None:
                exc = state.outcome.exception()
                delay = state.next_action.sleep if state.next_action else 0.0
                if exc is not None:
                    self.on_retry(state.attempt_number, exc, delay)

        return {
            "stop": tenacity.stop_after_attempt(max(0, int(self.max_retries)) + 1),
            "wait": wait,
            "retry": tenacity.retry_if_exception(lambda exc: is_retryable(exc, retry_max_wait=cap)),
            "reraise": True,
            "before_sleep": before_sleep,
        }

    def call(self, fn: Callable[[], T]) -> tuple[T, int]:
        """Run ``fn`` under the policy; return its result and the number of attempts.

        On failure the original exception propagates with ``__attempts__`` set on it.
        """
        retrying = tenacity.Retrying(sleep=self.sleep, **self._kwargs())
        attempt_number = 0
        try:
            for attempt in retrying:
                attempt_number = attempt.retry_state.attempt_number
                with attempt:
                    return fn(), attempt_number
        except BaseException as exc:
            _remember_attempts(exc, attempt_number)
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def call_async(self, fn: Callable[[], Awaitable[T]]) -> tuple[T, int]:
        """Async twin of :meth:`call`."""
        retrying = tenacity.AsyncRetrying(sleep=self.async_sleep, **self._kwargs())
        attempt_number = 0
        try:
            async for attempt in retrying:
                attempt_number = attempt.retry_state.attempt_number
                with attempt:
                    return await fn(), attempt_number
        except BaseException as exc:
            _remember_attempts(exc, attempt_number)
            raise
        raise AssertionError("unreachable")  # pragma: no cover


def _remember_attempts(exc: BaseException, attempts: int) -> None:
    with contextlib.suppress(AttributeError, TypeError):  # exceptions without __dict__
        exc.__dict__["__attempts__"] = max(1, attempts)


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
    with contextlib.suppress(AttributeError, TypeError):
        for name in ("message", "body"):
            value = getattr(exc, name, None)
            if isinstance(value, str) and secret in value:
                object.__setattr__(exc, name, _scrub(value, secret))  # the SDK's are frozen
        exc.args = tuple(_scrub(a, secret) if isinstance(a, str) else a for a in exc.args)


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
    ("malformed 200 body", lambda e: _is_malformed_body(e), _malformed),
    ("HTTP 401", lambda e: status_of(e) == 401, _unauthorized),
    ("HTTP 429", lambda e: status_of(e) == 429, _rate_limited),
    ("other HTTP status", lambda e: status_of(e) is not None, _http_error),
    ("timeout", lambda e: _is_timeout(e), _timed_out),
    ("transport error", lambda e: _is_transport(e), _unreachable),
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
