"""``[E.shared]`` in one process (issue 11): settings, masking, the Redis views, faults.

The real Debian ``redis-server`` (``tests/redis_server.py``) and the loopback Mistral
server; several processes are in ``test_shared_hosts.py``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mistral_nbenv
from mistral_nbenv.errors import ConfigurationError, SharedStoreUnavailableError
from mistral_nbenv.store import shared as shared_module
from mistral_nbenv.store.shared import SharedStoreWarning
from mistral_nbenv.testing import MistralTestServer
from mistral_nbenv.testing.redis import RedisTestServer
from mistral_nbenv.workspace import close_clients
from tests._browser_project import KEYS, loopback_project, use_project
from tests._cli import run_cli
from tests.conftest import reset_state

MESSAGES = [{"role": "user", "content": "hello shared"}]


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MistralTestServer]:
    with loopback_project(tmp_path / "p", monkeypatch) as srv:
        yield srv


def _share(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: MistralTestServer,
    url: str,
    *,
    extra: str = "",
    rpm: int | None = None,
) -> Path:
    """The loopback project with ``[development.shared] url`` (and ``extra`` lines there)."""
    text = (
        "[development.cache]\nenabled = true\nttl_seconds = 300\n"
        f'[development.shared]\nurl = "{url}"\n{extra}\n'
    )
    path = use_project(tmp_path / "p", server.url, monkeypatch, extra=text)
    if rpm is not None:
        old = "[development.rate_limits]\nrequests_per_minute = 100000\n"
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, old.replace("100000", str(rpm))))
    return path


# ------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        ('url = "http://127.0.0.1:6379"', "must start with redis://, rediss:// or unix://"),
        ('url = "redis://:Pw-Not-Shown-1234@/0"', "has no host"),
        ('url = "redis://127.0.0.1:99999/0"', "has an invalid port"),
        ('url = "redis://127.0.0.1:6379/zero"', "database that is not a number"),
        ('url = "vault:nomount"', "shared.url"),
        ('on_unavailable = "maybe"', "`shared.on_unavailable` must be 'local' or 'error'"),
        ("timeout = 0", "`shared.timeout` must be a number > 0"),
        ("cache = 1", "`shared.cache` must be true or false"),
    ],
)
def test_bad_shared_settings_name_the_key_and_the_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: MistralTestServer,
    line: str,
    expect: str,
) -> None:
    use_project(tmp_path / "p", server.url, monkeypatch, extra=f"[development.shared]\n{line}\n")
    with pytest.raises(ConfigurationError) as info:
        mistral_nbenv.get_settings("development")
    message = str(info.value)
    assert expect in message
    assert "settings.toml [development]" in message
    assert "Pw-Not-Shown-1234" not in message


@pytest.mark.parametrize(
    "prices",
    [
        'prices = { "mistral-small-latest" = { input = -1 } }',
        'prices = { "mistral-small-latest" = { input = 0.1, outptu = 0.3 } }',
        'prices = { "mistral-small-latest" = 3 }',
        'prices = "cheap"',
    ],
)
def test_bad_prices_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer, prices: str
) -> None:
    path = use_project(tmp_path / "p", server.url, monkeypatch)
    path.write_text(path.read_text().replace("[development]\n", f"[development]\n{prices}\n"))
    with pytest.raises(ConfigurationError, match=r"`prices` must be a table of model"):
        mistral_nbenv.get_settings("development")


def test_env_reference_must_be_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer
) -> None:
    _share(tmp_path, monkeypatch, server, "env:TEAM_REDIS_URL")
    with pytest.raises(ConfigurationError, match="TEAM_REDIS_URL is not set"):
        mistral_nbenv.get_client("development")
    monkeypatch.setenv("TEAM_REDIS_URL", "http://nope")
    reset_state()
    with pytest.raises(ConfigurationError, match="must start with redis://"):
        mistral_nbenv.get_client("development")


# ------------------------------------------------------------------------- the shared views


def test_cache_budget_and_ledger_live_in_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer, redis_server
) -> None:
    _share(tmp_path, monkeypatch, server, redis_server.url)
    client = mistral_nbenv.get_client("development")
    first = client.chat.complete(messages=MESSAGES)
    again = client.chat.complete(messages=MESSAGES)
    assert server.count("/v1/chat/completions") == 1
    assert again.model_dump() == first.model_dump()
    redis = redis_server.client()
    cached = redis.keys("mistral-nbenv:cache:development:*")
    assert len(cached) == 1
    assert json.loads(redis.get(cached[0]))["id"] == first.id
    assert 0 < redis.pttl(cached[0]) <= 300_000  # the TTL is Redis's
    # the budget: one hash-tagged key per environment and key fingerprint, no key inside
    (budget,) = redis.keys("mistral-nbenv:{development:*}:budget")
    assert KEYS["development"] not in budget
    window = json.loads(redis.get(budget))
    assert sum(entry[1] for entry in window["w"]) == 1  # one admission in the window
    # one admission, and the token estimate corrected with the answer's usage, written through
    assert redis_server.calls("evalsha") + redis_server.calls("eval") == 2
    (bucket,) = redis.keys("mistral-nbenv:usage:*")
    model = mistral_nbenv.get_settings("development").chat_model
    assert bucket.endswith(f"|development|{model}")
    counters = redis.hgetall(bucket)
    assert float(counters["requests"]) == 1
    assert float(counters["hits"]) == 1
    assert float(counters["prompt_tokens"]) == first.usage.prompt_tokens
    # nothing went to the local stores
    root = tmp_path / "p" / "cache"
    assert not (root / "budgets").exists()
    assert not (root / "development" / "usage").exists()


def test_two_keys_have_two_budgets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer, redis_server
) -> None:
    path = _share(tmp_path, monkeypatch, server, redis_server.url)
    path.write_text(
        path.read_text()
        + f'[staging.shared]\nurl = "{redis_server.url}"\n'
        + f'[qa.shared]\nurl = "{redis_server.url}"\n'
    )
    reset_state()
    for env in ("development", "staging", "qa"):
        mistral_nbenv.get_client(env).chat.complete(messages=MESSAGES, cache=False)
    budgets = redis_server.client().keys("mistral-nbenv:*:budget")
    assert len(budgets) == 3
    assert len({b.split(":")[2].rstrip("}") for b in budgets}) == 3  # three fingerprints


def test_async_calls_are_admitted_through_redis_asyncio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer, redis_server
) -> None:
    _share(tmp_path, monkeypatch, server, redis_server.url)
    client = mistral_nbenv.get_client("development")

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(
                client.chat.complete_async(messages=[{"role": "user", "content": f"n{i}"}])
                for i in range(5)
            )
        )

    answers = asyncio.run(main())
    assert len(answers) == 5
    assert server.count("/v1/chat/completions") == 5
    assert redis_server.calls("evalsha") + redis_server.calls("eval") == 10  # admit + correct
    assert len(redis_server.client().keys("mistral-nbenv:cache:development:*")) == 5


def test_the_rate_is_enforced_by_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer, redis_server
) -> None:
    _share(tmp_path, monkeypatch, server, redis_server.url, rpm=5)  # 5 at once, 5 a minute
    client = mistral_nbenv.get_client("development")
    for i in range(5):
        client.chat.complete(messages=[{"role": "user", "content": f"r{i}"}], cache=False)
    assert client.stats.rate_limit_waits == 0  # five at once
    # another process with the same key asks Redis for a sixth: not before the first
    # admission's slot has left the window, a minute on
    other = mistral_nbenv.get_client("development")._limiter
    close_clients()
    wait, slot = other._run(cost=0.0, admit=True)
    assert slot == -1
    assert 55.0 < wait <= 61.0
    redis = redis_server.client()
    (budget,) = redis.keys("mistral-nbenv:{development:*}:budget")
    assert sum(entry[1] for entry in json.loads(redis.get(budget))["w"]) == 5


def test_the_event_loop_keeps_running_while_redis_is_slow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer, redis_server
) -> None:
    """Every Redis round trip of an async call (the cache lookup, the admission, the usage
    and cache writes) leaves the event loop free: other tasks tick while Redis sleeps."""
    _share(tmp_path, monkeypatch, server, redis_server.url, extra="timeout = 5")
    client = mistral_nbenv.get_client("development")
    client.chat.complete(messages=MESSAGES)  # cached in Redis, connections open
    redis = redis_server.client()

    async def run() -> tuple[int, str | None]:
        ticks = 0
        slow = threading.Thread(target=lambda: redis.execute_command("DEBUG", "SLEEP", "0.6"))
        slow.start()
        await asyncio.sleep(0.05)  # Redis is asleep now
        call = asyncio.ensure_future(client.chat.complete_async(messages=MESSAGES))
        while not call.done():
            await asyncio.sleep(0.01)
            ticks += 1
        slow.join()
        return ticks, (await call).choices[0].message.content

    ticks, content = asyncio.run(run())
    assert content == "Echo: hello shared"
    assert client.stats.hits == 1  # served from Redis, after it woke up
    assert ticks >= 20, "the event loop stopped while Redis was slow"  # 0.5 s of 10 ms ticks


@pytest.fixture
def blocking_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The commands sent with the synchronous Redis client from a thread running an event
    loop (each a round trip that stops the loop): an async path awaits ``redis.asyncio`` or
    hands the step to a worker thread, so this list stays empty."""
    import redis.connection

    seen: list[str] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def watched(self: Any, command: Any, check_health: bool = True) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # a worker thread, or a sync call: waiting here stops no loop
        else:
            packed = b"".join(command) if isinstance(command, list) else bytes(command)
            seen.append(packed.split(b"\r\n")[2].decode("latin-1"))  # the command's name
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", watched)
    return seen


