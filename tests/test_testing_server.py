"""The loopback Mistral server, exercised through the real SDK over real HTTP."""

from __future__ import annotations

import asyncio
import email.utils
import http.client
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest
from mistralai.client import Mistral, errors

from mistral_nbenv.testing import (
    DEFAULT_MODELS,
    Fault,
    MistralTestServer,
    RecordedRequest,
    echo_answer,
    fake_embedding,
)

KEY = "test-key-not-real"
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
USER_HELLO = [{"role": "user", "content": "hello there, loopback world"}]


@pytest.fixture(scope="module")
def http_clients() -> Iterator[tuple[httpx2.Client, httpx2.AsyncClient]]:
    """HTTP clients shared by the module's SDK objects (building them costs ~0.1 s each)."""
    with httpx2.Client() as client:
        async_client = httpx2.AsyncClient()  # never used: keeps the SDK from building one
        yield client, async_client
        asyncio.run(async_client.aclose())


@pytest.fixture
def make_sdk(
    http_clients: tuple[httpx2.Client, httpx2.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Mistral]:
    """Build real (synchronous) SDK clients for a server, with a fake key and no retries."""
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    client, async_client = http_clients

    def make(server: MistralTestServer, api_key: str = KEY, timeout_ms: int = 5000) -> Mistral:
        return Mistral(
            api_key=api_key,
            server_url=server.url,
            timeout_ms=timeout_ms,
            client=client,
            async_client=async_client,
        )

    return make


@pytest.fixture
def sdk(make_sdk: Callable[..., Mistral], mistral_server: MistralTestServer) -> Mistral:
    """The real SDK pointed at this test's server."""
    return make_sdk(mistral_server)


def chat(sdk: Mistral, text: str = "hi") -> Any:
    return sdk.chat.complete(
        model="mistral-small-latest", messages=[{"role": "user", "content": text}]
    )


def raw_request(
    server: MistralTestServer, method: str, path: str, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request over a fresh connection: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


# -- success paths --------------------------------------------------------------------------


def test_chat_complete_echoes_the_last_user_message(
    sdk: Mistral, mistral_server: MistralTestServer
) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second question"}]},
    ]
    response = sdk.chat.complete(model="mistral-large-latest", messages=messages)
    assert response.model == "mistral-large-2512"  # the dated ID the alias stands for
    assert response.choices[0].message.content == "Echo: second question"
    assert response.choices[0].finish_reason == "stop"
    usage = response.usage
    assert usage.prompt_tokens
    assert usage.completion_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens == len("Echo: second question") // 4
    assert mistral_server.last_request is not None
    assert mistral_server.last_request.body["messages"][1]["content"] == "first"


def test_each_response_has_a_fresh_id_but_the_same_content(sdk: Mistral) -> None:
    first, second = chat(sdk, "same"), chat(sdk, "same")
    assert first.id != second.id
    assert first.choices[0].message.content == second.choices[0].message.content


def test_chat_stream_splits_the_answer_and_ends_with_usage(sdk: Mistral) -> None:
    events = [event.data for event in sdk.chat.stream(model="m", messages=USER_HELLO)]
    deltas = [chunk.choices[0].delta.content for chunk in events]
    assert "".join(d for d in deltas if isinstance(d, str)) == "Echo: hello there, loopback world"
    assert sum(1 for d in deltas if d) >= 4  # several content chunks
    assert [c.choices[0].finish_reason for c in events[:-1]] == [None] * (len(events) - 1)
    assert events[-1].choices[0].finish_reason == "stop"
    assert events[-1].usage is not None
    assert events[-1].usage.total_tokens


def test_stream_wire_format_is_sse_with_done(mistral_server: MistralTestServer) -> None:
    body = json.dumps({"model": "m", "messages": USER_HELLO, "stream": True}).encode()
    status, headers, data = raw_request(mistral_server, "POST", CHAT, body)
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    lines = [line for line in data.decode().split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_keep_alive_responses_carry_content_length(mistral_server: MistralTestServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", mistral_server.port, timeout=5)
    try:
        for _ in range(3):  # three requests on one connection
            conn.request("GET", "/v1/models")
            response = conn.getresponse()
            data = response.read()
            assert response.status == 200
            assert int(response.getheader("Content-Length", "-1")) == len(data)
            assert not response.will_close
    finally:
        conn.close()


def test_embeddings_are_deterministic_unit_vectors(
    sdk: Mistral, mistral_server: MistralTestServer
) -> None:
    response = sdk.embeddings.create(model="mistral-embed", inputs=["alpha", "beta", "alpha"])
    vectors = [item.embedding for item in response.data]
    assert [item.index for item in response.data] == [0, 1, 2]
    assert vectors[0] == vectors[2] != vectors[1]
    assert vectors[0] == fake_embedding("alpha", mistral_server.embedding_dimensions)
    assert all(
        len(v) == 16 and math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vectors
    )
    single = sdk.embeddings.create(model="mistral-embed", inputs="alpha")
    assert single.data[0].embedding == vectors[0]
    assert response.usage.prompt_tokens == 3


def test_embedding_dimensions_are_configurable(
    sdk: Mistral, mistral_server: MistralTestServer
) -> None:
    mistral_server.embedding_dimensions = 5
    assert (
        len(sdk.embeddings.create(model="mistral-embed", inputs="x").data[0].embedding or []) == 5
    )


def test_fim_complete_and_stream(sdk: Mistral) -> None:
    response = sdk.fim.complete(model="codestral-latest", prompt="def add(a, b):", suffix="")
    assert response.choices[0].message.content == "Echo: def add(a, b):"
    chunks = [e.data.choices[0].delta.content for e in sdk.fim.stream(model="c", prompt="x = 1")]
    assert "".join(c for c in chunks if isinstance(c, str)) == "Echo: x = 1"


def test_models_list_and_retrieve(sdk: Mistral, mistral_server: MistralTestServer) -> None:
    models = sdk.models.list()
    assert [m.id for m in models.data or []] == list(DEFAULT_MODELS)
    codestral = sdk.models.retrieve(model_id="codestral-latest")
    assert codestral.id == "codestral-latest"
    assert codestral.capabilities.completion_fim
    with pytest.raises(errors.SDKError) as info:
        sdk.models.retrieve(model_id="no-such-model")
    assert info.value.status_code == 404
    mistral_server.models = ["only-one"]
    assert [m.id for m in sdk.models.list().data or []] == ["only-one"]


def test_async_variants(mistral_server: MistralTestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)

    async def run() -> list[Any]:
        async with Mistral(api_key=KEY, server_url=mistral_server.url) as client:
            answer = await client.chat.complete_async(model="m", messages=USER_HELLO)
            stream = await client.chat.stream_async(model="m", messages=USER_HELLO)
            streamed = [event.data.choices[0].delta.content async for event in stream]
            embedded = await client.embeddings.create_async(model="mistral-embed", inputs="a")
            fim = await client.fim.complete_async(model="codestral-latest", prompt="p")
            models = await client.models.list_async()
            return [answer, streamed, embedded, fim, models]

    answer, streamed, embedded, fim, models = asyncio.run(run())
    assert answer.choices[0].message.content == "Echo: hello there, loopback world"
    assert "".join(s for s in streamed if isinstance(s, str)) == "Echo: hello there, loopback world"
    assert embedded.data[0].embedding == fake_embedding("a")
    assert fim.choices[0].message.content == "Echo: p"
    assert len(models.data) == len(DEFAULT_MODELS)
    assert mistral_server.count() == 5


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("scripted answer", "scripted answer"),
        (None, "Echo: hi"),
    ],
)
def test_responder_scripts_answers(
    sdk: Mistral, mistral_server: MistralTestServer, reply: str | None, expected: str
) -> None:
    seen: list[RecordedRequest] = []

    def responder(request: RecordedRequest) -> str | None:
        seen.append(request)
        return reply

    mistral_server.responder = responder
    assert chat(sdk).choices[0].message.content == expected
    streamed = sdk.chat.stream(model="m", messages=[{"role": "user", "content": "hi"}])
    text = "".join(e.data.choices[0].delta.content or "" for e in streamed)
    assert text == expected
    assert [r.stream for r in seen] == [False, True]


def test_responder_can_return_a_whole_body(sdk: Mistral, mistral_server: MistralTestServer) -> None:
    body = {
        "id": "fixed",
        "object": "chat.completion",
        "model": "m",
        "created": 1,
        "usage": {"prompt_tokens": 7},
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "raw"},
                "finish_reason": "stop",
            }
        ],
    }
    mistral_server.responder = lambda request: body
    response = chat(sdk)
    assert (response.id, response.choices[0].message.content) == ("fixed", "raw")
    assert response.usage.prompt_tokens == 7


