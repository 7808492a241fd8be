"""The shared budget's bound holds exactly across processes (issue 18).

Eight real processes share one budget file at 6,000 requests/min for four seconds;
every admission is stamped with the limiter's own clock reading (taken inside the store's
transaction).  In every window of W seconds at most ``burst + rpm * W / 60`` requests were
admitted: no slack beyond float rounding.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.budget_worker import run_processes, worst_window

PROCESSES = 8
RPM = 6000.0
SECONDS = 4.0


@pytest.mark.parametrize("rpm", [RPM])
def test_eight_processes_never_beat_the_bound(tmp_path: Path, rpm: float) -> None:
    times = run_processes(tmp_path / "budget", rpm, SECONDS, PROCESSES)
    rate, burst = rpm / 60, max(1.0, rpm / 60)
    assert len(times) >= rate * SECONDS * 0.8  # the processes really competed for the budget
    for width in (0.25, 0.5, 1.0, 2.0, 3.0):
        bound = math.floor(burst + rate * width + 1e-6)
        assert worst_window(times, width) <= bound, (width, worst_window(times, width), bound)
