"""Run the benchmarks, print the table, write ``benchmarks/results.json``.

python -m benchmarks.run                 # everything (under 3 minutes on 2 cores)
python -m benchmarks.run --only 1,2      # a subset
python -m benchmarks.run --quick         # tiny sizes: checks the code, not the speed
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._support import Config, Figure
from benchmarks.suite import BENCHMARKS, Context

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"
COLUMNS = ("#", "figure", "value", "reference", "ratio", "target", "result")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """CPU count, Python, package versions, date."""
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "mistralai": _version("mistralai"),
        "mistral_nbenv": _version("mistral-nbenv"),
        "pydantic": _version("pydantic"),
        "diskcache": _version("diskcache"),
        "ipython": _version("ipython"),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _number(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.3f} ms" if value < 1 else f"{value:.1f} ms"
    if unit == "requests":
        return f"{value:g}"
    if unit == "k instr":
        return f"{value:,.0f}k instr"
    return f"{value:.1f} {unit}"


def table_rows(figures: Sequence[Figure]) -> list[tuple[str, ...]]:
    """The printable cells of every figure."""
    return [
        (
            f.id,
            f.name,
            _number(f.value, f.unit),
            f"{_number(f.reference_value, f.unit)} ({f.reference_name})",
            f"{f.ratio:.2f}x",
            f.target,
            f.verdict,
        )
        for f in figures
    ]


def format_table(figures: Sequence[Figure], *, markdown: bool = False) -> str:
    """A plain-text (or Markdown) table of the figures."""
    rows = [COLUMNS, *table_rows(figures)]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|" + "|".join("---" for _ in COLUMNS) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_only(text: str | None) -> list[str]:
    """``"1,2"`` → ``["1", "2"]``, checked against the known benchmarks."""
    if not text:
        return list(BENCHMARKS)
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [c for c in chosen if c not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    return [name for name in BENCHMARKS if name in chosen]


#: Benchmarks that use one core at a time and may run while the rate-limit window (5) is
#: open: its two processes only wake twice a second, and the CPU does not decide its count.
OVERLAPS_RATELIMIT = ("1", "4", "7", "3")


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return []


def run(only: Sequence[str], config: Config, *, log: Any = sys.stderr) -> dict[str, Any]:
    """Run the chosen benchmarks; returns the JSON-ready results.

    The 30 s rate-limit benchmark runs in a thread while the light ones run in turn; the
    benchmarks that load both cores (2 and 6) run only after it has finished.
    """
    started = time.perf_counter()
    load_before = _load()
    if load_before and load_before[0] > 0.5 * (os.cpu_count() or 1):
        print(
            f"warning: load average {load_before[0]} before starting: other processes are "
            "using the CPU, absolute figures will be pessimistic",
            file=log,
        )
    figures: dict[str, list[Figure]] = {}
    timings: dict[str, float] = {}
    errors: list[BaseException] = []

    def one(name: str, ctx: Context) -> None:
        print(f"benchmark {name}: {BENCHMARKS[name].__doc__}", file=log, flush=True)
        t = time.perf_counter()
        try:
            figures[name] = BENCHMARKS[name](ctx)
        except BaseException as exc:
            errors.append(exc)
            raise
        finally:
            ctx.window_open.set()  # never leave the main thread waiting for a failed window
            timings[name] = round(time.perf_counter() - t, 2)

    with tempfile.TemporaryDirectory(prefix="mistral-nbenv-bench-") as tmp:
        ctx = Context(Path(tmp), config)
        try:
            pending = list(only)
            alongside = [n for n in OVERLAPS_RATELIMIT if n in pending]
            if "5" in pending and alongside:
                pending.remove("5")
                thread = threading.Thread(target=one, args=("5", ctx), daemon=True)
                thread.start()
                ctx.window_open.wait(timeout=120)
                for name in alongside:
                    pending.remove(name)
                    one(name, ctx)
                thread.join()
                if errors:
                    raise errors[0]
            for name in pending:
                one(name, ctx)
        finally:
            ctx.close()
    ordered = [f for name in BENCHMARKS if name in figures for f in figures[name]]
    info = machine_info()
    info["load_average_before"] = load_before
    info["load_average_after"] = _load()
    return {
        "machine": info,
        "quick": config.quick,
        "benchmarks": list(only),
        "seconds": timings,
        "total_seconds": round(time.perf_counter() - started, 2),
        "figures": [f.as_dict() for f in ordered],
        "skipped": list(ctx.skipped),
        "_figures": ordered,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; exit status 0 even when a target is missed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--only", help="comma-separated benchmark numbers, e.g. 1,2")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON file (default {DEFAULT_OUTPUT})"
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    results = run(parse_only(args.only), Config(quick=args.quick))
    figures: list[Figure] = results.pop("_figures")
    print(format_table(figures, markdown=args.markdown))
    print()
    for f in figures:
        print(f"[{f.id}] {f.notes}")
    for note in results["skipped"]:
        print(f"skipped: {note}")
    m = results["machine"]
    print(
        f"\n{m['cpu_count']} CPUs, Python {m['python']}, mistralai {m['mistralai']}, "
        f"{m['date']}; load average {m['load_average_before']} before, "
        f"{m['load_average_after']} after; total {results['total_seconds']:.0f} s"
        + (" (quick mode: sizes too small for meaningful figures)" if args.quick else "")
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