def test_a_failing_responder_becomes_a_500_naming_the_error(
    sdk: Mistral, mistral_server: MistralTestServer
) -> None:
    def responder(request: RecordedRequest) -> str:
        raise KeyError("oops")

    mistral_server.responder = responder
    with pytest.raises(errors.SDKError) as info:
        chat(sdk)
    assert info.value.status_code == 500
    assert "KeyError('oops')" in json.loads(info.value.body)["message"]


def test_echo_answer_for_chat_and_fim_bodies() -> None:
    assert echo_answer({"messages": [{"role": "user", "content": "q"}]}) == "Echo: q"
    assert echo_answer({"prompt": "p", "suffix": "s"}) == "Echo: p"


# -- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [400, 401, 403, 408, 429, 500, 502, 503, 504])
def test_status_faults_reach_the_sdk_then_the_next_request_succeeds(
    sdk: Mistral, mistral_server: MistralTestServer, code: int
) -> None:
    mistral_server.enqueue(Fault.status(code))
    with pytest.raises(errors.SDKError) as info:
        chat(sdk)
    assert info.value.status_code == code
    body = json.loads(info.value.body)
    assert body["message"]
    assert chat(sdk).choices[0].message.content == "Echo: hi"
    assert mistral_server.count(CHAT) == 2
    assert mistral_server.pending_faults == 0


