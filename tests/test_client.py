"""The client wrapper against the loopback Mistral server, with the real SDK over HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import httpx2
import pytest

from mistral_nbenv.client import Client
from mistral_nbenv.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    CacheMissError,
    RateLimitError,
)
from mistral_nbenv.testing import Fault, MistralTestServer
from tests._client_support import KEY, OTHER_KEY, make_settings, resolved

CHAT = "/v1/chat/completions"
ROOT = Path(__file__).resolve().parent.parent


def last(server: MistralTestServer) -> Any:
    request = server.last_request
    assert request is not None
    return request


def hello(text: str = "hello there") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def server() -> Any:
    with MistralTestServer(expected_api_key=KEY) as srv:
        yield srv


@pytest.fixture
def make(tmp_path: Path, server: MistralTestServer) -> Any:
    """Build a client for the loopback server; cache under tmp_path; closed at the end."""
    made: list[Client] = []

    def factory(env: str = "staging", key: str = KEY, **overrides: Any) -> Client:
        settings = make_settings(tmp_path / "cache", server.url, environment=env, **overrides)
        client = Client(settings, resolved(env, key))
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()


# ----------------------------------------------------------------------------- success paths


def text_of(events: list[Any]) -> str:
    return "".join(e.data.choices[0].delta.content or "" for e in events)


def test_every_method_sync(make: Any, server: MistralTestServer) -> None:
    client = make()
    answer = client.chat.complete(messages=hello())
    assert type(answer).__name__ == "ChatCompletionResponse"
    assert answer.choices[0].message.content == "Echo: hello there"
    assert last(server).body["model"] == "mistral-small-latest"  # default from settings
    assert last(server).api_key == KEY

    events = list(client.chat.stream(messages=hello("stream me")))
    assert type(events[0]).__name__ == "CompletionEvent"
    assert text_of(events) == "Echo: stream me"

    emb = client.embeddings.create(inputs=["a", "b"])
    assert len(emb.data) == 2
    assert last(server).body["model"] == "mistral-embed"

    fim = client.fim.complete(prompt="def f(", suffix="):")
    assert fim.choices[0].message.content.startswith("Echo: def f(")
    assert last(server).body["model"] == "codestral-latest"

    fim_events = list(client.fim.stream(prompt="x = "))
    assert type(fim_events[0]).__name__ == "CompletionEvent"
    assert text_of(fim_events) == "Echo: x = "
    assert last(server).body["model"] == "codestral-latest"
    assert last(server).body["stream"] is True

    assert "mistral-embed" in [m.id for m in client.models.list().data]
    assert client.stats.misses == 6
    assert client.stats.hits == 0
    assert client.stats.total_tokens > 0


def test_every_method_async(make: Any) -> None:
    client = make()

    async def run() -> tuple[Any, ...]:
        chat = await client.chat.complete_async(messages=hello("async"))
        stream = await client.chat.stream_async(messages=hello("async stream"))
        events = [e async for e in stream]
        emb = await client.embeddings.create_async(inputs="x")
        fim = await client.fim.complete_async(prompt="x = ")
        fim_stream = await client.fim.stream_async(prompt="y = ")
        fim_events = [e async for e in fim_stream]
        models = await client.models.list_async()
        return chat, events, emb, fim, fim_events, models

    chat, events, emb, fim, fim_events, models = asyncio.run(run())
    assert text_of(fim_events) == "Echo: y = "
    assert chat.choices[0].message.content == "Echo: async"
    assert text_of(events) == "Echo: async stream"
    assert len(emb.data) == 1
    assert fim.choices[0].message.content == "Echo: x = "
    assert models.data


def test_two_asyncio_runs_and_a_thread_loop(make: Any) -> None:
    client = make(cache={"enabled": False})

    async def ask(text: str) -> str:
        answer = await client.chat.complete_async(messages=hello(text))
        return answer.choices[0].message.content

    assert asyncio.run(ask("one")) == "Echo: one"
    assert asyncio.run(ask("two")) == "Echo: two"  # the SDK alone fails here: loop closed
    out: list[str] = []
    thread = threading.Thread(target=lambda: out.append(asyncio.run(ask("three"))))
    thread.start()
    thread.join()
    assert out == ["Echo: three"]


def test_model_defaults_follow_new_model_flag(make: Any, server: MistralTestServer) -> None:
    client = make(features={"use_new_model": True})
    client.chat.complete(messages=hello())
    assert last(server).body["model"] == "mistral-medium-latest"
    client.chat.complete(model="mistral-large-latest", messages=hello())
    assert last(server).body["model"] == "mistral-large-latest"


def test_repr_and_raw(make: Any) -> None:
    client = make()
    text = repr(client)
    assert "staging" in text
    assert KEY[-4:] in text
    assert KEY not in text
    assert type(client.raw).__name__ == "Mistral"
    assert client.raw.sdk_configuration.retry_config is not None  # UNSET: SDK retries off
    assert type(client.raw.sdk_configuration.retry_config).__name__ == "Unset"
    assert client.raw.sdk_configuration.timeout_ms == 10_000


def test_sdk_retries_cannot_be_switched_on_per_call(make: Any) -> None:
    with pytest.raises(TypeError, match="retries"):
        make().chat.complete(messages=hello(), retries=object())


def test_close_then_reopen_lazily(make: Any, server: MistralTestServer) -> None:
    client = make(cache={"enabled": False})
    client.chat.complete(messages=hello())
    first = client.raw
    client.close()
    assert client.chat.complete(messages=hello()).choices
    assert client.raw is not first
    assert client.environment == "staging"


def _budget_requests(client: Client) -> float:
    """The requests counted in the client's shared window (as another process reads it)."""
    from mistral_nbenv.store.layout import budget_dir
    from mistral_nbenv.store.local import DiskStore

    state = DiskStore(budget_dir(client.settings, KEY)).update("bucket", lambda raw: (None, raw))
    assert state is not None
    return float(sum(entry[1] for entry in json.loads(state)["w"]))


