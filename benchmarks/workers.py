"""What runs inside the benchmark processes: ``python -m benchmarks.workers TASK JSON``.

One-shot tasks print one ``RESULT <json>`` line.  Serving tasks (names ending in
``_serve``) set up, print ``READY``, then answer one ``RESULT`` line per JSON command read
from stdin until stdin closes.  The parent (:mod:`benchmarks.suite`) has already given the
process a clean environment: fake keys, a settings file pointing at a loopback server.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks._support import FAKE_KEYS, MODEL, PROMPT, READY_LINE, RESULT_PREFIX

perf = time.perf_counter
Params = dict[str, Any]


def _emit(result: Any) -> None:
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def _messages(tag: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{tag} {PROMPT}"}]


def _raw_sdk(server_url: str) -> Any:
    """The plain SDK as a user would make it (no mistral_nbenv code in the process)."""
    from mistralai.client import Mistral

    return Mistral(api_key=FAKE_KEYS["development"], server_url=server_url, timeout_ms=30_000)


def _commands() -> Iterator[Params]:
    sys.stdout.write(READY_LINE + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        if line.strip():
            yield json.loads(line)


# --------------------------------------------------------------------------- 1. cache hit


def _interleave(contenders: dict[str, Callable[[], Any]], params: Params) -> dict[str, list[float]]:
    """ms per call of each contender: a warm-up block each, then ``rounds`` blocks of ``n``
    calls taking turns, the order flipped every round."""
    n, rounds = int(params["n"]), int(params["rounds"])
    order = list(contenders.items())
    for _name, fn in order:  # warm-up
        for _ in range(n):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(rounds):
        for name, fn in order if r % 2 == 0 else order[::-1]:
            started = perf()
            for _ in range(n):
                fn()
            samples[name].append((perf() - started) / n * 1e3)
    return samples


def _the_one_entry(client: Any) -> tuple[Any, str]:
    """The client's disk cache and the key of its only entry (the hit a floor reads)."""
    from mistral_nbenv.cache import cache_dir
    from mistral_nbenv.store.local import open_diskcache
    from mistral_nbenv.store.writebehind import flush_all

    flush_all()  # the store is written behind the call; the floor reads the disk itself
    db = open_diskcache(cache_dir(client.settings))
    keys = list(db)
    if len(keys) != 1:
        raise RuntimeError(f"expected one cached response, found {len(keys)}")
    return db, keys[0]


def cache_hit(params: Params) -> Any:
    """Warm cache hits through ``client.chat.complete`` vs diskcache get + model_validate_json."""
    from mistralai.client.models import ChatCompletionResponse

    import mistral_nbenv

    client = mistral_nbenv.get_client()
    messages = _messages("hit")
    first = client.chat.complete(model=MODEL, messages=messages)
    db, key = _the_one_entry(client)
    stored = db.get(key)
    if not isinstance(stored, str):
        raise RuntimeError(f"cached value is {type(stored).__name__}, not JSON text")

    def wrapper() -> Any:
        return client.chat.complete(model=MODEL, messages=messages)

    def floor() -> Any:
        return ChatCompletionResponse.model_validate_json(db.get(key))

    if wrapper() != first or floor() != first:
        raise RuntimeError("cache hit does not rebuild the same response")
    samples = _interleave({"wrapper": wrapper, "floor": floor}, params)
    stats = client.stats
    return {
        "samples_ms": samples,
        "response_bytes": len(stored.encode()),
        "hits": stats.hits,
        "misses": stats.misses,
        "http_requests": stats.requests,
    }