def test_status_422_is_an_sdk_validation_error(
    sdk: Mistral, mistral_server: MistralTestServer
) -> None:
    mistral_server.enqueue(Fault.status(422))
    with pytest.raises(errors.HTTPValidationError) as info:
        chat(sdk)
    assert info.value.status_code == 422
    assert info.value.data.detail
    assert info.value.data.detail[0].msg == "Field required"


def test_status_fault_with_custom_body_and_headers(
    sdk: Mistral, mistral_server: MistralTestServer
) -> None:
    mistral_server.enqueue(Fault.status(503, body={"detail": "busy"}, headers={"X-Why": "test"}))
    with pytest.raises(errors.SDKError) as info:
        chat(sdk)
    assert json.loads(info.value.body) == {"detail": "busy"}
    assert info.value.headers["x-why"] == "test"


def test_status_fault_rejects_success_codes() -> None:
    with pytest.raises(ValueError, match="4xx/5xx"):
        Fault.status(200)


@pytest.mark.parametrize(
    ("retry_after", "header"), [(1, "1"), (2.0, "2"), (0.25, "0.25"), ("7", "7")]
)
def test_rate_limit_sends_retry_after_seconds(
    sdk: Mistral, mistral_server: MistralTestServer, retry_after: float | str, header: str
) -> None:
    mistral_server.enqueue(Fault.rate_limit(retry_after))
    with pytest.raises(errors.SDKError) as info:
        chat(sdk)
    assert info.value.status_code == 429
    assert info.value.headers["retry-after"] == header
    assert json.loads(info.value.body)["type"] == "rate_limited"


