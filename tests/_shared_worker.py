"""One "host" of the shared-store tests (tests/test_shared_hosts.py), run as a process.

``python -m tests._shared_worker ask PROMPT``: one chat call; prints the client's counters.
``python -m tests._shared_worker budget START SECONDS MAX_TOKENS``: from wall-clock START,
make uncached chat calls for SECONDS; prints how many were made and the tokens the server
reported (a call still waiting for the window at the end is left waiting).
``python -m tests._shared_worker gather START SECONDS TASKS``: at START, TASKS concurrent
``complete_async`` calls; after SECONDS prints how many were answered and how often the
limiter asked its store. Settings, key, cache root and HOME come from the environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time

from mistral_nbenv import get_client

WARM_UP = "warm-up before the start line"


def main() -> None:
    mode = sys.argv[1]
    client = get_client()
    if mode == "ask":
        answer = client.chat.complete(messages=[{"role": "user", "content": sys.argv[2]}])
        print(json.dumps({**client.stats.as_dict(), "content": answer.choices[0].message.content}))
        client.close()
        return
    start, seconds, arg = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    if mode == "gather":
        gather(client, start, seconds, arg)
        return
    max_tokens = arg
    # before the start line: one wrapped call of the same operation (its first call in a
    # process discovers the operation and imports what it needs, a quarter of a second that
    # would otherwise be spent after the start line), which also opens the SDK's HTTP
    # connection and Redis's; the tests leave out requests whose prompt starts with WARM_UP.
    # Its request and tokens are back in the buckets long before the start line.
    assert client._limiter._shared is not None, "the budget is not shared"
    client.chat.complete(messages=[{"role": "user", "content": WARM_UP}], max_tokens=1, cache=False)
    time.sleep(max(0.0, start - time.time()))
    counted = {"calls": 0, "tokens": 0}

    def calls() -> None:
        n = 0
        while time.time() < start + seconds:
            n += 1
            answer = client.chat.complete(
                messages=[{"role": "user", "content": f"count {n} " + "word " * 40}],
                max_tokens=max_tokens,
                cache=False,
            )
            counted["calls"] += 1
            counted["tokens"] += answer.usage.total_tokens

    threading.Thread(target=calls, daemon=True).start()
    time.sleep(max(0.0, start + seconds + 0.3 - time.time()))
    print(json.dumps({**counted, **client.stats.as_dict()}), flush=True)
    os._exit(0)  # a call waiting for the next minute's window is not waited for


def gather(client: object, start: float, seconds: float, tasks: int) -> None:
    """``tasks`` concurrent calls from START; report after SECONDS (the rest still wait)."""
    limiter = client._limiter  # type: ignore[attr-defined]
    answered = [0]

    async def one(i: int) -> None:
        await client.chat.complete_async(  # type: ignore[attr-defined]
            messages=[{"role": "user", "content": f"task {i}"}], cache=False
        )
        answered[0] += 1

    async def run() -> None:
        await asyncio.sleep(max(0.0, start - time.time()))
        calls_before = limiter.admission_tries
        work = asyncio.gather(*(one(i) for i in range(tasks)))
        await asyncio.sleep(seconds)
        print(
            json.dumps(
                {"answered": answered[0], "store_calls": limiter.admission_tries - calls_before}
            ),
            flush=True,
        )
        os._exit(0)
        await work

    asyncio.run(run())


if __name__ == "__main__":
    main()