def parse_hit(params: Params) -> Any:
    """Warm ``chat.parse`` hits (structured output) vs what a hit must do at the least:
    diskcache get + ``model_validate_json`` + the SDK's own schema and parse steps."""
    import pydantic
    from mistralai.client.models import ChatCompletionResponse
    from mistralai.extra.struct_chat import convert_to_parsed_chat_completion_response
    from mistralai.extra.utils.response_format import response_format_from_pydantic_model

    import mistral_nbenv

    class Book(pydantic.BaseModel):
        title: str
        year: int
        authors: list[str]

    client = mistral_nbenv.get_client()
    messages = _messages("parse")
    first = client.chat.parse(response_format=Book, model=MODEL, messages=messages)
    db, key = _the_one_entry(client)

    def wrapper() -> Any:
        return client.chat.parse(response_format=Book, model=MODEL, messages=messages)

    def floor() -> Any:
        response_format_from_pydantic_model(Book)
        response = ChatCompletionResponse.model_validate_json(db.get(key))
        return convert_to_parsed_chat_completion_response(response, Book)

    if wrapper() != first or floor().choices[0].message.parsed != first.choices[0].message.parsed:
        raise RuntimeError("a chat.parse hit does not rebuild the same parsed response")
    if not isinstance(first.choices[0].message.parsed, Book):
        raise RuntimeError("chat.parse did not parse into the caller's model")
    samples = _interleave({"wrapper": wrapper, "floor": floor}, params)
    stats = client.stats
    return {"samples_ms": samples, "hits": stats.hits, "misses": stats.misses}


# --------------------------------------------------------------------------- 2. cache miss


def miss_wrapper_serve(params: Params) -> None:
    """Sequential cache misses through the wrapper (and through its own SDK object).

    ``mode`` ``wrapper`` (or another contender's name): one timed block of ``n`` calls (row 2).
    ``mode`` ``shuffled``: ``n`` cycles, each calling every contender once in a random order
    and timing each call on its own (row 2b): per-call medians of calls that all ran in the
    same conditions, with ``sdk_again`` (the SDK object once more) as the A/A control.
    """
    import mistral_nbenv
    from mistral_nbenv import _fastsdk
    from mistral_nbenv.store.writebehind import flush_all

    client = mistral_nbenv.get_client()
    raw = client.raw  # the SDK object the wrapper calls...
    _fastsdk.install()
    _fastsdk.enter()  # ...in the scope the wrapper gives its own calls (the fast path)
    for i in range(int(params["warmup"])):
        client.chat.complete(model=MODEL, messages=_messages(f"warm-w{i}"))
        raw.chat.complete(model=MODEL, messages=_messages(f"warm-s{i}"))
    # wrapper: hash, lookup, limiter, call, queue the store; refresh: the same without the
    # lookup (cache="refresh": what a lookup that cost nothing would leave); cache_off: the
    # same pipeline with no key, lookup or store; sdk: the wrapper's own SDK object
    contenders: dict[str, tuple[Callable[..., Any], Params]] = {
        "wrapper": (client.chat.complete, {}),
        "refresh": (client.chat.complete, {"cache": "refresh"}),
        "cache_off": (client.chat.complete, {"cache": False}),
        "sdk": (raw.chat.complete, {}),
        "sdk_again": (raw.chat.complete, {}),
    }
    for cmd in _commands():
        n, tag = int(cmd["n"]), str(cmd["tag"])
        hits, misses = client.stats.hits, client.stats.misses
        if cmd["mode"] == "shuffled":
            result: Params = {"per_call_ms": _shuffled_calls(contenders, n, tag, int(cmd["seed"]))}
            flush_all()  # what the wrapper's and refresh's calls queued, before the next command
        else:
            call, extra = contenders[cmd["mode"]]
            cpu, started = time.process_time(), perf()
            for i in range(n):  # a new request each time
                call(model=MODEL, messages=_messages(f"{tag}-{i}"), **extra)
            elapsed, cpu = perf() - started, time.process_time() - cpu
            # The entries the misses queued are written now, outside the timed block: the
            # store is off the caller's path by design (written behind), and left to the writer
            # thread it would land in whichever block runs next. Its cost is reported.
            flushed = perf()
            flush_all()
            result = {
                "ms_per_call": elapsed / n * 1e3,
                "cpu_ms_per_call": cpu / n * 1e3,
                "store_ms_per_entry": (perf() - flushed) / n * 1e3,
            }
        result.update(misses=client.stats.misses - misses, hits=client.stats.hits - hits)
        _emit(result)