def test_no_async_path_waits_on_redis_on_the_event_loop(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: MistralTestServer,
    redis_server,
    blocking_calls: list[str],
) -> None:
    """Misses, hits, streams read to the end and replayed, a stream cut mid-way, a call the
    server refuses, a 429 whose pause every host shares, a daily budget: every Redis step
    of an async call is awaited or runs in a worker thread."""
    from mistral_nbenv import APIConnectionError, APIError
    from mistral_nbenv.testing import Fault

    budget = "timeout = 5\n[development.budget]\ndaily_usd = 100\n"  # spend shared too
    path = _share(tmp_path, monkeypatch, server, redis_server.url, rpm=100, extra=budget)
    path.write_text(path.read_text().replace("max_retries = 0", "max_retries = 2"))
    client = mistral_nbenv.get_client("development")
    ask = [{"role": "user", "content": "every async path"}]

    async def read(stream: Any) -> str:
        return "".join([ev.data.choices[0].delta.content or "" async for ev in stream])

    async def run() -> list[str]:
        got = [(await client.chat.complete_async(messages=ask)).choices[0].message.content]
        got.append((await client.chat.complete_async(messages=ask)).choices[0].message.content)
        stream_ask = [{"role": "user", "content": "streamed"}]
        got.append(await read(await client.chat.stream_async(messages=stream_ask)))
        got.append(await read(await client.chat.stream_async(messages=stream_ask)))
        server.fail_next(1, Fault.drop_mid_stream(1))
        with pytest.raises(APIConnectionError):
            await read(await client.chat.stream_async(messages=[{"role": "user", "content": "c"}]))
        server.fail_next(1, Fault.status(400))
        with pytest.raises(APIError):
            await client.chat.complete_async(messages=[{"role": "user", "content": "no"}])
        server.fail_next(1, Fault.rate_limit(1))
        got.append(
            (await client.chat.complete_async(messages=[{"role": "user", "content": "429"}]))
            .choices[0]
            .message.content
        )
        return got

    got = asyncio.run(run())
    assert got == [
        "Echo: every async path",
        "Echo: every async path",
        "Echo: streamed",
        "Echo: streamed",
        "Echo: 429",
    ]
    assert client.stats.hits == 2
    assert client.stats.retries == 1
    assert client.spending.spent()[0] > 0  # the budget in Redis was reserved and settled
    assert redis_server.calls("evalsha") + redis_server.calls("eval") > 0  # Redis was used
    assert blocking_calls == [], f"sync Redis commands on the event loop: {blocking_calls}"


