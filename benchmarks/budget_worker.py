"""One of several processes sharing a rate budget: prints how many admissions it got.

``python -m benchmarks.budget_worker DIR RPM START SECONDS``: from wall-clock time START, try
to be admitted (one step of the budget each, never sleeping) for SECONDS; print the number
of admissions and of tries (JSON).
"""

from __future__ import annotations

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
    limiter._run(cost=0.0, admit=False)  # open the store before the start line
    time.sleep(max(0.0, start - time.time()))
    admitted = tries = 0
    while time.time() < start + seconds:
        wait, _slot = limiter._run(cost=0.0, admit=True)
        tries += 1
        admitted += wait <= 0
    print(json.dumps({"admitted": admitted, "tries": tries}))


def run_processes(
    directory: Path, rpm: float, seconds: float, processes: int
) -> list[dict[str, int]]:
    """Start ``processes`` of these on one budget in ``directory``; what each got."""
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
    results: list[dict[str, int]] = []
    for worker in workers:
        out, err = worker.communicate(timeout=seconds + 120)
        if worker.returncode != 0:
            raise RuntimeError(f"a budget worker failed: {err.strip()[-500:]}")
        results.append(json.loads(out))
    return results


if __name__ == "__main__":
    main()
