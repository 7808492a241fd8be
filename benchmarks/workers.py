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
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from benchmarks._support import FAKE_KEYS, MODEL, PROMPT, READY_LINE, RESULT_PREFIX

if TYPE_CHECKING:
    from mistralai.client.models import UserMessageTypedDict

perf = time.perf_counter
Params = dict[str, Any]


def _emit(result: Any) -> None:
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def _messages(tag: str) -> list[UserMessageTypedDict]:
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
    from mistral_nbenv.store.layout import cache_dir
    from mistral_nbenv.store.local import open_diskcache

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

    parsed = first.choices[0].message.parsed if first.choices and first.choices[0].message else None
    again = floor()
    if wrapper() != first or again.choices[0].message.parsed != parsed:
        raise RuntimeError("a chat.parse hit does not rebuild the same parsed response")
    if not isinstance(parsed, Book):
        raise RuntimeError("chat.parse did not parse into the caller's model")
    samples = _interleave({"wrapper": wrapper, "floor": floor}, params)
    stats = client.stats
    return {"samples_ms": samples, "hits": stats.hits, "misses": stats.misses}


# --------------------------------------------------------------------------- 2. miss


def miss_latency(params: Params) -> Any:
    """Cache misses against a server answering in ``latency`` seconds, each call timed on its
    own: the wrapper (cache on, a new request each call), the plain SDK, and the floor, a
    bare ``httpx2`` request whose body is validated into the SDK's response model; sync and
    async (one event loop), every round calling all six in a random order."""
    import itertools

    import httpx2
    from mistralai.client.models import ChatCompletionResponse

    import mistral_nbenv

    client = mistral_nbenv.get_client()
    raw = _raw_sdk(params["server_url"])
    url = params["server_url"] + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {FAKE_KEYS['development']}"}
    http, ahttp = httpx2.Client(timeout=30), httpx2.AsyncClient(timeout=30)
    loop = asyncio.new_event_loop()  # one loop: the plain SDK's async client is bound to it
    tags = itertools.count()

    def messages() -> list[UserMessageTypedDict]:
        return _messages(f"miss-{next(tags)}")

    def floor() -> Any:
        response = http.post(url, json={"model": MODEL, "messages": messages()}, headers=headers)
        response.raise_for_status()
        return ChatCompletionResponse.model_validate_json(response.content)

    async def floor_async() -> Any:
        body = {"model": MODEL, "messages": messages()}
        response = await ahttp.post(url, json=body, headers=headers)
        response.raise_for_status()
        return ChatCompletionResponse.model_validate_json(response.content)

    contenders: dict[str, Callable[[], Any]] = {
        "wrapper": lambda: client.chat.complete(model=MODEL, messages=messages()),
        "sdk": lambda: raw.chat.complete(model=MODEL, messages=messages()),
        "floor": floor,
        "wrapper_async": lambda: loop.run_until_complete(
            client.chat.complete_async(model=MODEL, messages=messages())
        ),
        "sdk_async": lambda: loop.run_until_complete(
            raw.chat.complete_async(model=MODEL, messages=messages())
        ),
        "floor_async": lambda: loop.run_until_complete(floor_async()),
    }
    for fn in contenders.values():  # warm-up: imports, connections, first-call setup
        fn()
    rng = random.Random(0)
    per_call: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(int(params["rounds"])):
        order = list(contenders)
        rng.shuffle(order)
        for name in order:
            started, cpu_started = perf(), time.process_time()
            contenders[name]()
            per_call[name].append((perf() - started) * 1e3)
            cpu[name].append((time.process_time() - cpu_started) * 1e3)
    loop.run_until_complete(ahttp.aclose())
    loop.close()
    http.close()
    stats = client.stats
    return {
        "per_call_ms": per_call,
        "cpu_ms": cpu,
        "hits": stats.hits,
        "misses": stats.misses,
    }


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


def async_httpx_serve(params: Params) -> None:
    """A bare ``httpx2.AsyncClient`` posting the same bodies (JSON decoded, nothing else),
    bounded by an ``asyncio.Semaphore`` and a pool of the same size: the floor."""
    import httpx2

    limit = int(params["concurrency"])
    url = str(params["server_url"]).rstrip("/") + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {FAKE_KEYS['development']}"}
    state: dict[str, Any] = {}

    async def batch(n: int, tag: str) -> None:
        http = state.get("http")
        if http is None:
            pool = httpx2.Limits(max_connections=limit, max_keepalive_connections=limit)
            http = state["http"] = httpx2.AsyncClient(timeout=30, limits=pool)
        gate = asyncio.Semaphore(limit)

        async def one(i: int) -> Any:
            async with gate:
                body = {"model": MODEL, "messages": _messages(f"{tag}-{i}")}
                answer = await http.post(url, json=body, headers=headers)
                return answer.json()

        await asyncio.gather(*(one(i) for i in range(n)))

    _async_serve(batch, int(params["warmup"]))


def waiting_tasks(params: Params) -> Any:
    """``n`` concurrent calls on a budget that admits ``rpm`` a minute: after ``seconds``,
    how many were answered and how often the limiter asked its store (the rest still wait,
    in line); then the client's CPU per answered call."""
    import mistral_nbenv

    client = mistral_nbenv.get_client()
    limiter = client._limiter
    n, seconds = int(params["n"]), float(params["seconds"])
    answered = [0]

    async def one(i: int) -> None:
        await client.chat.complete_async(model=MODEL, messages=_messages(f"wait-{i}"))
        answered[0] += 1

    async def main() -> dict[str, Any]:
        await client.chat.complete_async(model=MODEL, messages=_messages("warm"), cache=False)
        before, cpu = limiter.admission_tries, time.process_time()
        answered[0] = 0
        tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
        await asyncio.sleep(seconds)
        result = {
            "answered": answered[0],
            "store_calls": limiter.admission_tries - before,
            "cpu_ms_per_answer": (time.process_time() - cpu) / max(1, answered[0]) * 1e3,
            "waits": client.stats.rate_limit_waits,
        }
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return result

    return asyncio.run(main())


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
        done = [0]

        def calls(tag: str = tag, stop_at: float = stop_at, done: list[int] = done) -> None:
            while time.time() < stop_at:
                client.chat.complete(
                    model=MODEL, messages=_messages(f"{tag}-{done[0]}"), cache=False
                )
                done[0] += 1

        # the window admits the limit at once, then the next a minute on: a call still
        # waiting at stop_at is left waiting (a daemon thread), not waited for
        threading.Thread(target=calls, daemon=True).start()
        time.sleep(max(0.0, stop_at - time.time()))
        stats = client.stats
        _emit(
            {
                "completed": done[0],
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


def _admission(limiter: Any) -> Callable[[], None]:
    """One call's admission: ``acquire`` with a token estimate, then ``reconcile`` with the
    usage the answer reported (the pipeline's two steps around every call)."""

    def admit() -> None:
        slots: list[int] = []
        limiter.acquire(120, slots)
        limiter.reconcile(120, 100, slots)

    return admit


TASKS: dict[str, Callable[[Params], Any]] = {
    "shared_hit": shared_hit,
    "shared_admit": shared_admit,
    "cache_hit": cache_hit,
    "miss_latency": miss_latency,
    "async_wrapper_serve": async_wrapper_serve,
    "async_raw_serve": async_raw_serve,
    "async_httpx_serve": async_httpx_serve,
    "waiting_tasks": waiting_tasks,
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