# --------------------------------------------------------------------------- password


def test_a_password_protected_redis_and_its_password_appear_nowhere(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: MistralTestServer,
    redis_with_password: RedisTestServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = redis_with_password.password
    assert password
    _share(tmp_path, monkeypatch, server, redis_with_password.url)
    client = mistral_nbenv.get_client("development")
    with caplog.at_level("DEBUG"):
        client.chat.complete(messages=MESSAGES)
        client.chat.complete(messages=MESSAGES)
    assert client.stats.hits == 1
    settings = mistral_nbenv.get_settings("development")
    shown = dict((k, v) for k, v, _ in settings.explain())["shared.url"]
    assert shown == f"redis://:****@127.0.0.1:{redis_with_password.port}/0"
    outputs = [repr(settings), repr(client), repr(client._cache), repr(client._limiter), shown]
    for args in (
        ("status", "development"),
        ("status", "development", "--json"),
        ("check", "--all", "--json"),
        ("cache", "stats", "--env", "development", "--json"),
        ("usage", "--json"),
    ):
        done = run_cli(*args, cwd=tmp_path / "p")
        outputs += [done.stdout, done.stderr]
    stats = json.loads(run_cli("cache", "stats", "--env", "development", "--json").stdout)
    assert stats["shared"] == f"redis://:****@127.0.0.1:{redis_with_password.port}/0"
    assert stats["entries"] == 1
    # wrong password: a clear error that does not quote it
    path = tmp_path / "p" / "settings.toml"
    path.write_text(path.read_text().replace(password, "Wrong-Pass-Fake-0000"))
    path.write_text(path.read_text() + 'on_unavailable = "error"\n')
    reset_state()
    with pytest.raises(SharedStoreUnavailableError) as info:
        mistral_nbenv.get_client("development").chat.complete(messages=MESSAGES, cache=False)
    outputs += [str(info.value), repr(info.value)]
    assert "redis://:****@127.0.0.1" in str(info.value)
    assert "development" in str(info.value)
    blob = "\n".join([*outputs, caplog.text])
    assert password not in blob
    assert "Wrong-Pass-Fake-0000" not in blob


# ----------------------------------------------------------------------------- faults


def test_redis_down_goes_local_with_one_warning_then_rejoins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer, redis_server
) -> None:
    monkeypatch.setattr(shared_module, "REJOIN_AFTER", 0.2)
    _share(tmp_path, monkeypatch, server, redis_server.url, rpm=600)
    client = mistral_nbenv.get_client("development")
    client.chat.complete(messages=[{"role": "user", "content": "before"}])
    redis_server.stop()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(3):
            client.chat.complete(messages=[{"role": "user", "content": f"down {i}"}])
    shared_warnings = [w for w in caught if issubclass(w.category, SharedStoreWarning)]
    assert len(shared_warnings) == 1
    assert "development" in str(shared_warnings[0].message)
    assert f"127.0.0.1:{redis_server.port}" in str(shared_warnings[0].message)
    assert server.count("/v1/chat/completions") == 4  # every call went on
    assert (tmp_path / "p" / "cache" / "budgets").is_dir()  # admitted locally meanwhile
    # Redis is back (empty: persistence is off); after REJOIN_AFTER the next call uses it
    redis_server.start()

    time.sleep(0.3)
    for i in range(3):
        client.chat.complete(messages=[{"role": "user", "content": f"back {i}"}], cache=False)
    redis = redis_server.client()
    (budget,) = redis.keys("mistral-nbenv:{development:*}:budget")
    # exactly the three calls made after the rejoin are in the fresh window
    assert sum(entry[1] for entry in json.loads(redis.get(budget))["w"]) == 3
    # admit + correct per call, and the one merge of the usage recorded while it was down
    assert redis_server.calls("evalsha") + redis_server.calls("eval") == 7