def _loop_http(client: Client) -> Any:
    """The client's HTTP client for the running event loop."""
    return client._transport._async_raw[asyncio.get_running_loop()].sdk_configuration.async_client


def test_a_returned_call_has_written_everything_and_async_with_closes_the_connections(
    make: Any, server: MistralTestServer, tmp_path: Path
) -> None:
    from mistral_nbenv.store.layout import open_stores

    client = make(rate_limits={"requests_per_minute": 12_000})

    async def use() -> tuple[Any, Any, int, float, float]:
        async with client as entered:
            assert entered is client
            answer = await client.chat.complete_async(messages=hello("async with"))
            http = _loop_http(client)
            assert http._transport._pool.connections  # a keep-alive connection to release
            # before any close: the answer, the budget and the usage are on disk
            totals = open_stores(client.settings).ledger.totals()
            requests = sum(t.get("requests", 0.0) for t in totals.values())
            stored = len(_stored_values(tmp_path))
            budget = await asyncio.to_thread(_budget_requests, client)
        # closed when the block ends, not by a task left to run later
        assert not http._transport._pool.connections, "the loop's connections were left open"
        return answer, http, stored, budget, requests

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        answer, http, stored, budget, requests = asyncio.run(use())
    assert answer.choices[0].message.content == "Echo: async with"
    assert http.is_closed
    assert (stored, budget, requests) == (1, 1.0, 1.0)

    async def reopen() -> Any:  # the client reopens lazily, in async code as in sync code
        async with client:
            return await client.chat.complete_async(messages=hello("reopened"))

    again = asyncio.run(reopen())
    assert again.choices[0].message.content == "Echo: reopened"
    assert server.count(CHAT) == 2


# ----------------------------------------------------------------------------- retries


def test_429_retry_after_twice_then_success(make: Any, server: MistralTestServer) -> None:
    server.fail_next(2, Fault.rate_limit(retry_after=1))
    client = make(cache={"enabled": False})
    started = time.monotonic()
    answer = client.chat.complete(messages=hello())
    assert time.monotonic() - started >= 2.0
    assert answer.choices[0].message.content == "Echo: hello there"
    assert server.count(CHAT) == 3
    assert client.stats.retries == 2


def test_retry_after_http_date_is_honoured(make: Any, server: MistralTestServer) -> None:
    server.enqueue(Fault.rate_limit(retry_after=1, http_date=True))
    client = make(cache={"enabled": False})
    started = time.monotonic()
    client.chat.complete(messages=hello())
    assert server.count(CHAT) == 2
    # the date is rounded up to a whole second at least 1 s ahead: waited ~1-2 s
    assert 0.9 <= time.monotonic() - started < 3
    assert client.stats.retries == 1


def test_retry_after_above_cap_fails_at_once(make: Any, server: MistralTestServer) -> None:
    server.enqueue(Fault.rate_limit(retry_after=120))
    client = make(cache={"enabled": False}, retry_max_wait=5)
    started = time.monotonic()
    with pytest.raises(RateLimitError) as info:
        client.chat.complete(messages=hello())
    assert time.monotonic() - started < 1
    assert info.value.retry_after == pytest.approx(120)
    assert info.value.status_code == 429
    assert info.value.attempts == 1
    assert "retry_max_wait" in str(info.value)
    assert server.count(CHAT) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_transient_status_then_success(make: Any, server: MistralTestServer, status: int) -> None:
    server.enqueue(Fault.status(status))
    client = make(cache={"enabled": False})
    client._policy.sleep = lambda s: None  # no real backoff wait
    assert client.chat.complete(messages=hello()).choices
    assert server.count(CHAT) == 2


def test_exhausted_retries_report_attempts(make: Any, server: MistralTestServer) -> None:
    server.fail_next(4, Fault.status(503))
    client = make(cache={"enabled": False}, max_retries=3)
    client._policy.sleep = lambda s: None
    with pytest.raises(APIError) as info:
        client.chat.complete(messages=hello())
    assert info.value.status_code == 503
    assert info.value.attempts == 4
    assert "4 attempts" in str(info.value)
    assert server.count(CHAT) == 4
    assert type(info.value.__cause__).__name__ == "SDKError"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(make: Any, server: MistralTestServer, status: int) -> None:
    server.enqueue(Fault.status(status))
    client = make(cache={"enabled": False})
    with pytest.raises(APIError) as info:
        client.chat.complete(messages=hello())
    assert info.value.status_code == status
    assert info.value.attempts == 1
    assert server.count(CHAT) == 1
    assert KEY not in str(info.value)


