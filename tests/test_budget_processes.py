"""The shared budget's bound holds exactly across processes (issue 18).

Eight real processes share one diskcache budget at 6,000 requests/min for four seconds;
every admission is stamped with the limiter's own clock reading (taken inside the store's
transaction).  In every window of W seconds at most ``burst + rpm * W / 60`` requests were
admitted: no slack beyond float rounding.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 8
RPM = 6000.0
SECONDS = 4.0


def worst_window(times: list[float], width: float) -> int:
    """The most admissions in any closed window ``[t, t + width]``."""
    ordered = sorted(times)
    return max(bisect.bisect_right(ordered, start + width) - i for i, start in enumerate(ordered))


@pytest.mark.parametrize("rpm", [RPM])
def test_eight_processes_never_beat_the_bound(tmp_path: Path, rpm: float) -> None:
    start = time.time() + 3.0  # every process is up and has opened the store by then
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.budget_worker",
                str(tmp_path / "budget"),
                str(rpm),
                repr(start),
                str(SECONDS),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    times: list[float] = []
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        times += json.loads(out)
    rate, burst = rpm / 60, max(1.0, rpm / 60)
    assert len(times) >= rate * SECONDS * 0.8  # the processes really competed for the budget
    for width in (0.25, 0.5, 1.0, 2.0, 3.0):
        bound = math.floor(burst + rate * width + 1e-6)
        assert worst_window(times, width) <= bound, (width, worst_window(times, width), bound)
