"""One of several processes sharing a rate budget: prints the times it was admitted.

``python -m benchmarks.budget_worker DIR RPM START SECONDS``: from wall-clock time START, ask
for requests for SECONDS; print the limiter's own clock reading of every admission (JSON).
"""

from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mistral_nbenv.policies.ratelimit import RateLimiter
from mistral_nbenv.store.local import DiskStore


def main() -> None:
    directory, rpm, start, seconds = Path(sys.argv[1]), *map(float, sys.argv[2:5])
    limiter = RateLimiter(DiskStore(directory), requests_per_minute=rpm, tokens_per_minute=0)
    limiter.acquire(0)  # open the store before the start line (not counted)
    time.sleep(max(0.0, start - time.time()))
    admitted: list[float] = []
    while time.time() < start + seconds:
        limiter.acquire(0)
        admitted.append(limiter.admitted_at)
    print(json.dumps(admitted))


def run_processes(directory: Path, rpm: float, seconds: float, processes: int) -> list[float]:
    """Start ``processes`` of these on one budget in ``directory``; every admission, sorted."""
    root = Path(__file__).resolve().parent.parent
    start = time.time() + 3.0  # every process is up and has opened the store by then
    args = [str(directory), str(rpm), repr(start), str(seconds)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.budget_worker", *args],
            cwd=root,
            env=dict(os.environ, PYTHONPATH=str(root)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    times: list[float] = []
    for worker in workers:
        out, err = worker.communicate(timeout=seconds + 120)
        if worker.returncode != 0:
            raise RuntimeError(f"a budget worker failed: {err.strip()[-500:]}")
        times += json.loads(out)
    return sorted(times)


def worst_window(times: list[float], width: float) -> int:
    """The most admissions in any closed window ``[t, t + width]`` (``times`` sorted)."""
    return max(bisect.bisect_right(times, start + width) - i for i, start in enumerate(times))


if __name__ == "__main__":
    main()