def test_401_names_environment_and_key_source(make: Any, server: MistralTestServer) -> None:
    client = make(env="production", key=OTHER_KEY)  # the server expects KEY: real 401
    with pytest.raises(APIError) as info:
        client.chat.complete(messages=hello())
    message = str(info.value)
    assert info.value.status_code == 401
    assert "production" in message
    assert "MISTRAL_API_KEY_STAGING (test)" in message
    assert OTHER_KEY not in message
    assert OTHER_KEY not in repr(info.value.__cause__)
    assert server.count(CHAT) == 1


def test_a_key_echoed_by_the_server_never_reaches_a_traceback_or_log(
    make: Any, server: MistralTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    echo = {"message": f"Invalid API key: {KEY}"}
    server.enqueue(Fault.status(503, body=echo), Fault.status(401, body=echo))
    client = make(cache={"enabled": False})
    client._policy.sleep = lambda s: None
    with caplog.at_level("DEBUG"), pytest.raises(APIError) as info:
        client.chat.complete(messages=hello())
    shown = "".join(traceback.format_exception(info.value))
    assert info.value.status_code == 401
    assert f"…{KEY[-4:]}" in shown  # the server's text is kept, masked
    assert KEY not in shown
    assert KEY not in repr(info.value.__cause__)
    assert KEY not in caplog.text
    assert server.count(CHAT) == 2


def test_timeout_is_retried_then_reported(make: Any, server: MistralTestServer) -> None:
    server.fail_next(3, Fault.slow(1.0))
    client = make(cache={"enabled": False}, timeout=0.2, max_retries=2)
    client._policy.sleep = lambda s: None
    with pytest.raises(APITimeoutError) as info:
        client.chat.complete(messages=hello())
    assert info.value.attempts == 3
    assert "0.2 s" in str(info.value)
    assert server.count(CHAT) == 3


def test_timeout_reaches_streaming(make: Any, server: MistralTestServer) -> None:
    server.fail_next(2, Fault.slow(1.0))
    client = make(cache={"enabled": False}, timeout=0.2, max_retries=1)
    client._policy.sleep = lambda s: None
    with pytest.raises(APITimeoutError) as info:
        list(client.chat.stream(messages=hello()))
    assert info.value.attempts == 2
    assert server.count(CHAT) == 2
    assert client._concurrency.in_flight == 0


def test_dropped_connection_is_retried(make: Any, server: MistralTestServer) -> None:
    server.enqueue(Fault.drop())
    client = make(cache={"enabled": False})
    client._policy.sleep = lambda s: None
    assert client.chat.complete(messages=hello()).choices
    assert server.count(CHAT) == 2


def test_dropped_connection_exhausted(make: Any, server: MistralTestServer) -> None:
    server.fail_next(2, Fault.drop())
    client = make(cache={"enabled": False}, max_retries=1)
    client._policy.sleep = lambda s: None
    with pytest.raises(APIConnectionError) as info:
        client.chat.complete(messages=hello())
    assert not isinstance(info.value, APITimeoutError)
    assert info.value.attempts == 2


def test_stream_retried_before_first_chunk_only(make: Any, server: MistralTestServer) -> None:
    client = make()
    client._policy.sleep = lambda s: None
    server.enqueue(Fault.status(503))
    assert text_of(list(client.chat.stream(messages=hello("a b")))) == "Echo: a b"
    assert server.count(CHAT) == 2
    server.clear()
    server.enqueue(Fault.drop_mid_stream(after_chunks=2))
    stream = client.chat.stream(messages=hello("one two three four"))
    with pytest.raises(APIConnectionError):
        list(stream)
    assert server.count(CHAT) == 1  # not retried after the first chunk
    # ... and not cached: the next call goes to the server again
    assert text_of(list(client.chat.stream(messages=hello("one two three four"))))
    assert server.count(CHAT) == 2


def test_malformed_body_is_clear_and_not_cached(make: Any, server: MistralTestServer) -> None:
    server.enqueue(Fault.malformed())
    client = make()
    with pytest.raises(APIError) as info:
        client.chat.complete(messages=hello())
    assert info.value.status_code == 200
    assert info.value.attempts == 1
    assert "not a valid response" in str(info.value)
    assert type(info.value.__cause__).__name__ == "ResponseValidationError"
    assert server.count(CHAT) == 1
    assert client.chat.complete(messages=hello()).choices  # not cached: asks again
    assert server.count(CHAT) == 2


# ----------------------------------------------------------------------------- cache


def test_a_request_the_key_cannot_encode_goes_to_the_sdk_uncached(
    make: Any, server: MistralTestServer
) -> None:
    client = make()
    odd = {(1, 2): "x"}  # a key json cannot write: the request has no cache key
    for _ in range(2):
        assert client.chat.complete(messages=hello(), metadata=odd).choices
    assert len(server.requests) == 2  # asked both times: nothing was cached
    cycle: list[Any] = [{"role": "user", "content": "hi"}]
    cycle.append(cycle)
    with pytest.raises(RecursionError) as caught:  # the SDK's own verdict on such input...
        client.chat.complete(messages=cycle)
    frames = [frame.filename for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert any("/mistralai/" in name for name in frames)  # ...reached, not the cache key's
    assert not any(name.endswith("mistral_nbenv/cache.py") for name in frames)
    assert len(server.requests) == 2


def test_cache_hit_makes_no_request(make: Any, server: MistralTestServer) -> None:
    client = make()
    first = client.chat.complete(messages=hello(), temperature=0.2)
    second = client.chat.complete(messages=hello(), temperature=0.2)
    assert second == first
    assert type(second) is type(first)
    assert server.count(CHAT) == 1
    assert (client.stats.hits, client.stats.misses) == (1, 1)
    client.chat.complete(messages=hello(), temperature=0.3)  # another parameter: miss
    assert server.count(CHAT) == 2


def test_a_long_document_is_found_again_and_one_character_changes_it(
    make: Any, server: MistralTestServer
) -> None:
    """Its key hashes the document on its own (not escaped as JSON first): still exact."""
    client = make()
    document = "Section {}: revenue, costs and outlook.\n"
    document = "".join(document.format(i) for i in range(2000))  # ~80 KB

    def ask(text: str) -> Any:
        return client.chat.complete(
            messages=[{"role": "system", "content": text}, {"role": "user", "content": "sum up"}]
        )

    first = ask(document)
    assert ask(document) == first
    assert (server.count(CHAT), client.stats.hits) == (1, 1)
    ask(document.replace("Section 1999", "Section 1998"))  # one character, near the end
    ask(document + " ")
    assert (server.count(CHAT), client.stats.hits) == (3, 1)


def test_dicts_and_sdk_objects_share_a_key(make: Any, server: MistralTestServer) -> None:
    from mistralai.client import models

    client = make()
    client.chat.complete(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
        ],
        max_tokens=None,
    )
    client.chat.complete(
        messages=[
            models.SystemMessage(content="be brief"),
            models.UserMessage(content="hi"),
            models.AssistantMessage(content="hello"),
            models.UserMessage(content="again"),
        ]
    )
    assert server.count(CHAT) == 1
    assert client.stats.hits == 1


def test_environments_get_separate_entries(tmp_path: Path, server: MistralTestServer) -> None:
    root = tmp_path / "cache"
    staging = Client(make_settings(root, server.url), resolved())
    dev = Client(make_settings(root, server.url, environment="development"), resolved())
    staging.chat.complete(messages=hello())
    dev.chat.complete(messages=hello())
    assert server.count(CHAT) == 2
    assert (root / "staging").is_dir()
    assert (root / "development").is_dir()
    assert staging._cache.key("x", {}) != dev._cache.key("x", {})
    staging.close()
    dev.close()


def test_server_url_namespaces_the_key(tmp_path: Path, server: MistralTestServer) -> None:
    a = Client(make_settings(tmp_path, server.url), resolved())
    b = Client(make_settings(tmp_path, server.url + "/"), resolved())
    assert a._cache.key("chat.complete", {"m": 1}) != b._cache.key("chat.complete", {"m": 1})


@pytest.mark.parametrize(
    ("enabled", "option", "requests", "hits"),
    [
        (True, None, 1, 1),
        (True, False, 2, 0),
        (False, None, 2, 0),
        (False, True, 1, 1),
    ],
)
def test_cache_option_wins_over_setting(
    make: Any, server: MistralTestServer, enabled: bool, option: Any, requests: int, hits: int
) -> None:
    client = make(cache={"enabled": enabled})
    for _ in range(2):
        client.chat.complete(messages=hello(), cache=option)
    assert server.count(CHAT) == requests
    assert client.stats.hits == hits


def test_cache_refresh_asks_again_and_stores(make: Any, server: MistralTestServer) -> None:
    answers = iter(["first", "second"])
    server.responder = lambda request: next(answers)
    client = make()
    assert client.chat.complete(messages=hello()).choices[0].message.content == "first"
    fresh = client.chat.complete(messages=hello(), cache="refresh")
    assert fresh.choices[0].message.content == "second"
    assert client.chat.complete(messages=hello()).choices[0].message.content == "second"
    assert server.count(CHAT) == 2
    with pytest.raises(ValueError, match="cache="):
        client.chat.complete(messages=hello(), cache="sometimes")


def test_ttl_expiry(make: Any, server: MistralTestServer) -> None:
    client = make(cache={"ttl_seconds": 0.5})
    client.chat.complete(messages=hello())
    client.chat.complete(messages=hello())
    assert server.count(CHAT) == 1
    time.sleep(0.6)
    client.chat.complete(messages=hello())
    assert server.count(CHAT) == 2


def test_offline_serves_cache_only(make: Any, server: MistralTestServer) -> None:
    make().chat.complete(messages=hello())
    offline = make(offline=True, cache={"enabled": False})
    assert offline.chat.complete(messages=hello()).choices[0].message.content
    with pytest.raises(CacheMissError, match="MISTRAL_NBENV_OFFLINE"):
        offline.chat.complete(messages=hello("never asked"))
    with pytest.raises(CacheMissError):
        offline.chat.stream(messages=hello("never streamed"))
    assert server.count(CHAT) == 1


def test_stream_record_and_replay(make: Any, server: MistralTestServer) -> None:
    client = make()
    live = list(client.chat.stream(messages=hello("to be replayed")))
    replay_stream = client.chat.stream(messages=hello("to be replayed"))
    replay = list(replay_stream)
    assert replay_stream.replayed
    assert server.count(CHAT) == 1
    assert replay == live
    assert [type(e) for e in replay] == [type(e) for e in live]
    assert text_of(replay) == "Echo: to be replayed"

    async def replay_async() -> list[Any]:
        return [e async for e in await client.chat.stream_async(messages=hello("to be replayed"))]

    assert asyncio.run(replay_async()) == live


def test_partial_stream_is_not_cached(make: Any, server: MistralTestServer) -> None:
    client = make()
    with client.chat.stream(messages=hello("a b c d e")) as stream:
        next(stream)
    list(client.chat.stream(messages=hello("a b c d e")))
    assert server.count(CHAT) == 2
    assert client._concurrency.in_flight == 0


def test_abandoned_async_stream_gives_its_slot_back(make: Any, server: MistralTestServer) -> None:
    import gc

    client = make(features={"max_concurrent_requests": 1})

    async def read_one_then_drop() -> None:
        stream = await client.chat.stream_async(messages=hello("a b c d"))
        await stream.__anext__()
        assert client._concurrency.in_flight == 1

    asyncio.run(read_one_then_drop())
    gc.collect()
    assert client._concurrency.in_flight == 0
    # with the only slot back, the next call goes through (it would block forever otherwise)
    assert client.chat.complete(messages=hello()).choices
    assert server.count(CHAT) == 2


def test_cache_files_are_private_and_hold_no_key(make: Any, tmp_path: Path) -> None:
    client = make()
    client.chat.complete(messages=hello("secret-free"))
    list(client.chat.stream(messages=hello("streamed")))
    client.embeddings.create(inputs=["x"])
    client.close()
    root = tmp_path / "cache"
    directory = root / "staging"
    assert directory.stat().st_mode & 0o777 == 0o700
    for path in directory.rglob("*"):
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), path
        if path.is_file():
            data = path.read_bytes()
            assert KEY.encode() not in data, path
            assert KEY[:16].encode() not in data, path