def test_rate_limit_sends_retry_after_as_http_date(
    sdk: Mistral, mistral_server: MistralTestServer
) -> None:
    fixed = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    mistral_server.enqueue(Fault.rate_limit(3, http_date=True), Fault.rate_limit(fixed))
    before = time.time()
    with pytest.raises(errors.SDKError) as info:
        chat(sdk)
    when = email.utils.parsedate_to_datetime(info.value.headers["retry-after"]).timestamp()
    assert before + 3 <= when <= time.time() + 4  # rounded up to whole seconds
    with pytest.raises(errors.SDKError) as info:
        chat(sdk)
    assert info.value.headers["retry-after"] == "Wed, 02 Jan 2030 03:04:05 GMT"


def test_dropped_connection_is_a_transport_error(
    sdk: Mistral, mistral_server: MistralTestServer
) -> None:
    mistral_server.enqueue(Fault.drop())
    with pytest.raises(httpx2.RemoteProtocolError):
        chat(sdk)
    assert chat(sdk).choices[0].message.content == "Echo: hi"
    assert mistral_server.count(CHAT) == 2


def test_drop_before_a_stream_fails_the_call(
    sdk: Mistral, mistral_server: MistralTestServer
) -> None:
    mistral_server.enqueue(Fault.drop())
    with pytest.raises(httpx2.TransportError):
        sdk.chat.stream(model="m", messages=USER_HELLO)


def test_drop_mid_stream_delivers_some_chunks_then_fails(
    sdk: Mistral, mistral_server: MistralTestServer
) -> None:
    mistral_server.enqueue(Fault.drop_mid_stream(after_chunks=2))
    received: list[Any] = []
    stream = sdk.chat.stream(model="m", messages=USER_HELLO)  # headers arrive fine

    def read_all() -> None:
        received.extend(event.data.choices[0].delta.content for event in stream)

    with pytest.raises(httpx2.RemoteProtocolError):
        read_all()
    assert received == ["", "Echo: "]


def test_drop_mid_response_cuts_a_json_body(
    sdk: Mistral, mistral_server: MistralTestServer
) -> None:
    mistral_server.enqueue(Fault.drop_mid_stream())
    with pytest.raises(httpx2.RemoteProtocolError):
        chat(sdk)


def test_malformed_body_is_a_response_validation_error(
    sdk: Mistral, mistral_server: MistralTestServer
) -> None:
    mistral_server.enqueue(Fault.malformed(), Fault.malformed({"choices": "nope"}))
    for _ in range(2):
        with pytest.raises(errors.ResponseValidationError) as info:
            chat(sdk)
        assert info.value.status_code == 200


def test_malformed_stream_event_fails_while_reading(
    sdk: Mistral, mistral_server: MistralTestServer
) -> None:
    mistral_server.enqueue(Fault.malformed())
    stream = sdk.chat.stream(model="m", messages=USER_HELLO)
    with pytest.raises(errors.ResponseValidationError):
        list(stream)


def test_slow_response_waits_then_answers(sdk: Mistral, mistral_server: MistralTestServer) -> None:
    mistral_server.enqueue(Fault.slow(0.3))
    start = time.perf_counter()
    assert chat(sdk).choices[0].message.content == "Echo: hi"
    assert time.perf_counter() - start >= 0.3


def test_slow_response_beyond_the_timeout_is_a_read_timeout(
    make_sdk: Callable[..., Mistral], mistral_server: MistralTestServer
) -> None:
    mistral_server.enqueue(Fault.slow(2.0))
    client = make_sdk(mistral_server, timeout_ms=150)
    start = time.perf_counter()
    with pytest.raises(httpx2.ReadTimeout):
        chat(client)
    assert time.perf_counter() - start < 1.0


def test_slow_stream_delays_the_first_chunk_and_each_next_one(
    sdk: Mistral, mistral_server: MistralTestServer
) -> None:
    mistral_server.enqueue(Fault.slow(0.2, chunk_delay=0.05))
    start = time.perf_counter()
    stream = sdk.chat.stream(model="m", messages=[{"role": "user", "content": "a b c"}])
    stamps = [time.perf_counter() - start for _ in stream]
    assert len(stamps) == 5  # role, "Echo: ", "a ", "b ", "c"
    assert stamps[0] >= 0.2
    assert stamps[-1] - stamps[0] >= 4 * 0.05 * 0.9


