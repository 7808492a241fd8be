"""Retry policy (tenacity): what is retried, how long to wait, how failures are classified.

What is retried: HTTP 408, 429 and 5xx answers, timeouts and transport errors (the SDK
raises ``httpx2`` exceptions).  Never retried: every other 4xx (400/401/403/404/422) and a
200 whose body does not match the response model.  The wait between attempts is the
server's ``Retry-After`` (seconds or HTTP-date) when given, otherwise exponential backoff
with jitter; no single wait exceeds ``retry_max_wait``.  A ``Retry-After`` above that cap
is not waited for: the call fails at once with :class:`RateLimitError` carrying
``retry_after``.

A request this machine cannot send (an illegal header value, an invalid URL) fails the same
way every time and is never retried.  The SDK and ``httpx2`` are recognised by class name
and module, so importing this module imports neither.  Translating a failure into the
package's errors is :mod:`mistral_nbenv.client.translate`.
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

from mistral_nbenv.errors import MistralEnvError

__all__ = [
    "RETRYABLE_STATUS",
    "RetryPolicy",
    "is_local",
    "is_malformed_body",
    "is_monthly_limit",
    "is_retryable",
    "is_timeout",
    "is_transport",
    "is_unsent",
    "parse_retry_after",
    "retry_after_of",
    "status_of",
]

T = TypeVar("T")

#: HTTP statuses that are retried (plus every status >= 500).
RETRYABLE_STATUS = frozenset({408, 429})


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


def is_malformed_body(exc: BaseException) -> bool:
    return "ResponseValidationError" in _class_names(exc)


def is_timeout(exc: BaseException) -> bool:
    return _is_httpx_error(exc, "TimeoutException") or isinstance(exc, TimeoutError)


#: ``httpx2`` errors raised before anything is sent: the same request fails the same way.
_LOCAL_HTTPX = ("LocalProtocolError", "UnsupportedProtocol", "InvalidURL")


def is_local(exc: BaseException) -> bool:
    """A request this machine cannot send (an illegal header, a bad URL): never retried."""
    # UnicodeEncodeError: a header value httpx cannot encode (a response body that does not
    # decode is the server's doing, and is not this)
    return isinstance(exc, UnicodeEncodeError) or any(_is_httpx_error(exc, n) for n in _LOCAL_HTTPX)


def is_transport(exc: BaseException) -> bool:
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


#: The API's header for what remains of a key's monthly tokens.
MONTH_REMAINING = "x-ratelimit-remaining-tokens-month"


def is_monthly_limit(exc: BaseException) -> bool:
    """A 429 that says the monthly limit is reached (no tokens left this month, or a body
    that says so): waiting minutes cannot help, so it is never retried."""
    if status_of(exc) != 429:
        return False
    headers = getattr(exc, "headers", None)
    try:
        remaining = headers.get(MONTH_REMAINING) if headers is not None else None
        if remaining is not None and float(remaining) <= 0:
            return True
    except (TypeError, ValueError, AttributeError):
        pass
    body = getattr(exc, "body", None)
    text = body if isinstance(body, str) else str(getattr(exc, "message", "") or "")
    return "month" in text.lower()


def is_retryable(exc: BaseException, *, retry_max_wait: float = float("inf")) -> bool:
    """Whether ``exc`` is worth another attempt under this module's rules."""
    if isinstance(exc, MistralEnvError) or is_malformed_body(exc) or is_local(exc):
        return False
    status = status_of(exc)
    if status is not None:
        if status not in RETRYABLE_STATUS and status < 500:
            return False
        if is_monthly_limit(exc):
            return False
        retry_after = retry_after_of(exc)
        return retry_after is None or retry_after <= retry_max_wait
    return is_timeout(exc) or is_transport(exc)


#: ``httpx2`` errors raised before a byte of the request reached the server.
_UNSENT_HTTPX = ("ConnectError", "ConnectTimeout", "PoolTimeout")
#: Answers that say the server did nothing and when to come back (with ``Retry-After``).
_COME_BACK = frozenset({429, 503})


def is_unsent(exc: BaseException, *, retry_max_wait: float = float("inf")) -> bool:
    """Retryable even for a write: the request cannot have reached the server (a connect
    error), or the server answered 429/503 with a ``Retry-After`` within the cap."""
    if isinstance(exc, MistralEnvError) or is_local(exc):
        return False
    status = status_of(exc)
    if status is not None:
        retry_after = retry_after_of(exc)
        if is_monthly_limit(exc):
            return False
        return status in _COME_BACK and retry_after is not None and retry_after <= retry_max_wait
    return any(_is_httpx_error(exc, name) for name in _UNSENT_HTTPX)


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

    def _kwargs(self, mode: str = "always") -> dict[str, Any]:
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

        test = is_unsent if mode == "unsent" else is_retryable
        retries = 0 if mode == "never" else max(0, int(self.max_retries))
        return {
            "stop": tenacity.stop_after_attempt(retries + 1),
            "wait": wait,
            "retry": tenacity.retry_if_exception(lambda exc: test(exc, retry_max_wait=cap)),
            "reraise": True,
            "before_sleep": before_sleep,
        }

    def call(self, fn: Callable[[], T], *, mode: str = "always") -> tuple[T, int]:
        """Run ``fn`` under the policy; return its result and the number of attempts.

        ``mode``: ``"always"`` retries every retryable failure, ``"unsent"`` only those that
        cannot have reached the server (:func:`is_unsent`: a write), ``"never"`` none.
        On failure the original exception propagates with ``__attempts__`` set on it.
        """
        attempt_number = 0
        try:
            for attempt in tenacity.Retrying(sleep=self.sleep, **self._kwargs(mode)):
                attempt_number = attempt.retry_state.attempt_number
                with attempt:
                    return fn(), attempt_number
        except BaseException as exc:
            _remember_attempts(exc, attempt_number)
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def call_async(
        self, fn: Callable[[], Awaitable[T]], *, mode: str = "always"
    ) -> tuple[T, int]:
        """Async twin of :meth:`call`."""
        attempt_number = 0
        try:
            async for attempt in tenacity.AsyncRetrying(
                sleep=self.async_sleep, **self._kwargs(mode)
            ):
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