def _stored_values(tmp_path: Path) -> list[str]:
    db = sqlite3.connect(tmp_path / "cache" / "staging" / "cache.db")
    rows = db.execute("SELECT value FROM Cache").fetchall()
    db.close()
    return [row[0] for row in rows]


@pytest.mark.parametrize("use_async", [False, True])
def test_responses_are_stored_as_received(
    make: Any, server: MistralTestServer, tmp_path: Path, use_async: bool
) -> None:
    server.enqueue(Fault.status(503))  # the failed attempt's body must not be the one stored
    client = make()

    async def run() -> list[Any]:
        return [
            await client.chat.complete_async(messages=hello("as received")),
            await client.embeddings.create_async(inputs=["a", "b"]),
            await client.fim.complete_async(prompt="def f():"),
        ]

    if use_async:
        answers = asyncio.run(run())
    else:
        answers = [
            client.chat.complete(messages=hello("as received")),
            client.embeddings.create(inputs=["a", "b"]),
            client.fim.complete(prompt="def f():"),
        ]
    client.close()  # entries are written behind the calls; closing writes them now
    stored = _stored_values(tmp_path)
    assert len(stored) == 3
    for answer in answers:
        dumped = answer.model_dump_json(by_alias=True)
        # the server's own JSON text (its spacing), not a re-dump of the SDK model...
        text = next(v for v in stored if json.loads(v).get("id") == answer.id)
        assert text != dumped
        assert json.loads(text)["object"] == json.loads(dumped)["object"]
        # ...that rebuilds the very same response
        assert type(answer).model_validate_json(text) == answer
    assert client.stats.retries == 1
    repeated = client.chat.complete(messages=hello("as received"))
    assert repeated == answers[0]
    assert client.stats.hits == 1


