"""One of several processes sharing a rate budget: prints the times it was admitted.

``python -m benchmarks.budget_worker DIR RPM START SECONDS``: from wall-clock time START, ask
for requests for SECONDS; print the limiter's own clock reading of every admission (JSON).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from mistral_nbenv.ratelimit import RateLimiter
from mistral_nbenv.store.local import DiskStore


def main() -> None:
    directory, rpm, start, seconds = Path(sys.argv[1]), *map(float, sys.argv[2:5])
    limiter = RateLimiter(DiskStore(directory), requests_per_minute=rpm, tokens_per_minute=0)
    limiter.acquire(0)  # open the store before the start line (not counted)
    limiter.flush()
    time.sleep(max(0.0, start - time.time()))
    admitted: list[float] = []
    while time.time() < start + seconds:
        limiter.acquire(0)
        admitted.append(limiter.admitted_at)
    limiter.flush()
    print(json.dumps(admitted))


if __name__ == "__main__":
    main()