def test_faults_can_target_one_path(sdk: Mistral, mistral_server: MistralTestServer) -> None:
    mistral_server.enqueue(Fault.status(503), path=EMBEDDINGS)
    assert chat(sdk).choices[0].message.content == "Echo: hi"  # not consumed by chat
    assert mistral_server.pending_faults == 1
    with pytest.raises(errors.SDKError) as info:
        sdk.embeddings.create(model="mistral-embed", inputs="x")
    assert info.value.status_code == 503
    assert mistral_server.pending_faults == 0


def test_fail_next_then_success_in_order(sdk: Mistral, mistral_server: MistralTestServer) -> None:
    mistral_server.fail_next(2, Fault.status(500))
    mistral_server.enqueue(Fault.rate_limit(1))
    codes = []
    for _ in range(4):
        try:
            chat(sdk)
            codes.append(200)
        except errors.SDKError as exc:
            codes.append(exc.status_code)
    assert codes == [500, 500, 429, 200]
    mistral_server.fail_next(3, Fault.drop())
    mistral_server.clear_faults()
    assert chat(sdk).choices[0].message.content == "Echo: hi"


# -- recording, authentication, concurrency ---------------------------------------------------


def test_requests_are_recorded_with_headers_and_bodies(
    sdk: Mistral, mistral_server: MistralTestServer
) -> None:
    chat(sdk, "one")
    sdk.embeddings.create(model="mistral-embed", inputs="two")
    sdk.models.list()
    first, second, third = mistral_server.requests
    assert (first.method, first.path, second.path, third.method) == (
        "POST",
        CHAT,
        EMBEDDINGS,
        "GET",
    )
    assert first.headers["authorization"] == f"Bearer {KEY}"
    assert first.header("Authorization") == f"Bearer {KEY}"
    assert first.api_key == KEY
    assert first.body["messages"] == [{"role": "user", "content": "one"}]
    assert second.body["input"] == "two"
    assert third.body is None
    assert first.timestamp <= second.timestamp <= third.timestamp
    assert mistral_server.count() == 3
    assert mistral_server.count(CHAT) == 1
    assert mistral_server.count(method="GET") == 1
    assert KEY not in repr(first)
    assert KEY not in repr(mistral_server)
    mistral_server.clear()
    assert mistral_server.requests == []
    assert mistral_server.count() == 0
    assert mistral_server.last_request is None


@pytest.mark.parametrize(("sent", "ok"), [("right-key-123456", True), ("wrong-key-123456", False)])
def test_expected_api_key(
    make_sdk: Callable[..., Mistral], mistral_server: MistralTestServer, sent: str, ok: bool
) -> None:
    mistral_server.expected_api_key = "right-key-123456"
    mistral_server.enqueue(Fault.status(500))  # a 401 does not consume queued faults
    client = make_sdk(mistral_server, api_key=sent)
    if ok:
        with pytest.raises(errors.SDKError, match="500"):
            chat(client)
    else:
        with pytest.raises(errors.SDKError) as info:
            chat(client)
        assert info.value.status_code == 401
        assert mistral_server.pending_faults == 1
    assert mistral_server.requests[0].api_key == sent


def test_max_in_flight_counts_concurrent_requests(
    sdk: Mistral, mistral_server: MistralTestServer
) -> None:
    mistral_server.latency = 0.4

    def all_eight_in_flight(request: RecordedRequest) -> None:
        # hold every answer until all 8 requests arrived, so the peak is exactly 8 however
        # slowly a loaded machine starts the threads
        if not mistral_server.wait_for_requests(8, timeout=10):
            raise RuntimeError("the requests were not served concurrently")

    mistral_server.responder = all_eight_in_flight
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: chat(sdk, str(i)), range(8)))
    elapsed = time.perf_counter() - start
    assert [a.choices[0].message.content for a in answers] == [f"Echo: {i}" for i in range(8)]
    assert mistral_server.max_in_flight == 8
    assert mistral_server.in_flight == 0
    assert elapsed < 8 * 0.4 / 2  # served concurrently
    mistral_server.clear()
    assert mistral_server.max_in_flight == 0


