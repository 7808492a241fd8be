"""Subprocess worker for the multi-process client tests (shared cache, shared rate limit).

Usage: python -m tests._client_worker MODE SERVER_URL CACHE_ROOT START_AT END_AT [ARG]
MODE ``cache``: write/read prompts ARG..ARG+39 (and 0..19, shared with the other worker);
MODE ``rate``: call as fast as allowed between START_AT and END_AT with rpm=ARG.
Prints a JSON summary on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.pop("MISTRAL_API_KEY", None)


def main() -> None:
    """Run one worker."""
    mode, url, root, start_at, end_at = sys.argv[1:6]
    arg = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    from mistral_nbenv.client import Client
    from tests._client_support import make_settings, resolved

    if mode == "rate":
        settings = make_settings(
            Path(root), url, cache={"enabled": False}, rate_limits={"requests_per_minute": arg}
        )
    else:
        settings = make_settings(Path(root), url)
    client = Client(settings, resolved())
    client.chat.complete(messages=[{"role": "user", "content": "warm-up"}], cache=False)
    while time.time() < float(start_at):
        time.sleep(0.005)
    done = 0
    if mode == "cache":
        prompts = [f"shared {i}" for i in range(20)] + [f"own {arg + i}" for i in range(40)]
        for _round in range(2):
            for prompt in prompts:
                answer = client.chat.complete(messages=[{"role": "user", "content": prompt}])
                assert answer.choices[0].message.content == f"Echo: {prompt}", answer
                done += 1
    else:  # until END_AT: a call still waiting for the window then is left waiting
        import threading

        calls = [0]

        def tick() -> None:
            while time.time() < float(end_at):
                client.chat.complete(messages=[{"role": "user", "content": "tick"}])
                calls[0] += 1

        threading.Thread(target=tick, daemon=True).start()
        time.sleep(max(0.0, float(end_at) - time.time()) + 0.2)
        print(json.dumps({"done": calls[0], "stats": client.stats.as_dict()}), flush=True)
        os._exit(0)
    print(json.dumps({"done": done, "stats": client.stats.as_dict()}))


if __name__ == "__main__":
    main()
