"""One "host" of the shared-store tests (tests/test_shared_hosts.py), run as a process.

``python -m tests._shared_worker ask PROMPT``: one chat call; prints the client's counters.
``python -m tests._shared_worker budget START SECONDS MAX_TOKENS``: from wall-clock START,
make uncached chat calls for SECONDS; prints how many were made and the tokens the server
reported. Settings, key, cache root and HOME come from the environment the test gives.
"""

from __future__ import annotations

import json
import sys
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
    start, seconds, max_tokens = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    # before the start line: one wrapped call of the same operation (its first call in a
    # process discovers the operation and imports what it needs, a quarter of a second that
    # would otherwise be spent after the start line), which also opens the SDK's HTTP
    # connection and Redis's; the tests leave out requests whose prompt starts with WARM_UP.
    # Its request and tokens are back in the buckets long before the start line.
    assert client._limiter._shared is not None, "the budget is not shared"
    client.chat.complete(messages=[{"role": "user", "content": WARM_UP}], max_tokens=1, cache=False)
    time.sleep(max(0.0, start - time.time()))
    calls = tokens = 0
    n = 0
    while time.time() < start + seconds:
        n += 1
        answer = client.chat.complete(
            messages=[{"role": "user", "content": f"count {n} " + "word " * 40}],
            max_tokens=max_tokens,
            cache=False,
        )
        if time.time() <= start + seconds + 0.05:
            calls += 1
            tokens += answer.usage.total_tokens
    client.close()
    print(json.dumps({"calls": calls, "tokens": tokens, **client.stats.as_dict()}))


if __name__ == "__main__":
    main()