def test_stored_body_falls_back_to_the_model_dump() -> None:
    from mistralai.client.models import ChatCompletionResponse

    from mistral_nbenv.client import response_json

    answer = ChatCompletionResponse.model_validate_json(
        '{"id": "x", "object": "chat.completion", "model": "m", "created": 1, "usage": {},'
        ' "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},'
        ' "finish_reason": "stop"}]}'
    )
    dumped = answer.model_dump_json(by_alias=True)
    assert response_json(answer, []) == dumped
    body = '{"id": "x", "as": "received"}'
    assert response_json(answer, [httpx2.Response(200, text=body)]) == body
    assert response_json(answer, [httpx2.Response(201, text=body)]) == dumped

    class Undecodable(httpx2.Response):
        @property
        def text(self) -> str:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    assert response_json(answer, [Undecodable(200, content=b"\xff")]) == dumped


def test_values_are_json_not_pickle(make: Any, tmp_path: Path) -> None:
    client = make()
    client.chat.complete(messages=hello())
    client.close()
    db = sqlite3.connect(tmp_path / "cache" / "staging" / "cache.db")
    rows = db.execute("SELECT mode, value FROM Cache").fetchall()
    db.close()
    assert rows
    assert all(mode == 1 for mode, _ in rows)
    assert json.loads(rows[0][1])["choices"][0]["message"]["content"] == "Echo: hello there"


