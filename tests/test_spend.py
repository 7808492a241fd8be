"""Spend you can see and cap (issue 36): prices, cost per call, caps before sending, the
API's own limits. Real SDK calls to the loopback server (which enforces limits and prices
what it served), several processes, two hosts on a real redis-server, and a notebook kernel.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mistral_nbenv
from mistral_nbenv import BudgetExceededError, ConfigurationError, RateLimitError
from mistral_nbenv.config.prices import packaged
from mistral_nbenv.errors import MistralEnvWarning
from mistral_nbenv.testing import MistralTestServer
from mistral_nbenv.testing.server import Fault, ServerLimits
from mistral_nbenv.workspace import close_clients
from tests._browser_project import use_project
from tests._cli import run_cli
from tests._hosts import host_environ, result, start
from tests.conftest import reset_state

HELLO = [{"role": "user", "content": "count the cost"}]
#: USD per million tokens that make one token cost $0.10: costs big enough to cap in a test,
#: and input = output, so what the server served costs its tokens x 0.1.
DEAR = '"mistral-small-2506" = { input = 100000, output = 100000 }'
PER_TOKEN = 0.1


def _project(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: MistralTestServer,
    extra: str = "",
    *,
    dear: bool = True,
) -> Path:
    text = "[staging.cache]\nenabled = false\n"
    if dear:
        text += f"[staging.prices]\n{DEAR}\n"
    return use_project(tmp_path / "p", server.url, monkeypatch, extra=text + extra)


@pytest.fixture
def server() -> Iterator[MistralTestServer]:
    with MistralTestServer() as srv:
        yield srv
    reset_state()


# ------------------------------------------------------------------------------ prices


def test_the_packaged_prices_are_dated_and_sourced_and_price_what_the_answer_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer
) -> None:
    table = packaged()
    assert table.version
    assert table.as_of.startswith("20")
    assert table.source.startswith("https://")
    _project(tmp_path, monkeypatch, server, dear=False)
    client = mistral_nbenv.get_client("staging")
    answer = client.chat.complete(messages=HELLO)
    assert server.last_request.body["model"] == "mistral-small-latest"  # the alias was sent
    assert answer.model == "mistral-small-2506"  # ... and the answer names the ID
    price = table.models["mistral-small-2506"]
    expected = (
        answer.usage.prompt_tokens * price.input + answer.usage.completion_tokens * price.output
    ) / 1e6
    assert expected > 0
    assert client.stats.cost_usd == pytest.approx(expected)
    assert client.stats.cost_usd == pytest.approx(server.cost_usd)  # what the server served
    assert client.cost_of(answer) == pytest.approx(expected)


def test_a_model_without_a_price_costs_null_with_one_note_never_a_guess(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer
) -> None:
    _project(tmp_path, monkeypatch, server, dear=False)
    client = mistral_nbenv.get_client("staging")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(3):
            client.chat.complete(messages=HELLO, model="mistral-nobody-knows")
    notes = [str(w.message) for w in seen if issubclass(w.category, MistralEnvWarning)]
    assert len(notes) == 1, notes
    assert "no price for model 'mistral-nobody-knows'" in notes[0]
    assert "[staging.prices]" in notes[0]
    assert client.stats.cost_usd == 0
    close_clients()
    from mistral_nbenv.ui.reports import collect_usage

    (row,) = collect_usage("staging", all_environments=False).rows
    assert (row.model, row.requests, row.cost, row.priced_with) == (
        "mistral-nobody-knows",
        3,
        None,
        (),
    )
    text = run_cli("usage", "--env", "staging", cwd=tmp_path / "p").stdout
    assert "cost -" in text


def test_prices_override_per_environment_and_each_row_records_the_table_it_was_priced_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer
) -> None:
    _project(tmp_path, monkeypatch, server)
    client = mistral_nbenv.get_client("staging")
    answer = client.chat.complete(messages=HELLO)
    tokens = answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert client.stats.cost_usd == pytest.approx(tokens * PER_TOKEN)
    other = mistral_nbenv.get_client("production")  # no override: the packaged price
    other.chat.complete(messages=HELLO, cache=False)
    assert other.stats.cost_usd < client.stats.cost_usd / 1000
    close_clients()
    done = run_cli("usage", "--json", cwd=tmp_path / "p")
    rows = {r["environment"]: r for r in json.loads(done.stdout)["rows"]}
    assert rows["staging"]["priced_with"][0].startswith(packaged().version + "+")
    assert rows["production"]["priced_with"] == [packaged().version]
    assert rows["staging"]["cost"] == pytest.approx(tokens * PER_TOKEN)
    text = run_cli("usage", cwd=tmp_path / "p").stdout
    assert f"priced with: {packaged().version}" in text
    # an 80-column terminal: the table, the chart and the totals fit (a ledger's path may not)
    assert all(len(line) <= 80 for line in text.splitlines() if not line.startswith("ledger"))
    assert "tokens" in text.splitlines()[0]


def test_a_cache_hit_costs_nothing_and_says_what_it_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer
) -> None:
    _project(tmp_path, monkeypatch, server)
    client = mistral_nbenv.get_client("staging")
    first = client.chat.complete(messages=HELLO, cache=True)
    client.chat.complete(messages=HELLO, cache=True)
    cost = (first.usage.prompt_tokens + first.usage.completion_tokens) * PER_TOKEN
    assert client.stats.cost_usd == pytest.approx(cost)  # paid once
    assert client.stats.saved_usd == pytest.approx(cost)  # the hit saved as much
    assert server.count("/v1/chat/completions") == 1
    close_clients()
    text = run_cli("usage", "--env", "staging", cwd=tmp_path / "p").stdout
    assert f"the cache saved ${cost:,.4f}" in text


# ------------------------------------------------------------------------------ caps


def _until_refused(client: Any, most: int = 50) -> tuple[int, BudgetExceededError]:
    """Calls (worst case ~$2.3 each) until a cap refuses one: ``(calls sent, the error)``."""
    for sent in range(most):
        try:
            client.chat.complete(messages=HELLO, max_tokens=20)
        except BudgetExceededError as exc:
            return sent, exc
    raise AssertionError(f"no cap refused any of {most} calls")


def test_a_call_that_would_cross_the_daily_cap_is_refused_with_nothing_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer
) -> None:
    _project(tmp_path, monkeypatch, server, "[staging.budget]\ndaily_usd = 10\n")
    client = mistral_nbenv.get_client("staging")
    sent, error = _until_refused(client)
    assert 3 <= sent < 50
    assert server.count("/v1/chat/completions") == sent  # the refused call never left
    assert (error.environment, error.cap, error.limit) == ("staging", "budget.daily_usd", 10.0)
    # reserved before, settled after: what the day spent is what the answers cost
    today, month = client.spending.spent()
    assert today == pytest.approx(client.stats.cost_usd)
    assert today == pytest.approx(server.tokens_this_month * PER_TOKEN)
    assert month == pytest.approx(today)
    assert error.spent == pytest.approx(today)
    assert today <= 10.0 < today + error.needed  # it would have crossed, and only then
    message = str(error)
    assert "Environment 'staging' has spent $" in message
    assert "budget.daily_usd cap of $10.00" in message
    assert "nothing was sent" in message
    assert "resets at " in message
    assert error.resets.endswith("00:00 UTC")
    # status shows what is spent and what is left; check shows the caps
    status = run_cli("status", "--env", "staging", cwd=tmp_path / "p").stdout
    assert f"${today:,.4f} of $10.00 today (UTC)" in status
    checked = run_cli("check", "--env", "staging", cwd=tmp_path / "p").stdout
    assert "caps: $10.00/day" in checked


def test_the_per_call_and_monthly_caps_and_an_unpriced_model_in_a_capped_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer
) -> None:
    _project(tmp_path, monkeypatch, server, "[staging.budget]\nper_call_usd = 5\nmonthly_usd = 4\n")
    client = mistral_nbenv.get_client("staging")
    with pytest.raises(BudgetExceededError) as info:
        client.chat.complete(messages=HELLO, max_tokens=100)  # ~ $10 at worst
    assert info.value.cap == "budget.per_call_usd"
    assert "max_tokens 100" in str(info.value)
    with pytest.raises(BudgetExceededError) as info:  # no max_tokens: the model's longest
        client.chat.complete(messages=HELLO)
    assert "the model's longest answer" in str(info.value)
    client.chat.complete(messages=HELLO, max_tokens=20)  # ~ $2.3 at worst: sent
    _sent, error = _until_refused(client)
    assert error.cap == "budget.monthly_usd"
    assert "resets at " in str(error)
    assert error.resets.endswith("-01 00:00 UTC")  # the first of next month
    with pytest.raises(ConfigurationError, match="has no price"):
        client.chat.complete(messages=HELLO, model="mistral-nobody-knows", max_tokens=1)
    assert all(r.body["model"] != "mistral-nobody-knows" for r in server.requests)


def test_a_failed_call_gives_its_reservation_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer
) -> None:
    _project(tmp_path, monkeypatch, server, "[staging.budget]\ndaily_usd = 3\n")
    client = mistral_nbenv.get_client("staging")
    for _ in range(5):  # each reserves ~$2.3 of $3: five failures in a row still fit
        server.enqueue(Fault.status(500))
        with pytest.raises(mistral_nbenv.APIError):
            client.chat.complete(messages=HELLO, max_tokens=20)
    assert client.spending.spent() == (0.0, 0.0)
    client.chat.complete(messages=HELLO, max_tokens=20)  # the whole cap is still there
    assert client.spending.spent()[0] == pytest.approx(client.stats.cost_usd)


def _worker(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return start("tests._spend_worker", env, *args)


@pytest.mark.parametrize("where", ["one machine", "two hosts through Redis"])
def test_the_daily_cap_is_exact_across_processes_and_hosts(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: MistralTestServer,
    redis_server: Any,
    where: str,
) -> None:
    cap = 30.0
    extra = f"[staging.budget]\ndaily_usd = {cap}\n"
    if where != "one machine":
        extra += '[staging.shared]\nurl = "env:REDIS_URL"\non_unavailable = "error"\n'
    settings = _project(tmp_path, monkeypatch, server, extra)
    start_at = repr(time.time() + 3.0)
    workers = []
    for i in range(4):
        more = {"REDIS_URL": redis_server.url}
        if where != "one machine":  # each host its own disk: only Redis is shared
            more["MISTRAL_NBENV_CACHE__DIRECTORY"] = str(tmp_path / f"host{i}" / "cache")
        workers.append(
            _worker(host_environ(tmp_path, f"host{i}", settings, **more), "spend", start_at, "60")
        )
    results = [result(w) for w in workers]
    sent = sum(r["sent"] for r in results)
    assert sent == server.count("/v1/chat/completions")
    assert all(r["refused"] == 1 for r in results), results  # every process met the cap
    spent = server.tokens_this_month * PER_TOKEN  # what the server actually served
    assert spent == pytest.approx(sum(r["cost"] for r in results))
    assert spent <= cap + 1e-9  # never over, across every process
    worst = 23 * PER_TOKEN  # a call's worst case here: ~3 prompt tokens + max_tokens 20
    assert spent > cap - 4 * worst  # ... and the cap was used, not refused early
    if where != "one machine":
        redis = redis_server.client()
        (key,) = redis.keys("mistral-nbenv:{staging:*}:spend")
        state = redis.hgetall(key)
        assert float(state["day_usd"]) == pytest.approx(spent)
        now = time.gmtime()
        assert int(state["month"]) == now.tm_year * 100 + now.tm_mon  # Redis's UTC month
        assert int(state["day"]) == int(time.time() // 86_400)
        assert not (tmp_path / "host0" / "cache" / "staging" / "spend").exists()


# ------------------------------------------------------------------------------ the API's limits


def test_the_api_rate_limit_headers_tighten_the_budget_and_status_shows_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with MistralTestServer(limits=ServerLimits(requests_per_minute=5)) as server:
        _project(tmp_path, monkeypatch, server)  # configured: 100,000 requests/min
        client = mistral_nbenv.get_client("staging")
        for _ in range(5):
            client.chat.complete(messages=HELLO)
        limiter = client._limiter
        assert limiter.rpm == 5  # learnt from the headers: lower than configured
        assert limiter.configured[0] == 100_000
        # a sixth would be a 429 at the server: here it waits for the window instead
        wait, slot = limiter._run(cost=0.0, admit=True)
        assert slot == -1
        assert 55.0 < wait <= 61.0
        assert server.count("/v1/chat/completions") == 5
        status = run_cli("status", "--env", "staging", cwd=tmp_path / "p").stdout
        assert "5 req/min" in status
    reset_state()


@pytest.mark.parametrize("where", ["one machine", "two hosts through Redis"])
def test_a_429_pauses_every_process_sharing_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server: Any, where: str
) -> None:
    with MistralTestServer() as server:
        extra = "max_retries = 2\n"
        if where != "one machine":
            extra += '[staging.shared]\nurl = "env:REDIS_URL"\n'
        settings = _project(tmp_path, monkeypatch, server, extra.replace("max_retries = 2\n", ""))
        text = settings.read_text().replace("max_retries = 0", "max_retries = 2")
        settings.write_text(text)
        monkeypatch.setenv("REDIS_URL", redis_server.url)
        reset_state()
        client = mistral_nbenv.get_client("staging")
        client.chat.complete(messages=HELLO)  # the budget exists
        server.enqueue(Fault.rate_limit(retry_after=4))
        done = threading.Event()

        def first() -> None:
            client.chat.complete(messages=[{"role": "user", "content": "met a 429"}])
            done.set()

        thread = threading.Thread(target=first)
        thread.start()
        assert server.wait_for_requests(2, timeout=10)
        paused_at = time.time()
        more = {"REDIS_URL": redis_server.url}
        if where != "one machine":
            more["MISTRAL_NBENV_CACHE__DIRECTORY"] = str(tmp_path / "other" / "cache")
        other = _worker(host_environ(tmp_path, "other", settings, **more), "ask", "another process")
        outcome = result(other)
        thread.join(30)
        assert done.is_set()
    arrived = [r.timestamp for r in server.requests if "another process" in json.dumps(r.body)]
    assert len(arrived) == 1
    assert arrived[0] >= paused_at + 4 - 0.5, (arrived[0] - paused_at, outcome)  # it waited
    assert outcome["rate_limit_waits"] == 1
    assert outcome["retries"] == 0  # and got no 429 of its own
    assert server.count("/v1/chat/completions") == 4  # 1 + the 429 + its retry + the other


def test_a_monthly_limit_429_is_not_retried_and_says_which_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with MistralTestServer(limits=ServerLimits(tokens_per_month=10)) as server:
        path = _project(tmp_path, monkeypatch, server)
        path.write_text(path.read_text().replace("max_retries = 0", "max_retries = 3"))
        reset_state()
        client = mistral_nbenv.get_client("staging")
        client.chat.complete(messages=HELLO)
        client.chat.complete(messages=HELLO)  # the month's tokens are now used up
        before = server.count("/v1/chat/completions")
        started = time.monotonic()
        with pytest.raises(RateLimitError) as info:
            client.chat.complete(messages=HELLO)
        assert server.count("/v1/chat/completions") == before + 1  # one attempt, no retry
        assert time.monotonic() - started < 5
    error = info.value
    assert error.limit == "monthly"
    assert error.attempts == 1
    assert "monthly limit" in str(error)
    assert "not retried" in str(error)
    assert "resets at the start of next month" in str(error)
    assert client.stats.retries == 0


# ------------------------------------------------------------------------------ a notebook


def test_a_notebook_asks_before_an_expensive_call_and_the_badge_shows_the_cost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MistralTestServer
) -> None:
    from jupyter_client.manager import start_new_kernel

    settings = _project(tmp_path, monkeypatch, server, "[staging.budget]\nconfirm_above_usd = 1\n")
    env = host_environ(tmp_path, "kernel", settings, IPYTHONDIR=str(tmp_path / "ipython"))
    manager, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(tmp_path))
    questions: list[str] = []
    replies = iter(["n", "y"])

    def answer(msg: dict[str, Any]) -> None:
        questions.append(msg["content"]["prompt"])
        kc.input(next(replies))

    def run(code: str) -> str:
        outputs: list[str] = []

        def keep(msg: dict[str, Any]) -> None:
            content = msg["content"]
            if msg["msg_type"] == "stream":
                outputs.append(content["text"])
            elif msg["msg_type"] in ("display_data", "execute_result"):
                outputs.append(content["data"].get("text/plain", ""))
            elif msg["msg_type"] == "error":
                outputs.append(f"{content['ename']}: {content['evalue']}")

        kc.execute_interactive(
            code, allow_stdin=True, stdin_hook=answer, output_hook=keep, timeout=60
        )
        return "".join(outputs)

    try:
        run("%load_ext mistral_nbenv\n%mistral_env use staging")
        refused = run("%%mistral --no-stream\ncount the cost")  # ~$0.4+ at worst: asked
        cheap = run("%%mistral --no-stream --max-tokens 5\ncount the cost")  # < $1: not asked
        asked = run("%%mistral --no-stream\ncount the cost")
    finally:
        kc.stop_channels()
        manager.shutdown_kernel(now=True)
    assert len(questions) == 2, questions
    assert "may cost up to $" in questions[0]
    assert "budget.confirm_above_usd = $1.00" in questions[0]
    assert "[y/N]" in questions[0]
    assert "Not sent: a call to mistral-small-latest that may cost up to $" in refused
    assert "was not confirmed" in refused
    assert "Traceback" not in refused
    sent = [r for r in server.requests if r.path == "/v1/chat/completions"]
    assert len(sent) == 2  # the cheap one (not asked) and the confirmed one
    assert "$" in asked
    assert "[staging]" in asked
    assert "from API" in asked
    # under the threshold: sent without a question, its cost in the badge
    assert "[staging]" in cheap
    assert "from API" in cheap
    assert "$0." in cheap
    assert "Not sent" not in cheap