def _shuffled_calls(
    contenders: dict[str, tuple[Callable[..., Any], Params]],
    cycles: int,
    tag: str,
    seed: int,
    messages_for: Callable[[str], list[dict[str, str]]] = _messages,
) -> dict[str, list[float]]:
    """ms of each call: ``cycles`` rounds calling every contender once, in a random order.

    Every contender's calls come after every other's equally often, so the state one call
    leaves (CPU caches, the writer thread's batch, a collection) weighs on all alike.
    """
    order, shuffle = list(contenders), random.Random(seed).shuffle
    ms: dict[str, list[float]] = {name: [] for name in order}
    for c in range(cycles):
        shuffle(order)
        for name in order:
            call, extra = contenders[name]
            messages = messages_for(f"{tag}-{name}-{c}")  # a new request each time
            started = perf()
            call(model=MODEL, messages=messages, **extra)
            ms[name].append((perf() - started) * 1e3)
    return ms


def miss_instructions(params: Params) -> Params:
    """Cache misses of every row-2c contender in one process, counted by callgrind per block.

    The parent runs this process under ``valgrind --tool=callgrind`` with instrumentation off
    (imports and the first calls run at near-native speed) and collection only inside
    ``functools.reduce``. After a warm-up the process switches instrumentation on
    (``callgrind_control``) and warms up again so that every path is translated. Then, for
    ``blocks`` rounds, it calls the contenders in a random order, each making ``n`` calls
    inside ``functools.reduce`` followed by a dump named ``<contender>-<round>``: each dump
    holds the instructions the caller's thread executed for those ``n`` calls and nothing
    else (the write-behind's thread is not in that C function, and a dump starts the count
    afresh). Contenders taking turns in one process see the same heap and connection, so
    the state of one process weighs on all alike (A/A: ``sdk_again``).

    The cycle collector is off inside a block and runs, uncounted, after it. A collection
    costs ~250 us and runs every few dozen calls, in whichever call crosses the threshold: a
    call that holds more objects alive at its peak (the wrapper's) crosses it first and
    would be charged for collections the cycles of every call made. What each contender's
    calls leave to the collector is counted instead (``garbage``, cyclic objects per call).
    """
    import functools
    import gc
    import subprocess

    import mistral_nbenv
    from mistral_nbenv import _fastsdk

    n, warmup, blocks = int(params["n"]), int(params["warmup"]), int(params["blocks"])
    control, me = str(params["control"]), str(os.getpid())
    client = mistral_nbenv.get_client()
    _fastsdk.install()
    _fastsdk.enter()  # the scope the wrapper gives its own calls, for the SDK object too
    wrapped, raw = client.chat.complete, client.raw.chat.complete
    contenders: dict[str, tuple[Callable[..., Any], Params]] = {
        "sdk": (raw, {}),
        "sdk_again": (raw, {}),
        "cache_off": (wrapped, {"cache": False}),
        "refresh": (wrapped, {"cache": "refresh"}),
        "wrapper": (wrapped, {}),
    }

    garbage: dict[str, list[float]] = {name: [] for name in contenders}

    def block(name: str, tag: str, count: int) -> None:
        call, extra = contenders[name]
        gc.disable()  # no collection inside the count: one runs after the block, uncounted
        try:
            functools.reduce(
                lambda _, i: call(model=MODEL, messages=_messages(f"{tag}-{i}"), **extra),
                range(count),
                None,
            )
        finally:
            gc.enable()
        garbage[name].append(gc.collect() / count)  # the cycles these calls left behind

    def dump(label: str) -> None:
        subprocess.run([control, "--dump=" + label, me], check=True, capture_output=True)

    for name in contenders:
        block(name, f"warm-{name}", warmup)
    subprocess.run([control, "--instr=on", me], check=True, capture_output=True)
    for name in contenders:
        block(name, f"warm-instrumented-{name}", warmup)
    dump("warm-up")  # what collection may hold so far goes to a dump of its own
    for found in garbage.values():
        found.clear()  # (the warm-up's)
    before = client.stats.as_dict()
    order, shuffle = list(contenders), random.Random(int(params["seed"])).shuffle
    for r in range(blocks):
        shuffle(order)
        for name in order:
            block(name, f"{params['seed']}-{r}-{name}", n)
            dump(f"{name}-{r}")
    made = {k: v - before[k] for k, v in client.stats.as_dict().items() if isinstance(v, int)}
    return {"stats": made, "contenders": list(contenders), "garbage": garbage}


