"""Smoke test of ``benchmarks/``: every benchmark runs in quick mode and reports well-formed rows.

No timing assertions: these machines are noisy, and quick sizes are too small to mean much.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import run as bench_run
from benchmarks._support import Config, Figure
from benchmarks.suite import BENCHMARKS

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def _check_figure(row: dict) -> None:
    assert row["id"]
    assert row["name"]
    assert row["unit"]
    assert row["target"]
    assert row["result"] in ("PASS", "MISS", "info")
    assert math.isfinite(row["value"])
    assert row["value"] >= 0
    assert math.isfinite(row["reference_value"])
    assert row["reference_value"] > 0
    assert row["ratio"] == pytest.approx(row["value"] / row["reference_value"], rel=1e-2, abs=1e-3)
    assert isinstance(row["samples"], dict)


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_benchmark_runs_quick(name: str) -> None:
    results = bench_run.run([name], Config(quick=True))
    figures = results.pop("_figures")
    assert figures
    assert all(isinstance(f, Figure) for f in figures)
    assert all(f.id.startswith(name) for f in figures)
    json.dumps(results)  # JSON-ready
    for row in results["figures"]:
        _check_figure(row)
    assert results["machine"]["cpu_count"] >= 1
    assert results["machine"]["mistralai"] != "not installed"


def test_command_line_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    assert bench_run.main(["--quick", "--only", "1", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cache hit" in printed
    assert "PASS" in printed or "MISS" in printed
    data = json.loads(out.read_text())
    assert data["quick"] is True
    assert data["benchmarks"] == ["1"]
    assert {"cpu_count", "python", "mistralai", "date"} <= set(data["machine"])
    assert [row["id"] for row in data["figures"]] == ["1"]
    _check_figure(data["figures"][0])


def test_only_rejects_unknown_benchmarks() -> None:
    assert bench_run.parse_only("2, 1") == ["1", "2"]
    assert bench_run.parse_only(None) == list(BENCHMARKS)
    with pytest.raises(SystemExit, match="unknown benchmark"):
        bench_run.parse_only("1,9")


def test_table_formats() -> None:
    figure = Figure("1", "x", 0.1, "ms", "floor", 0.05, "<= 2x", True)
    plain = bench_run.format_table([figure])
    assert "2.00x" in plain
    assert "PASS" in plain
    markdown = bench_run.format_table([figure], markdown=True)
    assert markdown.splitlines()[1].startswith("|---")
