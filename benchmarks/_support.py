"""Plumbing shared by the benchmarks: projects, clean subprocesses, workers, statistics."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Fake, distinct per environment, never a real key (keys must differ between environments).
FAKE_KEYS = {
    "development": "BenchDevFakeKey0000000000000dev1",
    "staging": "BenchStagingFakeKey000000000stg2",
}
KEY_VARIABLES = {"development": "MISTRAL_API_KEY_DEV", "staging": "MISTRAL_API_KEY_STAGING"}

#: Model name sent explicitly by every benchmark call (wrapper and raw SDK alike).
MODEL = "mistral-small-latest"
#: A prompt whose echoed answer makes a ~1.2 KB ``ChatCompletionResponse`` JSON.
PROMPT = "Summarise the quarterly report. " + "lorem ipsum dolor sit amet " * 32

RESULT_PREFIX = "RESULT "
READY_LINE = "READY"

# Variables that could leak real configuration (or a real key) into a benchmark process.
_PREFIXES = ("MISTRAL_", "VAULT_", "AWS_", "GOOGLE_", "SECRET_MANAGER_")
_NAMES = ("VERCEL_ENV", "NODE_ENV", "PYTHONSTARTUP")


def median(values: Iterable[float]) -> float:
    """The median of ``values``."""
    return float(statistics.median(list(values)))


@dataclass
class Figure:
    """One row of the results table: a median, its reference, the ratio and the verdict."""

    id: str
    name: str
    value: float
    unit: str
    reference_name: str
    reference_value: float
    target: str
    passed: bool
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: str = ""

    @property
    def ratio(self) -> float:
        """``value / reference_value`` (nan when the reference is 0)."""
        return self.value / self.reference_value if self.reference_value else float("nan")

    @property
    def verdict(self) -> str:
        """PASS or MISS against the target ("info" for rows without one)."""
        if self.target == "info":
            return "info"
        return "PASS" if self.passed else "MISS"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (samples rounded)."""
        return {
            "id": self.id,
            "name": self.name,
            "value": round(self.value, 4),
            "unit": self.unit,
            "reference": self.reference_name,
            "reference_value": round(self.reference_value, 4),
            "ratio": round(self.ratio, 4),
            "target": self.target,
            "result": self.verdict,
            "samples": {k: [round(v, 4) for v in vs] for k, vs in self.samples.items()},
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Config:
    """Sizes of every benchmark; ``quick`` shrinks them to a smoke test."""

    quick: bool = False

    def pick(self, full: int | float, quick: int | float) -> Any:
        """``quick`` in quick mode, else ``full``."""
        return quick if self.quick else full


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_project(
    directory: Path,
    *,
    server_url: str,
    requests_per_minute: int = 1_000_000,
    tokens_per_minute: int = 1_000_000_000,
    max_concurrent_requests: int = 10,
    cache_enabled: bool = True,
    shared_url: str | None = None,
) -> Path:
    """A project directory whose development and staging point at ``server_url``
    (and share cache and budget through Redis at ``shared_url`` when one is given).

    The packaged defaults give development its own values (debug on, cache off, 10 rpm), and
    a ``[development]`` value beats any ``[default]`` one, so both sections are spelled out.
    """
    directory.mkdir(parents=True, exist_ok=True)
    cache_dir = directory / "cache"
    sections = []
    for env in ("development", "staging"):
        sections.append(
            f"""
[{env}]
server_url = {_toml_str(server_url)}
debug = false
timeout = 30

[{env}.cache]
enabled = {str(cache_enabled).lower()}
ttl_seconds = 3600
directory = {_toml_str(str(cache_dir))}

[{env}.rate_limits]
requests_per_minute = {requests_per_minute}
tokens_per_minute = {tokens_per_minute}

[{env}.features]
max_concurrent_requests = {max_concurrent_requests}
"""
        )
        if shared_url:
            sections.append(f"\n[{env}.shared]\nurl = {_toml_str(shared_url)}\n")
    settings = directory / "settings.toml"
    settings.write_text("# written by benchmarks/_support.py\n" + "".join(sections))
    return settings


def clean_environ(settings_file: Path | None, home: Path) -> dict[str, str]:
    """The environment of a benchmark process: no real keys or config, fake keys only."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_PREFIXES)
        and name not in _NAMES
        and "FOR_DYNACONF" not in name
        and name != "PYTHONDONTWRITEBYTECODE"
    }
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "HOME": str(home),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "IPYTHONDIR": str(home / ".ipython"),
            "MPLBACKEND": "Agg",
            "AWS_EC2_METADATA_DISABLED": "true",
            # Bytecode is written and read as for an installed package (pip writes it; a
            # machine-wide PYTHONDONTWRITEBYTECODE would recompile this repo on every
            # import), to a cache private to the run: nothing lands in the repo.
            "PYTHONPYCACHEPREFIX": str(home / "pycache"),
            "PYTHONPATH": os.pathsep.join(
                [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
    )
    for env_name, variable in KEY_VARIABLES.items():
        env[variable] = FAKE_KEYS[env_name]
    if settings_file is not None:
        env["MISTRAL_NBENV_SETTINGS"] = str(settings_file)
    return env


def scrub_current_process(settings_file: Path, home: Path) -> None:
    """Apply :func:`clean_environ` to this process (used by the worker processes only)."""
    wanted = clean_environ(settings_file, home)
    for name in list(os.environ):
        if name not in wanted:
            del os.environ[name]
    os.environ.update(wanted)


def parse_result(stdout: str) -> Any:
    """The JSON after the last ``RESULT`` line of a worker's output."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError(f"no result line in worker output:\n{stdout[-2000:]}")


@dataclass
class Run:
    """A finished one-shot subprocess: wall time (s) and its parsed result (if any)."""

    wall: float
    result: Any
    stderr: str = ""


def run_python(
    args: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    *,
    timeout: float = 120,
) -> Run:
    """Run ``python <args>`` in a fresh process; wall time from spawn to exit. The run's
    stderr is kept on the result."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(
            f"benchmark process {args[:3]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    result = None
    if RESULT_PREFIX in proc.stdout:
        result = parse_result(proc.stdout)
    return Run(wall, result, proc.stderr)


def run_task(
    task: str, params: Mapping[str, Any], env: Mapping[str, str], cwd: Path, **kw: Any
) -> Run:
    """Run one task of :mod:`benchmarks.workers` in a fresh process."""
    return run_python(["-m", "benchmarks.workers", task, json.dumps(params)], env, cwd, **kw)


class Worker:
    """A long-lived worker process answering JSON commands, one at a time.

    Two workers let two contenders (e.g. the wrapper and the raw SDK) run in turn, each in
    its own process with its own imports, while only one of them uses the CPU at a time.
    """

    def __init__(
        self, task: str, params: Mapping[str, Any], env: Mapping[str, str], cwd: Path
    ) -> None:
        self.task = task
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.workers", task, json.dumps(params)],
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        watchdog = threading.Timer(timeout, self.proc.kill)  # a hung worker ends the read
        watchdog.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            watchdog.cancel()
        if not line:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self._stderr.seek(0)
            err = self._stderr.read()
            self.close()
            raise RuntimeError(f"worker {self.task} died or timed out:\n{err[-3000:]}")
        return line.rstrip("\n")

    def wait_ready(self, timeout: float = 60) -> Any:
        """Wait for the worker's setup to finish; returns what it reported."""
        while True:
            line = self._readline(timeout)
            if line.startswith(READY_LINE):
                rest = line[len(READY_LINE) :].strip()
                return json.loads(rest) if rest else None

    def send(self, **command: Any) -> None:
        """Send one command without waiting (pair with :meth:`receive`)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float = 120) -> Any:
        """The result of the command sent last."""
        while True:
            line = self._readline(timeout)
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX) :])

    def call(self, timeout: float = 120, **command: Any) -> Any:
        """Send one command and wait for its result."""
        self.send(**command)
        return self.receive(timeout)

    def close(self) -> None:
        """Stop the worker (closing its stdin ends its loop)."""
        if self.proc.poll() is None:
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