def miss_long_prompt(params: Params) -> Params:
    """Row 2d: cache misses whose request carries a long document, wrapper against its own
    SDK object, call by call in a random order (as row 2b). The document is the system
    message and a short question the user's, so the server's echo (the answer) stays short,
    as a real answer to such a request would."""
    import mistral_nbenv
    from mistral_nbenv import _fastsdk
    from mistral_nbenv.store.writebehind import flush_all

    line = "Quarterly report, section {}: revenue, costs and outlook, in plain words.\n"
    document = "".join(line.format(i) for i in range(int(params["kib"]) * 1024 // 72))

    def messages(tag: str) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": document},
            {"role": "user", "content": f"{tag}: what changed since last quarter?"},
        ]

    client = mistral_nbenv.get_client()
    raw = client.raw
    _fastsdk.install()
    _fastsdk.enter()
    contenders: dict[str, tuple[Callable[..., Any], Params]] = {
        "wrapper": (client.chat.complete, {}),
        "sdk": (raw.chat.complete, {}),
        "sdk_again": (raw.chat.complete, {}),
    }
    _shuffled_calls(contenders, int(params["warmup"]), "warm", 0, messages)
    flush_all()
    misses, hits = client.stats.misses, client.stats.hits
    ms = _shuffled_calls(contenders, int(params["cycles"]), "long", 1, messages)
    flush_all()
    made = {"misses": client.stats.misses - misses, "hits": client.stats.hits - hits}
    return {"per_call_ms": ms, "chars": len(document), **made}


def miss_raw_serve(params: Params) -> None:
    """Sequential calls through the plain SDK, same server, same requests."""
    raw = _raw_sdk(params["server_url"])
    for i in range(int(params["warmup"])):
        raw.chat.complete(model=MODEL, messages=_messages(f"warm-r{i}"))
    if "mistral_nbenv" in sys.modules:
        raise RuntimeError("the raw SDK process must not load mistral_nbenv")
    for cmd in _commands():
        n, tag = int(cmd["n"]), str(cmd["tag"])
        cpu, started = time.process_time(), perf()
        for i in range(n):
            raw.chat.complete(model=MODEL, messages=_messages(f"{tag}-{i}"))
        elapsed, cpu = perf() - started, time.process_time() - cpu
        _emit({"ms_per_call": elapsed / n * 1e3, "cpu_ms_per_call": cpu / n * 1e3})


# --------------------------------------------------------------------------- 6. async


def _async_serve(run_batch: Callable[[int, str], Any], warmup: int) -> None:
    # One loop for the whole process: the plain SDK's async client is bound to its first loop.
    loop = asyncio.new_event_loop()
    loop.run_until_complete(run_batch(warmup, "warm"))
    for cmd in _commands():
        n, tag = int(cmd["n"]), str(cmd["tag"])
        cpu, started = time.process_time(), perf()
        loop.run_until_complete(run_batch(n, tag))
        elapsed, cpu = perf() - started, time.process_time() - cpu
        _emit({"elapsed": elapsed, "rps": n / elapsed, "cpu_ms_per_req": cpu / n * 1e3})
    loop.close()


def async_wrapper_serve(params: Params) -> None:
    """``n`` concurrent ``complete_async`` misses; the client's own limit (10) bounds them."""
    import mistral_nbenv

    client = mistral_nbenv.get_client()
    limit = client.settings.features.max_concurrent_requests

    async def batch(n: int, tag: str) -> None:
        await asyncio.gather(
            *(
                client.chat.complete_async(model=MODEL, messages=_messages(f"{tag}-{i}"))
                for i in range(n)
            )
        )

    if limit != int(params["concurrency"]):
        raise RuntimeError(f"max_concurrent_requests is {limit}")
    _async_serve(batch, int(params["warmup"]))


def async_raw_serve(params: Params) -> None:
    """The plain SDK doing the same, bounded by an ``asyncio.Semaphore`` of the same size."""
    raw = _raw_sdk(params["server_url"])
    limit = int(params["concurrency"])

    async def batch(n: int, tag: str) -> None:
        gate = asyncio.Semaphore(limit)

        async def one(i: int) -> Any:
            async with gate:
                return await raw.chat.complete_async(model=MODEL, messages=_messages(f"{tag}-{i}"))

        await asyncio.gather(*(one(i) for i in range(n)))

    _async_serve(batch, int(params["warmup"]))


# --------------------------------------------------------------------------- 4. switch


def switch(params: Params) -> Any:
    """First switch to staging + its first client, in a session already using development."""
    started = perf()
    from mistralai.client import Mistral  # excluded from the figure, as the issue asks

    sdk_import = perf() - started
    started = perf()
    import mistral_nbenv

    dev = mistral_nbenv.get_client()
    dev.raw  # noqa: B018 - the session's first client, fully built
    dev_first = perf() - started

    t0 = perf()
    mistral_nbenv.use_environment("staging")
    t1 = perf()
    client = mistral_nbenv.get_client()
    t2 = perf()
    client.raw  # noqa: B018 - the SDK object behind it, ready to send
    t3 = perf()
    if client.environment != "staging":
        raise RuntimeError(f"switched to {client.environment}")

    # Reference: what the same step costs with the SDK alone (constructing its client).
    t4 = perf()
    plain = Mistral(api_key=FAKE_KEYS["staging"], server_url=params["server_url"])
    t5 = perf()
    del plain
    return {
        "switch_ms": (t3 - t0) * 1e3,
        "use_environment_ms": (t1 - t0) * 1e3,
        "get_client_ms": (t2 - t1) * 1e3,
        "raw_ms": (t3 - t2) * 1e3,
        "sdk_client_ms": (t5 - t4) * 1e3,
        "first_client_ms": dev_first * 1e3,
        "sdk_import_ms": sdk_import * 1e3,
    }


# --------------------------------------------------------------------------- 7. memory


def _rss_mb() -> dict[str, float]:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    current = 0.0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
    return {"peak_mb": peak, "current_mb": current}


def memory(params: Params) -> Any:
    """Peak RSS after ``%load_ext`` and ``calls`` cached calls (or the SDK-only reference)."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    calls, distinct = int(params["calls"]), int(params["distinct"])
    if params["mode"] == "reference":
        raw = _raw_sdk(params["server_url"])
        raw.chat.complete(model=MODEL, messages=_messages("mem-0"))
        return {**_rss_mb(), "calls": 1}

    shell.run_line_magic("load_ext", "mistral_nbenv")
    import mistral_nbenv

    client = mistral_nbenv.get_client()
    for i in range(distinct):  # fill the cache
        client.chat.complete(model=MODEL, messages=_messages(f"mem-{i}"))
    hits_before = client.stats.hits
    for i in range(calls):
        client.chat.complete(model=MODEL, messages=_messages(f"mem-{i % distinct}"))
    hits = client.stats.hits - hits_before
    if hits != calls:
        raise RuntimeError(f"{calls - hits} of the {calls} calls were not cache hits")
    return {**_rss_mb(), "calls": calls, "hits": hits}


# --------------------------------------------------------------------------- 5. rate limit


def ratelimit_serve(params: Params) -> None:
    """Call as fast as the shared budget allows from ``start_at`` to ``stop_at`` (epoch s)."""
    import mistral_nbenv

    client = mistral_nbenv.get_client()
    client.raw  # noqa: B018 - build the SDK object before the window opens
    # Warm the SDK's per-process caches through another environment (its own budget), so a
    # slow first call cannot leave tokens unspent in the measured one.
    warm = mistral_nbenv.get_client("staging")
    for i in range(3):
        warm.chat.complete(model=MODEL, messages=_messages(f"warm-{i}"), cache=False)
    for cmd in _commands():
        tag = str(cmd["tag"])
        start_at, stop_at = float(cmd["start_at"]), float(cmd["stop_at"])
        late = time.time() - start_at
        time.sleep(max(0.0, -late))
        done = 0
        while time.time() < stop_at:
            client.chat.complete(
                model=MODEL, messages=[{"role": "user", "content": f"{tag}-{done}"}], cache=False
            )
            done += 1
        stats = client.stats
        _emit(
            {
                "completed": done,
                "late_start_s": max(0.0, late),
                "rate_limit_waits": stats.rate_limit_waits,
                "wait_seconds": stats.rate_limit_wait_seconds,
            }
        )


# --------------------------------------------------------------------------- 8. shared store


def shared_hit(params: Params) -> Any:
    """Redis cache hits through ``client.chat.complete`` vs redis GET + model_validate_json."""
    from mistralai.client.models import ChatCompletionResponse

    import mistral_nbenv
    from mistral_nbenv.store.redis import connect

    client = mistral_nbenv.get_client()
    messages = _messages("shared-hit")
    first = client.chat.complete(model=MODEL, messages=messages)
    # the floor uses the wrapper's own redis-py client: same socket options, same connection
    redis = connect(params["redis_url"], timeout=client.settings.shared.timeout, location="-")
    keys = list(redis.sync().scan_iter("mistral-nbenv:cache:*"))
    if len(keys) != 1:
        raise RuntimeError(f"expected one response in Redis, found {len(keys)}")
    key, db = keys[0], redis.sync()

    def wrapper() -> Any:
        return client.chat.complete(model=MODEL, messages=messages)

    def floor() -> Any:
        return ChatCompletionResponse.model_validate_json(db.get(key))

    if wrapper() != first or floor() != first:
        raise RuntimeError("a Redis hit does not rebuild the same response")
    samples = _interleave({"wrapper": wrapper, "floor": floor}, params)
    stats = client.stats
    if stats.requests != 1:
        raise RuntimeError(f"expected one HTTP request (the first miss), saw {stats.requests}")
    return {"samples_ms": samples, "response_bytes": len(db.get(key).encode())}


def shared_admit(params: Params) -> Any:
    """One admission against the Redis budget (``acquire`` + ``reconcile``, as every call
    does) vs one bare round trip (PING) on the same connection."""
    import mistral_nbenv
    from mistral_nbenv.store.redis import connect

    client = mistral_nbenv.get_client()
    limiter = client._limiter
    if limiter._shared is None:
        raise RuntimeError("the budget is not shared: check the project's [development.shared]")
    redis = connect(params["redis_url"], timeout=client.settings.shared.timeout, location="-")
    db = redis.sync()
    before = db.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)

    samples = _interleave({"admission": _admission(limiter), "ping": db.ping}, params)
    after = db.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    admissions = (int(params["rounds"]) + 1) * int(params["n"])
    return {
        "samples_ms": samples,
        "evalsha_per_admission": (after - before) / admissions,
        "waits": client.stats.rate_limit_waits,
    }


def local_admit(params: Params) -> Any:
    """One admission against the local budget file at a rate that batches nothing (every
    request is a transaction: below 1,200 rpm), vs a bare read-modify-write of one SQLite row
    on the same disk; and the same admission on a diskcache directory (the store before).

    Each limiter's clock moves a second per reading, so every admission finds a refilled
    budget and none waits: what is timed is the admission's own work.
    """
    import itertools
    import sqlite3

    import mistral_nbenv
    from mistral_nbenv.cache import cache_dir
    from mistral_nbenv.ratelimit import RateLimiter
    from mistral_nbenv.store.budgetfile import budget_file
    from mistral_nbenv.store.local import DiskStore

    settings = mistral_nbenv.get_client().settings
    rpm, tpm = float(params["rpm"]), float(settings.rate_limits.tokens_per_minute)
    root = cache_dir(settings)
    root.mkdir(parents=True, exist_ok=True)

    def limiter(store: Any) -> Any:
        ticks = itertools.count(time.time(), 1.0)
        return RateLimiter(
            store,
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
            clock=lambda: next(ticks),
            sleep=_never_sleeps,
        )

    file_limiter = limiter(budget_file(root / "ratelimit"))
    disk_limiter = limiter(DiskStore(root / "ratelimit-diskcache"))
    floor_db = sqlite3.connect(str(root / "floor.db"), isolation_level=None)
    floor_db.execute("PRAGMA journal_mode = WAL")
    floor_db.execute("PRAGMA synchronous = NORMAL")
    floor_db.execute(
        "CREATE TABLE IF NOT EXISTS t (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID"
    )

    def write() -> None:  # the least an atomic read-modify-write of one row can do
        floor_db.execute("BEGIN IMMEDIATE")
        floor_db.execute("SELECT value FROM t WHERE key = 'bucket'").fetchone()
        floor_db.execute("INSERT OR REPLACE INTO t VALUES ('bucket', ?)", (repr(time.time()),))
        floor_db.execute("COMMIT")

    samples = _interleave(
        {
            "admission": _admission(file_limiter),
            "diskcache": _admission(disk_limiter),
            "write": write,
        },
        params,
    )
    return {"samples_ms": samples, "batch": file_limiter._batch, "tpm": tpm}


def _admission(limiter: Any) -> Callable[[], None]:
    """One call's admission: ``acquire`` with a token estimate, then ``reconcile`` with the
    usage the answer reported (the pipeline's two steps around every call)."""

    def admit() -> None:
        limiter.acquire(120)
        limiter.reconcile(120, 100)

    return admit


def _never_sleeps(seconds: float) -> None:
    raise RuntimeError(f"the benchmark's limiter was asked to wait {seconds:.3f} s")


TASKS: dict[str, Callable[[Params], Any]] = {
    "shared_hit": shared_hit,
    "shared_admit": shared_admit,
    "local_admit": local_admit,
    "cache_hit": cache_hit,
    "miss_wrapper_serve": miss_wrapper_serve,
    "miss_raw_serve": miss_raw_serve,
    "miss_instructions": miss_instructions,
    "miss_long_prompt": miss_long_prompt,
    "async_wrapper_serve": async_wrapper_serve,
    "async_raw_serve": async_raw_serve,
    "parse_hit": parse_hit,
    "switch": switch,
    "memory": memory,
    "ratelimit_serve": ratelimit_serve,
}


def main(argv: list[str]) -> int:
    """Run one task: ``TASK JSON_PARAMS``."""
    task, params = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    if os.environ.get("MISTRAL_API_KEY"):
        raise SystemExit("refusing to run with MISTRAL_API_KEY set")
    result = TASKS[task](params)
    if not task.endswith("_serve"):
        _emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
