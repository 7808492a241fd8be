"""Retry policy and error translation, with stand-in exceptions shaped like the SDK's."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import pytest

from mistral_nbenv.client.translate import translate_error
from mistral_nbenv.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    RateLimitError,
)
from mistral_nbenv.policies.retry import RetryPolicy, is_retryable, parse_retry_after


class MistralError(Exception):
    """Stand-in with the SDK's class name and attributes."""

    def __init__(self, status: int, headers: dict[str, str] | None = None, body: str = "") -> None:
        super().__init__(f"API error occurred: Status {status}")
        self.status_code = status
        self.headers = headers or {}
        self.body = body


class SDKError(MistralError):
    pass


class ResponseValidationError(MistralError):
    pass


def httpx2_error(name: str) -> Exception:
    import httpx2

    return getattr(httpx2, name)("boom")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), ("0.5", 0.5), ("-2", 0.0), ("", None), (None, None), ("soon", None)],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    now = time.time()
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (SDKError(500), True),
        (SDKError(503), True),
        (SDKError(408), True),
        (SDKError(429), True),
        (SDKError(429, {"retry-after": "5"}), True),
        (SDKError(429, {"retry-after": "500"}), False),  # above the cap: fail at once
        (SDKError(400), False),
        (SDKError(401), False),
        (SDKError(403), False),
        (SDKError(404), False),
        (SDKError(422), False),
        (ResponseValidationError(200), False),
        (ValueError("bad input"), False),
    ],
)
def test_is_retryable(exc: Exception, retryable: bool) -> None:
    assert is_retryable(exc, retry_max_wait=60) is retryable


@pytest.mark.parametrize("name", ["ReadTimeout", "ConnectError", "RemoteProtocolError"])
def test_transport_errors_are_retryable(name: str) -> None:
    assert is_retryable(httpx2_error(name))


def test_policy_waits_for_retry_after_then_backoff() -> None:
    slept: list[float] = []
    failures = iter([SDKError(429, {"retry-after": "2"}), SDKError(502)])

    def call() -> str:
        exc = next(failures, None)
        if exc is not None:
            raise exc
        return "ok"

    policy = RetryPolicy(max_retries=3, retry_max_wait=10, initial_wait=0.5, sleep=slept.append)
    assert policy.call(call) == ("ok", 3)
    assert slept[0] == 2.0
    assert 0.5 <= slept[1] <= 0.5 * 2 + 0.5  # exponential (attempt 2) plus jitter


def test_policy_caps_each_wait_and_counts_attempts() -> None:
    slept: list[float] = []

    def call() -> None:
        raise SDKError(503)

    policy = RetryPolicy(max_retries=4, retry_max_wait=1.0, initial_wait=5, sleep=slept.append)
    with pytest.raises(SDKError) as info:
        policy.call(call)
    assert len(slept) == 4
    assert max(slept) <= 1.0
    assert info.value.__dict__["__attempts__"] == 5


def test_async_policy_uses_async_sleep() -> None:
    slept: list[float] = []
    calls = iter([SDKError(500)])

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def call() -> str:
        exc = next(calls, None)
        if exc:
            raise exc
        return "ok"

    policy = RetryPolicy(max_retries=1, async_sleep=sleep)
    assert asyncio.run(policy.call_async(call)) == ("ok", 2)
    assert len(slept) == 1


@pytest.mark.parametrize(
    ("exc", "kind", "status"),
    [
        (SDKError(500), APIError, 500),
        (SDKError(429, {"retry-after": "7"}), RateLimitError, 429),
        (ResponseValidationError(200), APIError, 200),
        (SDKError(404), APIError, 404),
    ],
)
def test_translate_http_errors(exc: Exception, kind: type[APIError], status: int) -> None:
    mapped: Any = translate_error(exc, environment="staging", attempts=2, retry_max_wait=5)
    assert type(mapped) is kind
    assert mapped.status_code == status
    assert mapped.attempts == 2
    assert mapped.environment == "staging"
    assert "staging" in str(mapped)


def test_translate_rate_limit_above_cap() -> None:
    mapped: Any = translate_error(
        SDKError(429, {"retry-after": "90"}), environment="production", retry_max_wait=60
    )
    assert isinstance(mapped, RateLimitError)
    assert mapped.retry_after == 90
    assert "retry_max_wait=60" in str(mapped)


def test_translate_transport_errors() -> None:
    assert type(translate_error(httpx2_error("ReadTimeout"))) is APITimeoutError
    assert type(translate_error(httpx2_error("ConnectError"))) is APIConnectionError
    other = KeyError("x")
    assert translate_error(other) is other


def test_translate_401_names_environment_and_scrubs_key() -> None:
    key = "Zq3XFakeWv2LrT8sYb4NcF6hJd1GaE7u"
    exc = SDKError(401, body=f'{{"message": "Unauthorized key {key}"}}')
    mapped = translate_error(exc, environment="production", key_source=".secrets.toml", secret=key)
    text = str(mapped) + str(getattr(mapped, "body", ""))
    assert "production" in text
    assert ".secrets.toml" in text
    assert key not in text
    assert "…aE7u" in text


@pytest.mark.parametrize(("header", "shown"), [("10.5", "10.5 s"), ("90", "90 s")])
def test_cap_message_states_the_exact_wait(header: str, shown: str) -> None:
    mapped: Any = translate_error(
        SDKError(429, {"retry-after": header}), environment="staging", retry_max_wait=10
    )
    assert isinstance(mapped, RateLimitError)
    assert f"asks to wait {shown}, more than retry_max_wait=10 s" in str(mapped)


def test_every_translation_rule_is_reachable() -> None:
    """Each row of the table maps one kind of failure; the first matching row wins."""
    from mistral_nbenv.client.translate import TRANSLATIONS

    names = [name for name, _test, _build in TRANSLATIONS]
    assert names[0] == "malformed 200 body"  # before the status rows: it has status 200
    cases = {
        "HTTP 401": SDKError(401),
        "HTTP 429": SDKError(429),
        "other HTTP status": SDKError(503),
    }
    for name, exc in cases.items():
        first = next(n for n, test, _b in TRANSLATIONS if test(exc))
        assert first == name