def test_redis_down_with_on_unavailable_error_raises_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer, redis_server
) -> None:
    _share(tmp_path, monkeypatch, server, redis_server.url, extra='on_unavailable = "error"')
    client = mistral_nbenv.get_client("development")
    redis_server.stop()
    with pytest.raises(SharedStoreUnavailableError) as info:
        client.chat.complete(messages=MESSAGES)
    message = str(info.value)
    assert "environment 'development'" in message
    assert f"redis://127.0.0.1:{redis_server.port}/0" in message
    assert 'on_unavailable = "local"' in message
    assert info.value.environment == "development"
    assert server.count() == 0  # nothing was sent without the shared budget
    done = run_cli("cache", "stats", "--env", "development", cwd=tmp_path / "p")
    assert done.returncode != 0
    assert "unavailable" in done.stdout + done.stderr


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung Redis)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


@pytest.mark.timeout(20)
def test_a_redis_that_never_answers_does_not_hang_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer, silent_port: int
) -> None:
    url = f"redis://127.0.0.1:{silent_port}/0"
    _share(tmp_path, monkeypatch, server, url, extra="timeout = 0.3")
    client = mistral_nbenv.get_client("development")
    with pytest.warns(SharedStoreWarning, match="Timeout"):
        answer = client.chat.complete(messages=MESSAGES)
    assert answer.choices[0].message.content
    assert server.count("/v1/chat/completions") == 1


