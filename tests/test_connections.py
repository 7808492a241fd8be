"""Connections under load (issue 37, items 4 and 6): one pool per client sized to its
concurrency, and a finished event loop keeps no socket.

The loopback server counts the TCP connections it accepts; this process's descriptors are
counted in /proc.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from mistral_nbenv.client import Client
from mistral_nbenv.testing import MistralTestServer
from tests._client_support import make_settings, resolved


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_one_asyncio_run_per_call_keeps_no_socket_of_a_finished_loop(tmp_path: Path) -> None:
    with MistralTestServer() as server:
        client = Client(make_settings(tmp_path, server.url), resolved())

        async def one(i: int) -> str:
            answer = await client.chat.complete_async(
                messages=[{"role": "user", "content": f"call {i}"}], cache=False
            )
            return str(answer.choices[0].message.content)

        asyncio.run(one(-1))  # the first loop opens what every later one reuses (SDK, caches)
        before = _descriptors()
        for i in range(300):
            assert asyncio.run(one(i)) == f"Echo: call {i}"
        assert server.count() == 301
        assert _descriptors() <= before + 5  # not one socket per finished loop
        assert server.connections_open <= 2  # each loop's connection was closed with it
        client.close()


def test_the_pool_keeps_a_connection_alive_per_concurrency_slot(tmp_path: Path) -> None:
    with MistralTestServer(latency=0.02) as server:
        settings = make_settings(tmp_path, server.url, features={"max_concurrent_requests": 100})
        client = Client(settings, resolved())

        async def burst() -> None:
            calls = [
                client.chat.complete_async(
                    messages=[{"role": "user", "content": f"m{i}"}], cache=False
                )
                for i in range(1000)
            ]
            await asyncio.gather(*calls)

        asyncio.run(burst())
        assert server.count() == 1000
        assert server.max_in_flight <= 100
        # httpx keeps 20 alive by default: 1,000 calls then open hundreds of connections
        assert server.connections_accepted <= 110, server.connections_accepted
        client.close()


def test_a_request_bigger_than_the_budget_is_refused_at_once(tmp_path: Path) -> None:
    from mistral_nbenv import RateLimitError

    with MistralTestServer() as server:
        settings = make_settings(tmp_path, server.url, rate_limits={"tokens_per_minute": 1000})
        client = Client(settings, resolved())
        with pytest.raises(RateLimitError) as info:
            client.chat.complete(messages=[{"role": "user", "content": "hi"}], max_tokens=5000)
        message = str(info.value)
        assert info.value.status_code is None
        assert server.count() == 0  # nothing sent
        assert "more than the whole tokens_per_minute budget" in message
        assert "rate_limits.tokens_per_minute under [staging]" in message
        assert client.chat.complete(messages=[{"role": "user", "content": "hi"}]).choices
        client.close()


def test_a_rejected_request_gives_its_tokens_back(tmp_path: Path) -> None:
    """6,000 tpm: the bucket holds 1,000 tokens. A request of ~900 the server rejects with
    400 must not leave its 900 as debt that the next request waits out (~8 s)."""
    from mistral_nbenv import APIError
    from mistral_nbenv.testing import Fault

    with MistralTestServer() as server:
        settings = make_settings(tmp_path, server.url, rate_limits={"tokens_per_minute": 6000})
        client = Client(settings, resolved())
        big = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 890}
        server.fail_next(1, Fault.status(400))
        with pytest.raises(APIError) as info:
            client.chat.complete(**big, cache=False)
        assert info.value.status_code == 400
        client.chat.complete(**big, cache=False)
        assert server.count() == 2
        assert client.stats.rate_limit_waits == 0  # the rejected request's tokens came back
        client.close()


def test_an_idle_connection_the_server_closed_is_not_reused(tmp_path: Path) -> None:
    # The pool probes each idle connection before reuse (our network wrapper answers that
    # probe from the connection's own socket): one the server hung up on is dropped and a
    # new one opened, so the next call neither fails nor needs a retry.
    with MistralTestServer() as server:
        client = Client(make_settings(tmp_path, server.url, max_retries=0), resolved())

        async def calls() -> list[str]:
            got = []
            for i in range(3):
                answer = await client.chat.complete_async(
                    messages=[{"role": "user", "content": f"again {i}"}], cache=False
                )
                got.append(str(answer.choices[0].message.content))
                server.close_connections()  # the server ends the idle keep-alive connection
                await asyncio.sleep(0.05)
            return got

        assert asyncio.run(calls()) == [f"Echo: again {i}" for i in range(3)]
        assert server.count() == 3
        assert server.connections_accepted == 3  # one per call: none reused after its close
        assert client.stats.retries == 0
        client.close()