def test_unwritable_cache_degrades_with_one_warning(
    make: Any, server: MistralTestServer, tmp_path: Path
) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")
    client = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answers = [client.chat.complete(messages=hello()) for _ in range(3)]
    assert all(a.choices for a in answers)
    assert len([w for w in caught if "unavailable" in str(w.message)]) == 1
    assert server.count(CHAT) == 3


def test_corrupt_cache_degrades(make: Any, server: MistralTestServer, tmp_path: Path) -> None:
    directory = tmp_path / "cache" / "staging"
    directory.mkdir(parents=True)
    (directory / "cache.db").write_bytes(b"this is not sqlite" * 100)
    client = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answers = [client.chat.complete(messages=hello()) for _ in range(2)]
    assert all(a.choices for a in answers)
    assert len([w for w in caught if "unavailable" in str(w.message)]) == 1
    assert server.count(CHAT) == 2


def test_two_processes_share_one_cache_dir(server: MistralTestServer, tmp_path: Path) -> None:
    start = time.time() + 3.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests._client_worker", "cache", server.url,
             str(tmp_path / "cache"), str(start), "0", str(offset)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for offset in (0, 1000)
    ]  # fmt: skip
    results = [p.communicate(timeout=60) for p in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert json.loads(out)["done"] == 120
    db = sqlite3.connect(tmp_path / "cache" / "staging" / "cache.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM Cache").fetchone()[0] == 100
    db.close()
    # 100 distinct prompts; each asked at most twice (both workers missing at once)
    assert 100 <= server.count(CHAT) - 2 <= 120


# ----------------------------------------------------------------------------- limits


def test_rate_limit_shared_by_two_processes(server: MistralTestServer, tmp_path: Path) -> None:
    rpm, window = 20, 2.5  # 20 at once, then none for a minute
    start = time.time() + 3.0
    end = start + window
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests._client_worker", "rate", server.url,
             str(tmp_path / "cache"), str(start), str(end), str(rpm)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for _ in range(2)
    ]  # fmt: skip
    for proc in procs:
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    # the window is shared: 20 requests in all, warm-ups included (unshared: 40), and the
    # workers waiting for the next were still waiting when they stopped
    assert server.count(CHAT) == rpm


