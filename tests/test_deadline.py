"""``timeout`` is a deadline per attempt, streams included (a trickling raw-socket server).

httpx's timeout bounds each socket read, so a server that sends a valid answer a few bytes
at a time never trips it.  These tests assert what the server saw: the client hung up
before the answer was complete, on every attempt, and the error says which limit it hit.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from mistral_nbenv import APITimeoutError, get_client
from mistral_nbenv.client import deadline
from tests._browser_project import KEYS, reset_core
from tests._trickle import TrickleServer, body_in_pieces, endless_events, stream_then_keepalives

HELLO = [{"role": "user", "content": "hello slowly"}]


def _project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, extra: str) -> None:
    """One environment at ``url`` with ``extra`` settings, no cache, no client-side limits."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "settings.toml").write_text(
        f'[development]\nserver_url = "{url}"\napi_key = "{KEYS["development"]}"\n{extra}\n'
        "[development.cache]\nenabled = false\n"
        "[development.rate_limits]\nrequests_per_minute = 0\ntokens_per_minute = 0\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("MISTRAL_NBENV_SETTINGS", str(root / "settings.toml"))
    reset_core()


def _drain(stream: Any, got: list[str]) -> None:
    for ev in stream:
        got.append(ev.data.choices[0].delta.content)


async def _drain_async(stream: Any, got: list[str]) -> None:
    async for ev in stream:
        got.append(ev.data.choices[0].delta.content)


def test_a_trickled_answer_is_cut_at_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 13 pieces 0.5 s apart: each read returns well within 1.5 s, the whole takes 6 s.
    with TrickleServer(lambda: body_in_pieces(13), gap=0.5) as server:
        _project(tmp_path, monkeypatch, server.url, "timeout = 1.5\nmax_retries = 1")
        started = time.monotonic()
        with pytest.raises(APITimeoutError) as caught:
            get_client().chat.complete(messages=HELLO)
        elapsed = time.monotonic() - started
        assert deadline.remaining() is None  # a failed call leaves no deadline behind
        conns = server.wait_done(2)
    assert len(conns) == 2  # one retry, each attempt with its own deadline
    assert all(c.hung_up and c.pieces_sent < c.pieces_total for c in conns)
    assert elapsed < 2 * 6.0  # the trickle would take 12 s for two attempts
    message = str(caught.value)
    assert "timeout of 1.5 s" in message
    assert "2 attempts" in message
    assert "deadline for each attempt" in message


def test_the_same_answer_within_the_deadline_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TrickleServer(lambda: body_in_pieces(4), gap=0.1) as server:
        _project(tmp_path, monkeypatch, server.url, "timeout = 5")
        answer = get_client().chat.complete(messages=HELLO)
        assert answer.choices[0].message.content == "slow hello"
        assert server.wait_done(1)[0].finished
        assert deadline.remaining() is None  # nor does a served one (client.raw runs free)


def test_async_calls_have_the_same_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TrickleServer(lambda: body_in_pieces(13), gap=0.5) as server:
        _project(tmp_path, monkeypatch, server.url, "timeout = 1.5\nmax_retries = 0")
        client = get_client()

        async def main() -> None:
            with pytest.raises(APITimeoutError, match=r"timeout of 1\.5 s"):
                await client.chat.complete_async(messages=HELLO)
            assert deadline.remaining() is None  # the task keeps no deadline either

        asyncio.run(main())
        [conn] = server.wait_done(1)
    assert conn.hung_up
    assert conn.pieces_sent < conn.pieces_total


def test_per_call_timeout_ms_sets_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TrickleServer(lambda: body_in_pieces(13), gap=0.5) as server:
        _project(tmp_path, monkeypatch, server.url, "timeout = 60\nmax_retries = 0")
        with pytest.raises(APITimeoutError, match="timeout of 1 s"):
            get_client().chat.complete(messages=HELLO, timeout_ms=1000)
        [conn] = server.wait_done(1)
    assert conn.hung_up


def test_a_stream_that_stops_sending_events_is_cut_after_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two events, then keep-alive comments every 0.3 s: bytes keep coming, events do not.
    with TrickleServer(lambda: stream_then_keepalives(2, 200), gap=0.3) as server:
        _project(tmp_path, monkeypatch, server.url, "timeout = 1.5\nmax_retries = 0")
        client = get_client()
        stream = client.chat.stream(messages=HELLO)
        got: list[str] = []
        with pytest.raises(APITimeoutError, match="next event") as caught:
            _drain(stream, got)
        [conn] = server.wait_done(1)
    assert got == ["w0 ", "w1 "]
    assert conn.hung_up
    assert conn.pieces_sent < conn.pieces_total
    assert client._concurrency.in_flight == 0  # the failed stream gave its slot back
    assert "timeout of 1.5 s" in str(caught.value)


def test_stream_timeout_bounds_a_whole_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an event every 0.3 s, for a minute: never idle, never finished.
    settings = "timeout = 2\nmax_retries = 0\nstream_timeout = 2.5"
    with TrickleServer(lambda: endless_events(200), gap=0.3) as server:
        _project(tmp_path, monkeypatch, server.url, settings)
        got: list[str] = []
        with pytest.raises(APITimeoutError) as caught:
            _drain(get_client().chat.stream(messages=HELLO), got)
        count = len(got)
        [conn] = server.wait_done(1)
    assert 3 <= count < 200
    assert conn.hung_up
    message = str(caught.value)
    assert "stream_timeout of 2.5 s" in message
    assert "Raise `stream_timeout`" in message


def test_async_streams_have_the_idle_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TrickleServer(lambda: stream_then_keepalives(1, 200), gap=0.3) as server:
        _project(tmp_path, monkeypatch, server.url, "timeout = 1.5\nmax_retries = 0")
        client = get_client()

        async def main() -> list[str]:
            got: list[str] = []
            stream = await client.chat.stream_async(messages=HELLO)
            with pytest.raises(APITimeoutError, match="next event"):
                await _drain_async(stream, got)
            return got

        assert asyncio.run(main()) == ["w0 "]
        [conn] = server.wait_done(1)
    assert conn.hung_up


def test_no_deadline_outside_the_wrappers_calls() -> None:
    assert deadline.remaining() is None
    with deadline.within(5.0):
        left = deadline.remaining()
        assert left is not None
        assert 4.0 < left <= 5.0
        with deadline.within(60.0):  # an inner block sets its own
            inner = deadline.remaining()
            assert inner is not None
            assert inner > 50
    assert deadline.remaining() is None


def test_install_wraps_real_pools_and_falls_back_on_unknown_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import httpx2

    with httpx2.Client() as sync_client:
        assert deadline.install(sync_client, is_async=False)
        assert deadline.install(sync_client, is_async=False)  # twice: still wrapped once
        backend = sync_client._transport._pool._network_backend  # type: ignore[attr-defined]
        assert type(backend).__name__ == "_Backend"
        assert type(backend._inner).__name__ != "_Backend"
    caplog.set_level("DEBUG", logger="mistral_nbenv.client")
    assert not deadline.install(object(), is_async=True)  # a layout it does not know
    assert "timeout stays per socket operation" in caplog.text