def test_latency_applies_to_every_request(sdk: Mistral, mistral_server: MistralTestServer) -> None:
    mistral_server.latency = 0.1
    start = time.perf_counter()
    for _ in range(3):
        chat(sdk)
    assert time.perf_counter() - start >= 0.3


def test_wait_for_requests(mistral_server: MistralTestServer) -> None:
    assert not mistral_server.wait_for_requests(1, timeout=0.05)
    threading.Thread(target=raw_request, args=(mistral_server, "GET", "/v1/models")).start()
    assert mistral_server.wait_for_requests(1, path="/v1/models", timeout=5)


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/v1/nothing", None, 404),
        ("GET", CHAT, None, 405),
        ("POST", CHAT, b"{not json", 400),
        ("POST", CHAT, b'{"messages": []}', 422),
        ("POST", EMBEDDINGS, b'{"model": "mistral-embed"}', 422),
    ],
)
def test_bad_requests_get_api_like_errors(
    mistral_server: MistralTestServer, method: str, path: str, body: bytes | None, status: int
) -> None:
    got, headers, data = raw_request(mistral_server, method, path, body)
    assert got == status
    assert headers["Content-Type"] == "application/json"
    assert json.loads(data)
    assert mistral_server.count(path) == 1


def test_chunked_request_body_is_read_and_keep_alive_survives(
    mistral_server: MistralTestServer,
) -> None:
    body = json.dumps({"model": "m", "messages": USER_HELLO}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", mistral_server.port, timeout=5)
    try:
        conn.request("POST", CHAT, body=iter([body[:10], body[10:]]), encode_chunked=True)
        first = conn.getresponse()
        assert json.loads(first.read())["choices"][0]["message"]["content"].startswith("Echo: ")
        conn.request("GET", "/v1/models")  # same connection
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    assert mistral_server.requests[0].body["messages"] == USER_HELLO


def test_faults_are_hashable_values() -> None:
    assert Fault.status(503, body={"detail": "x"}) == Fault.status(503, body={"detail": "x"})
    assert len({Fault.drop(), Fault.drop(), Fault.slow(1.0)}) == 2
    assert str(Fault.rate_limit(2)) == "status 429"


# -- lifecycle ------------------------------------------------------------------------------


def test_stop_is_quick_with_open_and_slow_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    threads_before = set(threading.enumerate())
    server = MistralTestServer().start()
    assert server.url.startswith("http://127.0.0.1:")
    with Mistral(api_key=KEY, server_url=server.url) as client:
        chat(client)  # leaves an idle keep-alive connection open
        server.enqueue(Fault.slow(30))
        failures: list[BaseException] = []

        def hang() -> None:
            try:
                chat(client)
            except BaseException as exc:
                failures.append(exc)

        waiter = threading.Thread(target=hang)
        waiter.start()
        assert server.wait_for_requests(2)
        start = time.perf_counter()
        server.stop()
        assert time.perf_counter() - start < 1.0
        waiter.join(5)
        assert failures
        assert isinstance(failures[0], httpx2.TransportError)
    assert not server.running
    assert set(threading.enumerate()) <= threads_before
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", server.port)),
    ):
        pass
    server.stop()  # idempotent
    with pytest.raises(RuntimeError, match="not running"):
        server.url  # noqa: B018


def test_context_manager_and_fixture(mistral_server: MistralTestServer) -> None:
    assert mistral_server.running
    with MistralTestServer(latency=0.01) as other:
        assert other.running
        assert other.port != mistral_server.port
        status, _, _ = raw_request(other, "GET", "/v1/models")
        assert status == 200
    assert not other.running


def test_command_line_serves_until_interrupted(tmp_path: Any) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "mistral_nbenv.testing", "--port", "0", "--quiet"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.split()[4]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "/v1/models", timeout=5) as response:
            assert json.load(response)["data"][0]["id"] == DEFAULT_MODELS[0]
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=5) == 0
        if process.stdout is not None:
            process.stdout.close()