def test_concurrency_cap_threads(make: Any, server: MistralTestServer) -> None:
    server.latency = 0.1
    client = make(cache={"enabled": False}, features={"max_concurrent_requests": 3})
    threads = [
        threading.Thread(target=client.chat.complete, kwargs={"messages": hello(str(i))})
        for i in range(9)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert server.count(CHAT) == 9
    assert server.max_in_flight == 3


def test_concurrency_cap_asyncio(make: Any, server: MistralTestServer) -> None:
    server.latency = 0.1
    client = make(cache={"enabled": False}, features={"max_concurrent_requests": 4})

    async def run() -> None:
        await asyncio.gather(
            *(client.chat.complete_async(messages=hello(str(i))) for i in range(12))
        )

    asyncio.run(run())
    assert server.count(CHAT) == 12
    assert server.max_in_flight == 4


def test_rate_limit_wait_is_counted(make: Any, server: MistralTestServer) -> None:
    client = make(cache={"enabled": False}, rate_limits={"requests_per_minute": 10})
    for i in range(10):  # ten a minute: ten at once
        client.chat.complete(messages=hello(str(i)))
    assert client.stats.rate_limit_waits == 0
    slow = make(
        env="development", cache={"enabled": False}, rate_limits={"requests_per_minute": 600}
    )
    slow.chat.complete(messages=hello("before"))
    slow._limiter.pause(0.5)  # as a 429's Retry-After does
    slow.chat.complete(messages=hello("after"))
    assert slow.stats.rate_limit_waits == 1
    assert slow.stats.rate_limit_wait_seconds >= 0.4


def test_an_async_call_waits_for_another_processs_budget_without_stopping_other_tasks(
    make: Any, server: MistralTestServer
) -> None:
    from mistral_nbenv.store.layout import budget_dir
    from tests.test_ratelimit import _hold_budget, _release

    client = make(cache={"enabled": False}, rate_limits={"requests_per_minute": 600})
    client.chat.complete(messages=hello("opens the shared budget"))
    holder = _hold_budget(budget_dir(client.settings, KEY))  # another kernel, mid-update

    async def run() -> tuple[int, int, str]:
        call = asyncio.ensure_future(client.chat.complete_async(messages=hello("waits")))
        ticks = 0
        while ticks < 20 and not call.done():  # the loop's other tasks: 0.2 s of ticks
            await asyncio.sleep(0.01)
            ticks += 1
        sent_meanwhile = server.count(CHAT)
        _release(holder)
        answer = await asyncio.wait_for(call, timeout=30)
        return ticks, sent_meanwhile, answer.choices[0].message.content

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fall back to an in-memory budget
        ticks, sent_meanwhile, content = asyncio.run(run())
    assert ticks == 20, "the event loop stopped while another process held the budget"
    assert sent_meanwhile == 1, "the call went out before it was admitted"
    assert content == "Echo: waits"
    assert server.count(CHAT) == 2


def test_an_async_call_whose_usage_file_is_busy_counts_its_failure_once_without_blocking(
    make: Any, server: MistralTestServer
) -> None:
    """The failure's ledger write waits in a worker thread while another process holds the
    usage file; the loop keeps running and the failure is counted once, in both places."""
    from mistral_nbenv.store.layout import cache_dir, open_stores
    from tests.test_ratelimit import _hold_budget, _release, _ticking_until

    client = make(cache={"enabled": False})
    client.chat.complete(messages=hello("opens the usage ledger"))
    holder = _hold_budget(cache_dir(client.settings) / "usage")  # another kernel, mid-write
    server.enqueue(Fault.status(400))

    async def run() -> tuple[int, bool, BaseException | None]:
        call = asyncio.ensure_future(client.chat.complete_async(messages=hello("refused")))
        ticks = await _ticking_until(call, 20)
        waiting = not call.done()
        _release(holder)
        try:
            await asyncio.wait_for(call, timeout=30)
        except Exception as exc:
            return ticks, waiting, exc
        return ticks, waiting, None

    ticks, waiting, error = asyncio.run(run())
    assert isinstance(error, APIError)
    assert error.status_code == 400
    assert ticks == 20, "the event loop stopped while the usage file was held"
    assert waiting, "the failure's usage was written while another process held the file"
    assert client.stats.errors == 1
    totals = open_stores(client.settings).ledger.totals()
    assert sum(t.get("errors", 0.0) for t in totals.values()) == 1.0


# ----------------------------------------------------------------------------- get_client


def test_get_client_reuse_switch_and_reload(
    project: Any, server: MistralTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mistral_nbenv import workspace

    project(
        f"""
        [default]
        server_url = "{server.url}"
        [default.cache]
        directory = "{tmp_path / "gc-cache"}"
        """
    )
    monkeypatch.setenv("MISTRAL_API_KEY_STAGING", KEY)
    monkeypatch.setenv("MISTRAL_API_KEY_DEV", OTHER_KEY)
    client = workspace.get_client("staging")
    assert workspace.get_client("stage") is client
    assert client.environment == "staging"
    assert KEY not in repr(client)
    assert client.chat.complete(messages=hello()).choices
    workspace.use_environment("staging")
    workspace.use_environment("development")  # switching away closes staging's client
    assert client._raw is None
    assert client.chat.complete(messages=hello("reopened")).choices  # still staging
    assert last(server).api_key == KEY
    workspace.workspace().reload()  # a new reading: new settings objects, new client
    assert workspace.get_client("staging") is not client
    workspace.close_clients()


def test_get_client_follows_the_debug_setting_and_logs_no_key(
    project: Any,
    server: MistralTestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mistral_nbenv import workspace
    from mistral_nbenv.secrets.logfilter import HANDLER_NAME, apply_debug

    def debug_on() -> bool:
        handlers = logging.getLogger("mistral_nbenv").handlers
        return any(h.get_name() == HANDLER_NAME for h in handlers)

    project(
        f"""
        [default]
        server_url = "{server.url}"
        [default.cache]
        directory = "{tmp_path / "debug-cache"}"
        [development.rate_limits]
        requests_per_minute = 6000
        """
    )
    monkeypatch.setenv("MISTRAL_API_KEY_DEV", KEY)  # the one the server accepts
    monkeypatch.setenv("MISTRAL_API_KEY_STAGING", OTHER_KEY)
    try:
        dev = workspace.get_client("development")  # packaged defaults: debug on
        assert debug_on()
        dev._policy.sleep = lambda s: None
        server.enqueue(Fault.status(503, body={"message": f"not for {KEY}"}))
        dev.chat.complete(messages=hello())
        err = capsys.readouterr().err
        assert "retrying" in err
        assert KEY not in err
        workspace.get_client("staging")  # debug off there
        assert not debug_on()
    finally:
        apply_debug(False)
        workspace.close_clients()


def test_import_is_light() -> None:
    code = (
        "import sys, mistral_nbenv, mistral_nbenv.client, mistral_nbenv.policies.cache, "
        "mistral_nbenv.policies.retry, mistral_nbenv.policies.ratelimit; "
        "print(sorted(m for m in ('mistralai', 'httpx2', 'diskcache', 'pydantic') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- _fastsdk


def test_fastsdk_internals() -> None:
    """Fails loudly when the SDK internals that _fastsdk patches change (tested: mistralai 3.7)."""
    from mistral_nbenv.client import sdkpatch as _fastsdk

    assert _fastsdk.check() == []
    assert _fastsdk.install() is True
    assert _fastsdk.installed()


def test_fastsdk_is_transparent(tmp_path: Path, server: MistralTestServer) -> None:
    from mistral_nbenv.client import sdkpatch as _fastsdk

    plain = Client(
        make_settings(tmp_path, server.url, cache={"enabled": False}), resolved(), fast_sdk=False
    )
    _fastsdk.uninstall()
    try:
        expected = plain.chat.complete(messages=hello("same"), temperature=0.1)
        plain_body = last(server).raw_body
    finally:
        _fastsdk.install()
    fast = Client(make_settings(tmp_path, server.url, cache={"enabled": False}), resolved())
    got = fast.chat.complete(messages=hello("same"), temperature=0.1)
    assert last(server).raw_body == plain_body
    assert got.choices == expected.choices
    assert got.usage == expected.usage
    plain.close()
    fast.close()


@pytest.fixture
def fastsdk_reset() -> Any:
    """Each test starts from the SDK unpatched and leaves it installed as the suite expects."""
    from mistral_nbenv.client import sdkpatch as _fastsdk

    _fastsdk.uninstall()
    yield _fastsdk
    _fastsdk.uninstall()
    _fastsdk.install()


def test_fastsdk_falls_back_on_a_different_sdk(
    fastsdk_reset: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    server: MistralTestServer,
) -> None:
    """An SDK whose internals differ (simulated): no patch, one debug line, calls still work."""
    import importlib

    ser = importlib.import_module("mistralai.client.utils.serializers")

    def unmarshal(val: Any, typ: Any, **_options: Any) -> Any:  # a "release" with no create_model
        from pydantic import TypeAdapter

        return TypeAdapter(typ).validate_python(val)

    monkeypatch.setattr(ser, "unmarshal", unmarshal)
    original_create_model = ser.create_model
    caplog.set_level(logging.DEBUG, logger="mistral_nbenv.client.sdkpatch")
    settings = make_settings(tmp_path, server.url, cache={"enabled": False})
    clients = [Client(settings, resolved()) for _ in range(2)]
    try:
        for client in clients:
            answer = client.chat.complete(messages=hello("fallback"))
            assert answer.choices[0].message.content == "Echo: fallback"
    finally:
        for client in clients:
            client.close()
    assert fastsdk_reset.installed() is False
    assert ser.create_model is original_create_model  # nothing was patched
    lines = [r.getMessage() for r in caplog.records if "fast path off" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "unmarshal no longer calls create_model" in lines[0]


def test_fastsdk_never_changes_a_users_own_sdk_client(
    fastsdk_reset: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: MistralTestServer
) -> None:
    """The patches act only inside the wrapper's calls; a plain Mistral() gets the SDK as is."""
    import importlib

    from mistralai.client import Mistral

    assert fastsdk_reset.install() is True
    ser = importlib.import_module("mistralai.client.utils.serializers")
    config = {"populate_by_name": True, "arbitrary_types_allowed": True}

    def build() -> Any:
        return ser.create_model("Probe", body=(int, ...), __config__=config)

    assert build() is not build()  # outside the scope: pydantic's create_model, a new class
    token = fastsdk_reset.SCOPE.set(True)
    try:
        assert build() is build()  # inside: memoised
    finally:
        fastsdk_reset.SCOPE.reset(token)

    scopes: list[bool] = []
    patched = ser.create_model

    def spy(*args: Any, **kwargs: Any) -> Any:
        scopes.append(fastsdk_reset.SCOPE.get())
        return patched(*args, **kwargs)

    monkeypatch.setattr(ser, "create_model", spy)
    user = Mistral(api_key=KEY, server_url=server.url)
    try:
        assert user.chat.complete(model="m", messages=hello("mine")).choices[0].message.content
        assert scopes  # the user's call built models...
        assert not any(scopes)  # ...every one of them with the plain SDK
        hooks = user.sdk_configuration.__dict__["_hooks"]
        assert not getattr(hooks, "_mistral_nbenv_inline_hooks", False)
    finally:
        user.sdk_configuration.client.close()
    scopes.clear()
    ours = Client(make_settings(tmp_path, server.url, cache={"enabled": False}), resolved())
    try:
        ours.chat.complete(messages=hello("ours"))
    finally:
        ours.close()
    assert scopes
    assert all(scopes)
    assert fastsdk_reset.SCOPE.get() is False  # and the scope ended with the call


def test_fast_sdk_setting_off(
    fastsdk_reset: Any, tmp_path: Path, server: MistralTestServer, project: Any
) -> None:
    """``fast_sdk = false`` keeps the SDK unpatched; the wrapper still works."""
    from mistral_nbenv.workspace import get_settings

    project("[staging]\nfast_sdk = false\n")
    assert get_settings("staging").fast_sdk is False
    assert get_settings("production").fast_sdk is True
    settings = make_settings(tmp_path, server.url, cache={"enabled": False}, fast_sdk=False)
    client = Client(settings, resolved())
    try:
        assert client.chat.complete(messages=hello("slow")).choices[0].message.content
        assert fastsdk_reset.installed() is False
    finally:
        client.close()
