"""One call pipeline for every endpoint: prepare -> execute -> finish, written once.

* **prepare** (shared): defaults from settings (the model), the ``cache=`` option, the
  request's cache key, a cache lookup (a hit is rebuilt with ``model_validate_json`` and
  touches nothing else), offline mode, the token estimate;
* **execute**: a concurrency slot, then [rate-limit budget -> SDK call] retried by the
  :class:`~mistral_nbenv.policies.retry.RetryPolicy`; a stream is retried only until its
  first event. This is the only step with a sync and an async form, and they differ only in
  ``await``;
* **finish** (shared): usage accounting (and the tpm estimate reconciled), the cache write,
  or the error translated into the package's tree, ``from`` the SDK's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from mistral_nbenv.client import deadline, deprecation, twins
from mistral_nbenv.client.policy import retry_mode
from mistral_nbenv.client.request import (
    Endpoint,
    Prepared,
    canonical,
    estimate_prompt,
    estimate_tokens,
    read_once,
    usage_of,
)
from mistral_nbenv.client.sdkpatch import SCOPE as FAST_SCOPE
from mistral_nbenv.client.stats import ClientStats
from mistral_nbenv.client.translate import quotes_secret, translate_error
from mistral_nbenv.client.transport import RESPONSES, Transport, response_json
from mistral_nbenv.errors import (
    APIError,
    BudgetExceededError,
    CacheMissError,
    RateLimitError,
    SecretNotCachedWarning,
)
from mistral_nbenv.policies.cache import ResponseCache
from mistral_nbenv.policies.concurrency import ConcurrencyLimiter
from mistral_nbenv.policies.ratelimit import RateLimiter
from mistral_nbenv.policies.retry import RetryPolicy, is_monthly_limit, retry_after_of, status_of
from mistral_nbenv.policies.spend import Spending
from mistral_nbenv.policies.usage import PRICED, UsageRecorder
from mistral_nbenv.secrets import known, shows_secret
from mistral_nbenv.store import without_waiting
from mistral_nbenv.store.layout import open_stores

if TYPE_CHECKING:
    from mistral_nbenv.client.streams import AsyncStream, Stream
    from mistral_nbenv.config import Settings
    from mistral_nbenv.secrets.keys import ResolvedKey
    from mistral_nbenv.store.shared import Shared

__all__ = ["CacheOption", "ClientStats", "Pipeline"]

log = logging.getLogger("mistral_nbenv.client")

CacheOption = bool | Literal["refresh"] | None


class Pipeline:
    """The policy of one environment's client applied to every call."""

    def __init__(
        self,
        settings: Settings,
        key: ResolvedKey,
        transport: Transport,
        shared: Shared | None = None,
        *,
        gate: Callable[[], None] | None = None,
        confirm: Callable[[str], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.gate = gate
        #: Asks the user (a notebook) before a call above ``budget.confirm_above_usd``.
        self.confirm = confirm
        self.shared = shared
        self.environment = settings.environment
        self.key = key
        self.transport = transport
        self.stats = ClientStats(model=settings.model_sent, model_reason=settings.model_reason)
        # ttl_seconds = 0 means "keep nothing": no caching, even with cache=True.
        self.cache_storable = float(settings.cache.ttl_seconds) > 0
        self.cache_enabled = bool(settings.cache.enabled) and self.cache_storable
        self.offline = bool(settings.offline)
        # (read, write) of a call without cache=: offline reads only, else the settings'
        enabled = self.cache_enabled
        self._default_modes = (True, False) if self.offline else (enabled, enabled)
        self.stores = stores = open_stores(settings, shared, key.identity)
        self.cache = ResponseCache.for_settings(settings, stores.cache)
        self.limiter = RateLimiter(
            stores.budget,
            requests_per_minute=settings.rate_limits.requests_per_minute,
            tokens_per_minute=settings.rate_limits.tokens_per_minute,
            environment=settings.environment,
            shared=stores.shared_budget,
            local_share=float(settings.shared.local_share),
        )
        self.usage = UsageRecorder(stores.ledger, settings.environment)
        self.spending = Spending(settings, stores.spend, stores.shared_spend)
        self.concurrency = ConcurrencyLimiter(
            settings.features.max_concurrent_requests, environment=settings.environment
        )
        self.stream_timeout = float(settings.stream_timeout)
        self.policy = RetryPolicy(
            max_retries=int(settings.max_retries),
            retry_max_wait=float(settings.retry_max_wait),
            on_retry=self._on_retry,
        )

    # -- prepare -------------------------------------------------------------------------

    def prepare(self, ep: Endpoint, kwargs: dict[str, Any]) -> Prepared:
        """Defaults, the cache option and lookup; offline, a miss raises ``CacheMissError``.

        It only reads a store (a hit's usage is the caller's :meth:`served`; an unreadable
        entry is dropped, the one write), so an async call runs it on the event loop: a read
        never waits for a writer (SQLite's WAL).
        """
        if self.gate is not None:
            self.gate()  # e.g. a protected environment not confirmed in this notebook
        option = kwargs.pop("cache", None)
        retry = kwargs.pop("retry", None)
        if "retries" in kwargs:
            raise TypeError(
                "retries= is not supported: mistral_nbenv retries itself "
                "(max_retries / retry_max_wait in the settings; retry= per call)"
            )
        self._fill(ep, kwargs)
        read, write = self._default_modes if option is None else self._cache_modes(option)
        if not ep.cacheable or (option is None and not ep.policy.caches(kwargs)):
            read = write = read and self.offline and ep.cacheable
        write = write and self.cache_storable
        call = Prepared(ep, kwargs, retry=retry_mode(ep.policy, retry, kwargs))
        key = None
        params: dict[str, Any] = {}
        if read or write:
            try:
                params = canonical(kwargs)
                key = self.cache.key(ep.name, params)
            except (TypeError, ValueError, RecursionError):
                # no stable form (an open file, a cycle): not cached; the SDK judges the input
                read = write = False
        if read and key is not None:
            text = self.cache.get(key)
            if text is not None:
                try:
                    call.hit = self._rebuild(ep, text)
                except Exception as exc:  # a corrupt entry: dropped, and this call is a miss
                    self.cache.drop(key, f"{type(exc).__name__} rebuilding {ep.name}")
                else:
                    self.stats.add(hits=1)
                    call.cached = True
                    return call
            else:
                call.hit = self._twin_hit(ep, params)
                if call.hit is not None:
                    self.stats.add(hits=1)
                    call.cached = True
                    return call
        if self.offline:
            what = "is not in the cache" if read else f"is never cached ({ep.policy.kind})"
            raise CacheMissError(
                f"Offline mode is on for environment '{self.environment}' and this "
                f"{ep.name} request {what}. Run it once online, or leave "
                "offline mode (unset MISTRAL_NBENV_OFFLINE / set offline = false)."
            )
        if read:
            self.stats.add(misses=1)
        if "timeout_ms" in kwargs:  # else the SDK object's own (the settings' timeout)
            call.seconds = _seconds_of(kwargs["timeout_ms"], self.transport.timeout_ms)
        else:
            call.seconds = self.transport.timeout_ms / 1000
        if ep.stream and self.stream_timeout > 0:
            call.ends = time.monotonic() + self.stream_timeout
        call.key = key if write else None
        call.estimate = estimate_tokens(kwargs) if self.limiter.tpm > 0 and ep.policy.tokens else 0
        if call.estimate > self.limiter.tpm > 0:
            raise RateLimitError(
                f"This {ep.name} request needs about {call.estimate:,} tokens (its text / 4 "
                f"plus max_tokens), more than the whole tokens_per_minute budget of "
                f"environment '{self.environment}' ({int(self.limiter.tpm):,}): it could never "
                "be admitted, so nothing was sent. Lower max_tokens or split the input, or "
                f"raise rate_limits.tokens_per_minute under [{self.environment}].",
                status_code=None,
                attempts=0,
                environment=self.environment,
            )
        self._price(call)
        return call

    def _price(self, call: Prepared) -> None:
        """A call's worst-case cost, checked against the per-call cap and, in a notebook,
        confirmed above ``budget.confirm_above_usd`` (the day's and month's caps are
        :meth:`reserve`'s, just before sending)."""
        spending = self.spending
        asks = self.confirm is not None and spending.confirm_above > 0
        if not (spending.capped or asks) or not call.endpoint.policy.tokens:
            return
        model = call.kwargs.get("model")
        model = model if isinstance(model, str) else None
        prompt = estimate_prompt(call.kwargs)
        max_tokens = call.kwargs.get("max_tokens")
        call.worst = spending.worst_case(model, prompt, max_tokens)
        spending.check_per_call(call.worst, model or "the API", prompt, max_tokens)
        if asks and call.worst > spending.confirm_above:
            assert self.confirm is not None
            question = (
                f"This call to {model} in '{self.environment}' may cost up to "
                f"${call.worst:.4f} (budget.confirm_above_usd = ${spending.confirm_above:.2f}). "
                "Send it?"
            )
            if not self.confirm(question):
                raise BudgetExceededError(
                    f"Not sent: a call to {model} that may cost up to ${call.worst:.4f} was "
                    f"not confirmed (budget.confirm_above_usd in '{self.environment}').",
                    environment=self.environment,
                    cap="budget.confirm_above_usd",
                    limit=spending.confirm_above,
                    needed=call.worst,
                )

    def reserve(self, call: Prepared) -> None:
        """Reserve the call's worst case from the day's and month's caps (refused: a
        :class:`BudgetExceededError`, nothing sent)."""
        if call.worst > 0 and self.spending.counts:
            self.spending.reserve(call.worst, model=str(call.kwargs.get("model") or ""))
            call.reserved = call.worst

    async def reserve_async(self, call: Prepared) -> None:
        """:meth:`reserve` with the event loop free."""
        if call.worst > 0 and self.spending.counts:
            await self.spending.reserve_async(call.worst, model=str(call.kwargs.get("model") or ""))
            call.reserved = call.worst

    def _slot(self, call: Prepared) -> None:
        """The reservation, then a concurrency slot (no slot: the reservation is given back)."""
        self.reserve(call)
        try:
            self.concurrency.acquire(call.seconds)
        except BaseException:
            for step in self._release(call):
                step()
            raise

    async def _slot_async(self, call: Prepared) -> None:
        """:meth:`_slot`, awaited."""
        await self.reserve_async(call)
        try:
            await self.concurrency.acquire_async(call.seconds)
        except BaseException:
            for step in self._release(call):
                await without_waiting(step)
            raise

    def _release(self, call: Prepared) -> list[Callable[[], None]]:
        """The write giving a failed call's spending reservation back (taken off the call
        now, so the write is one atomic step that may run again, in a thread, if busy)."""
        if not call.reserved:
            return []
        reserved, call.reserved = call.reserved, 0.0
        return [lambda: self.spending.settle(reserved, 0.0)]

    async def prepare_async(self, ep: Endpoint, kwargs: dict[str, Any]) -> Prepared:
        """:meth:`prepare` for an async call. With the cache in Redis its lookup is a round
        trip: it runs in a worker thread, so the event loop never waits on Redis; a local
        lookup only reads SQLite (WAL: it never waits for a writer) and stays on the loop."""
        if self.shared is not None and self.shared.share_cache:
            return await asyncio.to_thread(self.prepare, ep, kwargs)
        return self.prepare(ep, kwargs)

    def _fill(self, ep: Endpoint, kwargs: dict[str, Any]) -> None:
        """The request as it is sent, in place: every iterable read once (a generator is
        keyed and sent as one list), the default model, the pinned model ID."""
        read_once(kwargs)
        if ep.default_model is not None and kwargs.get("model") is None:
            kwargs["model"] = getattr(self.settings, ep.default_model)
        if self.settings.pins and isinstance(kwargs.get("model"), str):
            kwargs["model"] = self.settings.send(kwargs["model"])  # models.lock.toml

    def key_of(self, ep: Endpoint, kwargs: dict[str, Any]) -> str | None:
        """The cache key :meth:`prepare` gives a request (whether or not the cache is on):
        defaults and pins applied, per-call options left out; None without a stable form."""
        params = {k: v for k, v in kwargs.items() if k not in ("cache", "retry")}
        self._fill(ep, params)
        try:
            return self.cache.key(ep.name, canonical(params))
        except (TypeError, ValueError, RecursionError):
            return None

    def _cache_modes(self, option: CacheOption) -> tuple[bool, bool]:
        """(read, write) of an explicit ``cache=`` (without one: :attr:`_default_modes`)."""
        if self.offline:
            return True, False
        if option is True or option is False:
            return option, option
        if option == "refresh":
            return False, True
        raise ValueError(f"cache= must be True, False or 'refresh', not {option!r}")

    def _twin_hit(self, ep: Endpoint, params: dict[str, Any]) -> Any:
        """The same request answered by the streaming (or plain) twin of ``ep``: a stream
        replays a cached plain answer, a plain call is a streamed answer put together (plain
        text answers only; None otherwise). ``%%mistral`` streams; a script's
        ``chat.complete`` of the same messages is then a hit, and the other way round."""
        twin_name = twins.TWINS.get(ep.name)
        if twin_name is None:
            return None
        text = self.cache.get(self.cache.key(twin_name, params))  # the same canonical form
        if text is None:
            return None
        converted = twins.as_events(text) if ep.stream else twins.as_body(text)
        if converted is None:
            return None
        try:
            return self._rebuild(ep, converted)
        except Exception:  # not convertible after all: a miss, the twin's entry untouched
            return None

    @staticmethod
    def _rebuild(ep: Endpoint, text: str) -> Any:
        """Cached JSON text as the SDK's response, or a stream's events in order."""
        if ep.stream:
            events = [ep.rebuild(line) for line in text.splitlines()]
            if not events:
                raise ValueError("no events")
            return events
        return ep.rebuild(text)

    # -- execute: the SDK call inside the attempt's scope ---------------------------------

    def call(self, ep: Endpoint, kwargs: dict[str, Any]) -> Any:
        """A request/response call (sync)."""
        call = self.prepare(ep, kwargs)
        if call.cached:
            return self.served(call)
        method = self.transport.method(ep.group, ep.method, is_async=False)

        def attempt() -> Any:
            self._admit(call)
            try:
                with _attempt(call):
                    return method(**call.kwargs)
            except Exception as exc:
                self._paused_by(exc)
                raise

        self._slot(call)
        try:
            result, _attempts = self.policy.call(attempt, mode=call.retry)
        except Exception as exc:
            self.fail(exc, call)
        finally:
            self.concurrency.release()
        return self.finish(call, result)

    async def call_async(self, ep: Endpoint, kwargs: dict[str, Any]) -> Any:
        """A request/response call (async): the same steps, awaited. The loop never waits on
        another process's transaction: the lookup only reads, the admission waits in a worker
        thread when the budget is busy, and the writes after the answer run in one."""
        call = await self.prepare_async(ep, kwargs)
        if call.cached:
            return await without_waiting(lambda: self.served(call))
        method = self.transport.method(ep.group, ep.method, is_async=True)

        async def attempt() -> Any:
            await self._admit_async(call)
            try:
                with _attempt(call):  # around the await: the response hooks run inside it
                    return await method(**call.kwargs)
            except Exception as exc:
                await without_waiting(functools.partial(self._paused_by, exc))
                raise

        await self._slot_async(call)
        try:
            result, _attempts = await self.policy.call_async(attempt, mode=call.retry)
        except Exception as exc:
            await self.fail_async(exc, call)
        finally:
            self.concurrency.release()
        for step in self.after(call, result):
            await without_waiting(step)
        return result

    def stream(self, ep: Endpoint, kwargs: dict[str, Any]) -> Stream:
        """A streaming call (sync); the stream holds the concurrency slot until it ends."""
        from mistral_nbenv.client.streams import Stream

        call = self.prepare(ep, kwargs)
        if call.cached:
            return Stream(self, call, replay=self.served(call))
        method = self.transport.method(ep.group, ep.method, is_async=False)

        def attempt() -> tuple[Any, list[Any]]:
            self._admit(call)
            scope = FAST_SCOPE.set(True)
            try:
                with deadline.within(call.seconds, until=call.ends):
                    events = method(**call.kwargs)
                    try:  # a stream is retried only until its first event arrives
                        return events, [next(events)]
                    except StopIteration:
                        return events, []
                    except BaseException:
                        events.close()
                        raise
            except Exception as exc:
                self._paused_by(exc)
                raise
            finally:
                FAST_SCOPE.reset(scope)

        self._slot(call)  # the slot is released by the Stream when it ends
        try:
            (events, first), _attempts = self.policy.call(attempt, mode=call.retry)
        except BaseException as exc:
            self.concurrency.release()
            if isinstance(exc, Exception):
                self.fail(exc, call)
            raise
        return Stream(self, call, source=events, first=first)

    async def stream_async(self, ep: Endpoint, kwargs: dict[str, Any]) -> AsyncStream:
        """A streaming call (async): the same steps, awaited."""
        from mistral_nbenv.client.streams import AsyncStream

        call = await self.prepare_async(ep, kwargs)
        if call.cached:
            return AsyncStream(self, call, replay=await without_waiting(lambda: self.served(call)))
        method = self.transport.method(ep.group, ep.method, is_async=True)

        async def attempt() -> tuple[Any, list[Any]]:
            await self._admit_async(call)
            scope = FAST_SCOPE.set(True)
            try:
                with deadline.within(call.seconds, until=call.ends):
                    events = await method(**call.kwargs)
                    try:
                        return events, [await events.__anext__()]
                    except StopAsyncIteration:
                        return events, []
                    except BaseException:
                        await events.close()
                        raise
            except Exception as exc:
                await without_waiting(functools.partial(self._paused_by, exc))
                raise
            finally:
                FAST_SCOPE.reset(scope)

        await self._slot_async(call)  # the slot is released by the stream
        try:
            (events, first), _attempts = await self.policy.call_async(attempt, mode=call.retry)
        except BaseException as exc:
            self.concurrency.release()
            if isinstance(exc, Exception):
                await self.fail_async(exc, call)
            raise
        return AsyncStream(self, call, source=events, first=first)

    # -- finish --------------------------------------------------------------------------

    def served(self, call: Prepared) -> Any:
        """A hit: count it in the usage ledger, with what it would have cost; its answer."""
        saved = self._saved(call.hit)
        if saved:
            self.stats.add(saved_usd=saved)
        self.usage.record(call.kwargs.get("model"), hits=1, saved_usd=saved)
        return call.hit

    def _saved(self, hit: Any) -> float:
        """What a cached answer would have cost if sent again (0 without usage or price)."""
        answer = hit[-1] if isinstance(hit, list) and hit else hit
        answer = getattr(answer, "data", answer)  # a stream's event holds the chunk
        return self.price(answer) or 0.0

    def price(self, answer: Any, *, sent: Any = None, note: bool = False) -> float | None:
        """USD of one answer at this environment's prices: its tokens, OCR pages and audio
        minutes, by the model it names (the ID the API resolved the name to; else ``sent``).
        None when that model has no price (``note``: and say so, once per model)."""
        prompt, completion, _total = usage_of(answer)
        pages, minutes = _billed(answer)
        named = getattr(answer, "model", None)
        model = named if isinstance(named, str) and named else sent
        model = model if isinstance(model, str) else None
        if note:
            return self.spending.cost(model, prompt, completion, pages, minutes)
        return self.spending.table.cost(model, prompt, completion, pages, minutes)

    def finish(self, call: Prepared, result: Any) -> Any:
        """Account the usage, correct the budget and store the body as received."""
        for step in self.after(call, result):
            step()
        return result

    def after(self, call: Prepared, result: Any) -> list[Callable[[], None]]:
        """The writes an answer makes, each atomic (for :func:`without_waiting`): its usage,
        the token correction, the cache entry."""
        steps = self.accounting(call, result)
        if call.key is not None:
            try:
                text = response_json(result, call.seen)
            except Exception as exc:  # an answer with no JSON form: served, not stored
                log.debug("mistral_nbenv: %s answer not cached (%s)", call.endpoint.name, exc)
            else:
                steps.append(lambda: self._store(call, text))
        return steps

    def accounting(self, call: Prepared, result: Any) -> list[Callable[[], None]]:
        """The client's counters now; the steps writing the usage and correcting the token
        estimate with the real usage."""
        prompt, completion, total = usage_of(result)
        self.stats.add(
            requests=1, prompt_tokens=prompt, completion_tokens=completion, total_tokens=total
        )
        model = call.kwargs.get("model")
        if isinstance(model, str):
            self.stats.sent(model)
        deprecation.note(call.seen, model, result, self.environment)
        cost = self.price(result, sent=model, note=True)
        counts: dict[str, float] = {
            "requests": 1,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
        }
        if cost is None:
            counts["unpriced"] = 1
        else:
            self.stats.add(cost_usd=cost)
            counts["cost_usd"] = cost
            counts[PRICED + self.spending.table.version] = 1
        call.cost = cost
        steps: list[Callable[[], None]] = [lambda: self.usage.record(model, **counts)]
        if call.reserved or (cost and self.spending.counts):
            reserved, call.reserved = call.reserved, 0.0
            steps.append(lambda: self.spending.settle(reserved, cost))
        headers = _limit_headers(call.seen)
        if headers:
            steps.append(lambda: self.spending.observe(headers))  # for status
        correct = bool(total) or len(call.slots) > 1  # each attempt counted the estimate
        if correct or headers:  # one step of the budget for both
            used = (total or call.estimate) if correct else None  # no usage: estimate stands
            slots = list(call.slots)
            steps.append(
                lambda: self.limiter.settle(
                    slots,
                    call.estimate,
                    used,
                    remaining=(
                        _number(headers.get("x-ratelimit-remaining-req-minute")),
                        _number(headers.get("x-ratelimit-remaining-tokens-minute")),
                    ),
                    limits=(
                        _number(headers.get("x-ratelimit-limit-req-minute")),
                        _number(headers.get("x-ratelimit-limit-tokens-minute")),
                    ),
                )
            )
        return steps

    def finish_stream(self, call: Prepared, last_usage: Any, recorded: list[str] | None) -> None:
        """A stream read to the end: account its usage and store its events."""
        for step in self._stream_end(call, last_usage, recorded):
            step()

    async def finish_stream_async(
        self, call: Prepared, last_usage: Any, recorded: list[str] | None
    ) -> None:
        """:meth:`finish_stream` with the event loop free (each write: `without_waiting`)."""
        for step in self._stream_end(call, last_usage, recorded):
            await without_waiting(step)

    def _stream_end(
        self, call: Prepared, last_usage: Any, recorded: list[str] | None
    ) -> list[Callable[[], None]]:
        steps = self.accounting(call, last_usage)
        if call.key is not None and recorded is not None:
            text = "\n".join(recorded)
            steps.append(lambda: self._store(call, text))
        return steps

    def _store(self, call: Prepared, text: str) -> None:
        """Cache ``text`` unless it holds a secret (a server echoing the key): then warn."""
        assert call.key is not None
        if shows_secret(text, self.key.value.get_secret_value()):
            warnings.warn(
                f"mistral_nbenv: the {call.endpoint.name} answer for environment "
                f"'{self.environment}' contains a secret (the API key?), so it was not cached. "
                "Check what the server at server_url echoes.",
                SecretNotCachedWarning,
                stacklevel=4,
            )
            return
        self.cache.set(call.key, text)

    def fail(self, exc: Exception, call: Prepared) -> NoReturn:
        """Count the failure and raise it as our error, ``from`` the SDK's."""
        for step in self._failed(call):
            step()
        self.raise_as_ours(exc, call)

    async def fail_async(self, exc: Exception, call: Prepared) -> NoReturn:
        """:meth:`fail` with the event loop free (each write as :func:`without_waiting`)."""
        for step in self._failed(call):
            await without_waiting(step)
        self.raise_as_ours(exc, call)

    def _failed(self, call: Prepared) -> list[Callable[[], None]]:
        """A failed call: counted now; the writes it makes, each one atomic step: the
        failure in the usage ledger, the tokens its attempts reserved and its spending
        reservation given back (the server rejected it or never saw it, so it used none of
        the budget)."""
        self.stats.add(errors=1)
        model = call.kwargs.get("model")
        steps: list[Callable[[], None]] = [lambda: self.usage.record(model, requests=1, errors=1)]
        if call.estimate and call.slots:
            estimate, slots = call.estimate, list(call.slots)
            steps.append(lambda: self.limiter.reconcile(estimate, 0, slots))
        return steps + self._release(call)

    def _paused_by(self, exc: BaseException) -> None:
        """A 429 with ``Retry-After`` (not the monthly limit) pauses every process and host
        sharing this budget until it has passed (each failed attempt, retried or not)."""
        if status_of(exc) == 429 and not is_monthly_limit(exc):
            wait = retry_after_of(exc)
            if wait:
                try:
                    self.limiter.pause(wait)
                except Exception:  # bookkeeping: never fails the call
                    log.debug("mistral_nbenv: pause not recorded", exc_info=True)

    def raise_as_ours(self, exc: Exception, call: Prepared) -> NoReturn:
        """Raise ``exc`` as the package's error, ``from`` the SDK's (its text scrubbed)."""
        limit = ("timeout", call.seconds or self.transport.timeout_ms / 1000)
        if call.ends is not None and time.monotonic() >= call.ends:
            limit = ("stream_timeout", self.stream_timeout)
        mapped = translate_error(
            exc,
            environment=self.environment,
            retry_max_wait=float(self.settings.retry_max_wait),
            timeout=limit[1],
            timeout_setting=limit[0],
            key_source=self.key.source,
            secret=self.key.value.get_secret_value(),
        )
        secrets = [self.key.value.get_secret_value(), *known()]
        if quotes_secret(exc, secrets):  # text the scrub cannot reach: drop the SDK's error
            if mapped is exc:
                mapped = APIError(
                    f"The Mistral API call failed in environment '{self.environment}' "
                    f"({type(exc).__name__}; its text quoted a secret and is not shown).",
                    environment=self.environment,
                )
            raise mapped from None
        if mapped is exc:
            raise exc
        raise mapped from exc

    def _admit(self, call: Prepared) -> None:
        """Wait in line for the rate limit, then count the admission (and its wait)."""
        for step in self._admitted(call, self.limiter.acquire(call.estimate, call.slots)):
            step()

    async def _admit_async(self, call: Prepared) -> None:
        """:meth:`_admit` with the event loop free."""
        waited = await self.limiter.acquire_async(call.estimate, call.slots)
        for step in self._admitted(call, waited):
            await without_waiting(step)

    def _admitted(self, call: Prepared, seconds: float) -> list[Callable[[], None]]:
        """After each admission: counted now; the wait, if there was one, returned as the
        step writing it to the usage ledger."""
        call.admitted += 1
        if seconds <= 0:
            return []
        self.stats.add(rate_limit_waits=1, rate_limit_wait_seconds=seconds)
        model = call.kwargs.get("model")
        return [lambda: self.usage.record(model, waits=1, wait_seconds=seconds)]

    def _on_retry(self, attempt: int, exc: BaseException, delay: float) -> None:
        self.stats.add(retries=1)
        log.debug(
            "mistral_nbenv: %s: attempt %d failed (%s), retrying in %.2f s",
            self.environment,
            attempt,
            type(exc).__name__,
            delay,
        )


@contextlib.contextmanager
def _attempt(call: Prepared) -> Iterator[None]:
    """One attempt's scope: its responses collected, its deadline, the SDK fast path."""
    call.seen.clear()
    token, scope = RESPONSES.set(call.seen), FAST_SCOPE.set(True)
    try:
        with deadline.within(call.seconds):
            yield
    finally:
        FAST_SCOPE.reset(scope)
        RESPONSES.reset(token)


def _limit_headers(seen: list[Any]) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers of the last response of an attempt."""
    if not seen:
        return {}
    headers = getattr(seen[-1], "headers", None)
    if headers is None:
        return {}
    try:
        return {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-ratelimit-")}
    except Exception:
        return {}


def _number(text: str | None) -> float | None:
    """A header's number (None when absent or not a finite number >= 0)."""
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and 0 <= value < float("inf") else None


def _billed(result: Any) -> tuple[float, float]:
    """OCR pages (``usage_info.pages_processed``) and audio minutes
    (``usage.prompt_audio_seconds`` / 60) an answer was billed for."""

    def number(value: Any) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        return float(value) if ok else 0.0

    pages = number(getattr(getattr(result, "usage_info", None), "pages_processed", None))
    seconds = number(getattr(getattr(result, "usage", None), "prompt_audio_seconds", None))
    return pages, seconds / 60


def _seconds_of(timeout_ms: Any, default_ms: int) -> float:
    """A call's ``timeout_ms=`` in seconds (the settings' timeout when it is not a number)."""
    try:
        value = float(timeout_ms) / 1000
    except (TypeError, ValueError):
        return default_ms / 1000
    return value if value > 0 and value == value else default_ms / 1000