# ------------------------------------------------------------------------------ usage


def test_usage_report_with_prices_and_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer, redis_server
) -> None:
    path = _share(tmp_path, monkeypatch, server, redis_server.url)
    path.write_text(
        path.read_text().replace(
            "[default]\n",
            '[default]\nprices = { "mistral-medium-latest" = { input = 2.0, output = 6.0 } }\n',
        )
    )
    reset_state()
    client = mistral_nbenv.get_client("development")
    a = client.chat.complete(messages=MESSAGES)
    client.chat.complete(messages=MESSAGES)
    b = client.chat.complete(messages=[{"role": "user", "content": "other"}])
    staging = mistral_nbenv.get_client("staging")  # not shared: its local ledger
    s = staging.chat.complete(messages=MESSAGES)
    close_clients()
    done = run_cli("usage", "--json", cwd=tmp_path / "p")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["schema"] == "mistral-nbenv/usage/1"
    by_env = {r["environment"]: r for r in report["rows"]}
    dev = by_env["development"]
    assert (dev["requests"], dev["hits"]) == (2, 1)
    prompt = a.usage.prompt_tokens + b.usage.prompt_tokens
    completion = a.usage.completion_tokens + b.usage.completion_tokens
    assert (dev["prompt_tokens"], dev["completion_tokens"]) == (prompt, completion)
    assert dev["cost"] == pytest.approx((prompt * 2.0 + completion * 6.0) / 1e6)
    assert by_env["staging"]["requests"] == 1
    assert by_env["staging"]["prompt_tokens"] == s.usage.prompt_tokens
    assert report["ledgers"]["development"].startswith("redis://127.0.0.1:")
    assert report["ledgers"]["staging"].endswith("usage")
    text = run_cli("usage", cwd=tmp_path / "p").stdout
    assert "tokens per day" in text
    assert "█" in text
    assert "development: 2 requests, 1 cache hits" in text


def test_usage_is_counted_on_local_disk_without_a_shared_store(
    server: MistralTestServer, tmp_path: Path
) -> None:
    client = mistral_nbenv.get_client("development")
    for _ in range(2):
        client.chat.complete(messages=MESSAGES, cache=True)
    from mistral_nbenv.ui.reports import collect_usage

    report = collect_usage()
    (row,) = report.rows
    assert (row.environment, row.requests, row.hits) == ("development", 1, 1)
    # priced when the answer came, at the packaged price of the model the answer names
    from mistral_nbenv.config.prices import packaged

    price = packaged().price(row.model)
    assert price is not None
    expected = (row.prompt_tokens * price.input + row.completion_tokens * price.output) / 1e6
    assert row.cost == pytest.approx(expected)
    assert expected > 0
    assert row.priced_with == (packaged().version,)
    assert row.saved == pytest.approx(expected)  # the hit saved one answer's cost
    assert report.ledgers["development"] == str(tmp_path / "p" / "cache" / "development" / "usage")
    from mistral_nbenv.ui.display import usage_chart_svg

    svg = usage_chart_svg(report)
    assert 'data-environment="development"' in svg
    assert f'data-tokens="{row.tokens}"' in svg


def test_usage_counted_on_each_side_of_midnight_utc_lands_in_two_days() -> None:
    from mistral_nbenv.policies.usage import UsageRecorder
    from mistral_nbenv.store.local import MemoryStore

    ledger = MemoryStore()
    now = [1_764_892_799.5]  # 2025-12-04 23:59:59.5 UTC
    recorder = UsageRecorder(ledger, "staging", clock=lambda: now[0])
    recorder.record("m", requests=1)
    now[0] += 1.0  # 2025-12-05 00:00:00.5 UTC
    recorder.record("m", requests=2)
    recorder.record(None, requests=4)
    assert ledger.totals() == {
        "2025-12-04|staging|m": {"requests": 1.0},
        "2025-12-05|staging|m": {"requests": 2.0},
        "2025-12-05|staging|-": {"requests": 4.0},
    }


def test_usage_is_in_the_ledger_before_record_returns_and_a_failing_ledger_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from mistral_nbenv.policies.usage import UsageRecorder
    from mistral_nbenv.store.local import MemoryStore

    ledger = MemoryStore()
    recorder = UsageRecorder(ledger, "staging", clock=lambda: 1_764_892_000.0)
    recorder.record("m", requests=1, prompt_tokens=10, completion_tokens=5)
    assert ledger.totals() == {
        "2025-12-04|staging|m": {"requests": 1.0, "prompt_tokens": 10.0, "completion_tokens": 5.0}
    }

    class Full(MemoryStore):
        def add(self, bucket: str, amounts: Any) -> None:
            raise OSError("disk full")

    with caplog.at_level("WARNING"):
        UsageRecorder(Full(), "staging").record("m", requests=1)  # never raises
    assert "staging: usage counts could not be written (OSError)" in caplog.text


def test_usage_recorded_while_redis_was_down_is_merged_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer, redis_server
) -> None:
    from mistral_nbenv.store.layout import open_stores
    from mistral_nbenv.ui.reports import collect_usage

    monkeypatch.setattr(shared_module, "REJOIN_AFTER", 0.2)
    _share(tmp_path, monkeypatch, server, redis_server.url)
    client = mistral_nbenv.get_client("development")
    redis_server.stop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SharedStoreWarning)
        for i in range(3):
            client.chat.complete(messages=[{"role": "user", "content": f"down {i}"}])
    redis_server.start()
    time.sleep(0.3)
    for i in range(2):
        client.chat.complete(messages=[{"role": "user", "content": f"back {i}"}], cache=False)
    assert server.count("/v1/chat/completions") == 5

    def requests() -> float:
        report = collect_usage("development")
        return sum(row.requests for row in report.rows)

    assert requests() == 5  # every request the server answered
    reset_state()
    assert requests() == 5  # read again by a fresh workspace: merged once, not twice
    redis = redis_server.client()
    assert len(redis.keys("mistral-nbenv:usage-merged:*")) == 1
    # a batch sent twice (its reply lost) counts once
    settings = mistral_nbenv.get_settings("development")
    ledger = open_stores(settings, mistral_nbenv.workspace.workspace().shared(settings)).ledger
    primary = ledger.primary  # type: ignore[attr-defined]
    bucket = next(iter(primary.totals()))
    assert primary.merge("batch-1", {bucket: {"requests": 1}}) is True
    assert primary.merge("batch-1", {bucket: {"requests": 1}}) is False
    assert requests() == 6
