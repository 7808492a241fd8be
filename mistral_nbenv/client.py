"""The Mistral client wrapper: one environment, cache, retries, rate limits, concurrency.

A :class:`Client` is bound to one environment for its whole life (the workspace makes one
per environment: ``mistral_nbenv.get_client``).
It mirrors the official SDK (``from mistralai.client import Mistral``): ``chat.complete``,
``chat.stream``, ``embeddings.create``, ``fim.complete``, ``fim.stream``, ``models.list``,
each with an ``_async`` twin, same keyword arguments, the SDK's own response objects, plus
the keyword ``cache=True|False|"refresh"``.

Per call (miss path): cache lookup → concurrency slot → [rate-limit budget → SDK call]
retried by :class:`~mistral_nbenv.retry.RetryPolicy` → error translation → cache write.
A cache hit rebuilds the response with ``model_validate_json`` and touches nothing else.

This is the only module that imports ``mistralai``, and only on first use.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from . import _fastsdk
from .cache import ResponseCache, cache_dir
from .errors import CacheMissError
from .ratelimit import ConcurrencyLimiter, RateLimiter
from .retry import RetryPolicy, translate_error
from .store.local import DiskStore

if TYPE_CHECKING:
    from .config import Settings
    from .keys import ResolvedKey

__all__ = ["AsyncStream", "Client", "ClientStats", "Stream"]

log = logging.getLogger(__name__)

CacheOption = bool | Literal["refresh"] | None

# Parameters that change how a request travels, not what it answers.
_TRANSPORT_PARAMS = frozenset({"timeout_ms", "http_headers", "retries"})


@dataclass
class ClientStats:
    """Counters of one client since it was created."""

    requests: int = 0
    hits: int = 0
    misses: int = 0
    retries: int = 0
    errors: int = 0
    rate_limit_waits: int = 0
    rate_limit_wait_seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **amounts: float) -> None:
        """Add to several counters at once (thread-safe)."""
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_lock"}


# --------------------------------------------------------------------------- SDK access


class _SDK:
    """Lazily imported pieces of mistralai (imported on the first client creation)."""

    loaded = False
    Mistral: Any
    models: Any
    httpx: Any
    ssl_context: Any
    adapters: dict[str, Any]
    model_types: dict[str, Any]
    _lock = threading.Lock()

    @classmethod
    def load(cls) -> type[_SDK]:
        if cls.loaded:
            return cls
        with cls._lock:
            if cls.loaded:
                return cls
            import httpx2
            from mistralai.client import Mistral, models

            cls.Mistral = Mistral
            cls.models = models
            cls.httpx = httpx2
            # One SSL context for every HTTP client: building one costs ~60 ms.
            cls.ssl_context = httpx2.create_ssl_context()
            cls.adapters = {}
            cls.model_types = {}
            cls.loaded = True
        return cls

    @classmethod
    def model(cls, name: str) -> Any:
        """An SDK response model by name, looked up once (the SDK resolves names lazily)."""
        found = cls.model_types.get(name)
        if found is None:
            found = cls.model_types[name] = getattr(cls.models, name)
        return found

    @classmethod
    def adapter(cls, name: str) -> Any:
        adapter = cls.adapters.get(name)
        if adapter is None:
            from pydantic import TypeAdapter

            m = cls.models
            types: dict[str, Any] = {
                "messages": list[m.ChatCompletionRequestMessage],  # type: ignore[name-defined]
                "tools": list[m.ChatCompletionRequestTool],  # type: ignore[name-defined]
                "tool_choice": m.ChatCompletionRequestToolChoice,
                "response_format": m.ResponseFormat,
                "prediction": m.Prediction,
            }
            adapter = cls.adapters[name] = TypeAdapter(types[name])
        return adapter


@dataclass(frozen=True)
class _Endpoint:
    name: str  # "chat.complete": also the cache namespace of the endpoint
    group: str  # SDK attribute: chat, fim, embeddings, models
    method: str  # SDK method (sync name)
    response: str  # SDK model rebuilt from cached JSON
    default_model: str | None  # Settings attribute
    stream: bool = False


_CHAT_COMPLETE = _Endpoint(
    "chat.complete", "chat", "complete", "ChatCompletionResponse", "chat_model"
)
_CHAT_STREAM = _Endpoint(
    "chat.stream", "chat", "stream", "CompletionEvent", "chat_model", stream=True
)
_FIM_COMPLETE = _Endpoint("fim.complete", "fim", "complete", "FIMCompletionResponse", "fim_model")
_FIM_STREAM = _Endpoint("fim.stream", "fim", "stream", "CompletionEvent", "fim_model", stream=True)
_EMBEDDINGS = _Endpoint(
    "embeddings.create", "embeddings", "create", "EmbeddingResponse", "embedding_model"
)
_MODELS_LIST = _Endpoint("models.list", "models", "list", "ModelList", None)

_NORMALISED = ("messages", "tools", "tool_choice", "response_format", "prediction")


def _simple_messages(messages: Any) -> bool:
    """Plain user/system dicts with text content are already in canonical form."""
    if not isinstance(messages, list):
        return False
    for message in messages:
        if (
            type(message) is not dict
            or len(message) != 2
            or message.get("role") not in ("user", "system")
            or type(message.get("content")) is not str
        ):
            return False
    return True


def _canonical(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters that change the answer, dicts and SDK objects in one normal form."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        if value is None or name in _TRANSPORT_PARAMS:
            continue
        if name in _NORMALISED and not (name == "messages" and _simple_messages(value)):
            adapter = _SDK.adapter(name)
            try:
                if name in ("messages", "tools"):
                    value = list(value)
                value = adapter.dump_python(
                    adapter.validate_python(value), mode="json", by_alias=True, exclude_none=True
                )
            except Exception:  # invalid input: the SDK call will report it
                pass
        out[name] = value
    return out


def _estimate_tokens(params: Mapping[str, Any]) -> int:
    """Rough token count of a request: characters / 4 of its text plus ``max_tokens``."""
    chars = 0
    for name in ("messages", "prompt", "suffix", "inputs", "input"):
        value = params.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    chars += len(item)
                else:
                    content = (
                        item.get("content")
                        if isinstance(item, Mapping)
                        else getattr(item, "content", None)
                    )
                    chars += len(content) if isinstance(content, str) else len(str(content or ""))
    max_tokens = params.get("max_tokens")
    return chars // 4 + (max_tokens if isinstance(max_tokens, int) else 0)


def _usage(result: Any) -> tuple[int, int, int]:
    usage = getattr(result, "usage", None)
    if usage is None:
        return 0, 0, 0
    prompt = getattr(usage, "prompt_tokens", None) or 0
    completion = getattr(usage, "completion_tokens", None) or 0
    total = getattr(usage, "total_tokens", None) or (prompt + completion)
    return int(prompt), int(completion), int(total)


# --------------------------------------------------------------------------- raw bodies

# The HTTP responses received by the current call (set around the SDK call; the HTTP
# clients' response hook appends to it), so a successful body is cached as received
# instead of re-serialising the SDK's model.
_responses: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "mistral_nbenv_responses", default=None
)


def _note_response(response: Any) -> None:
    seen = _responses.get()
    if seen is not None:
        seen.append(response)


async def _note_response_async(response: Any) -> None:
    _note_response(response)


def _response_json(result: Any, seen: list[Any]) -> str:
    """The JSON text to cache for ``result``: the body it was parsed from, when known.

    The SDK parsed that body into ``result`` (so it is valid JSON of a 200 answer);
    anything else falls back to dumping the model.
    """
    if seen:
        response = seen[-1]
        if response.status_code == 200 and getattr(response, "_content", None) is not None:
            with contextlib.suppress(Exception):
                text: str = response.text
                return text
    return result.model_dump_json(by_alias=True)


# --------------------------------------------------------------------------- the client


class Client:
    """A Mistral client bound to one environment; same methods as the SDK's ``Mistral``."""

    def __init__(
        self, settings: Settings, api_key: ResolvedKey, *, fast_sdk: bool | None = None
    ) -> None:
        self.settings = settings
        self.environment = settings.environment
        self._key = api_key
        self._fast_sdk = settings.fast_sdk if fast_sdk is None else fast_sdk
        self.stats = ClientStats()
        self._timeout_ms = max(1, int(float(settings.timeout) * 1000))
        self._cache_enabled = bool(settings.cache.enabled)
        self._offline = bool(settings.offline)
        self._cache = ResponseCache.for_settings(settings)
        self._limiter = RateLimiter(
            DiskStore(cache_dir(settings) / "ratelimit"),
            requests_per_minute=settings.rate_limits.requests_per_minute,
            tokens_per_minute=settings.rate_limits.tokens_per_minute,
            environment=settings.environment,
        )
        self._concurrency = ConcurrencyLimiter(settings.features.max_concurrent_requests)
        self._policy = RetryPolicy(
            max_retries=int(settings.max_retries),
            retry_max_wait=float(settings.retry_max_wait),
            on_retry=self._on_retry,
        )
        self._lock = threading.RLock()
        self._raw: Any = None
        self._async_raw: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self.chat = _Chat(self)
        self.fim = _Fim(self)
        self.embeddings = _Embeddings(self)
        self.models = _Models(self)

    def __repr__(self) -> str:
        server = f", server_url={self.settings.server_url!r}" if self.settings.server_url else ""
        return (
            f"<mistral_nbenv.Client environment={self.environment!r} "
            f"key={self._key.value.masked!r} ({self._key.source}){server}>"
        )

    # -- SDK objects -------------------------------------------------------------------

    def _new_sdk(self, sync_client: Any, async_client: Any) -> Any:
        sdk = _SDK.load()
        fast = False
        if self._fast_sdk:
            fast = _fastsdk.install()
        raw = sdk.Mistral(
            api_key=self._key.value.get_secret_value(),
            server_url=self.settings.server_url or None,
            client=sync_client,
            async_client=async_client,
            timeout_ms=self._timeout_ms,
        )
        if fast:
            _fastsdk.inline_hooks(raw)
        return raw

    @staticmethod
    def _async_http_client() -> Any:
        sdk = _SDK.load()
        return sdk.httpx.AsyncClient(
            verify=sdk.ssl_context,
            follow_redirects=True,
            event_hooks={"response": [_note_response_async]},
        )

    @property
    def raw(self) -> Any:
        """The underlying ``mistralai.client.Mistral`` (SDK retries off, our timeout)."""
        raw = self._raw
        if raw is None:
            with self._lock:
                raw = self._raw
                if raw is None:
                    sdk = _SDK.load()
                    sync_client = sdk.httpx.Client(
                        verify=sdk.ssl_context,
                        follow_redirects=True,
                        event_hooks={"response": [_note_response]},
                    )
                    raw = self._raw = self._new_sdk(sync_client, self._async_http_client())
        return raw

    def _raw_for_loop(self) -> Any:
        """An SDK object whose async HTTP client belongs to the running event loop."""
        loop = asyncio.get_running_loop()
        raw = self._async_raw.get(loop)
        if raw is None:
            with self._lock:
                raw = self._async_raw.get(loop)
                if raw is None:
                    sync_client = self.raw.sdk_configuration.client
                    raw = self._async_raw[loop] = self._new_sdk(
                        sync_client, self._async_http_client()
                    )
        return raw

    def close(self) -> None:
        """Release HTTP connections; the client reopens lazily if used again."""
        with contextlib.suppress(Exception):
            self._limiter.flush()
        with self._lock:
            raw, self._raw = self._raw, None
            loops = list(self._async_raw.items())
            self._async_raw = weakref.WeakKeyDictionary()
        if raw is not None:
            with contextlib.suppress(Exception):
                raw.sdk_configuration.client.close()
            _close_async(None, raw.sdk_configuration.async_client)
        for loop, loop_raw in loops:
            _close_async(loop, loop_raw.sdk_configuration.async_client)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- per-call plumbing -------------------------------------------------------------

    def _on_retry(self, attempt: int, exc: BaseException, delay: float) -> None:
        self.stats.add(retries=1)
        log.debug(
            "mistral_nbenv: %s: attempt %d failed (%s), retrying in %.2f s",
            self.environment,
            attempt,
            type(exc).__name__,
            delay,
        )

    def _lookup(self, ep: _Endpoint, kwargs: dict[str, Any]) -> tuple[str | None, str | None]:
        """Fill defaults and read the cache: (cached JSON text or None, key to store under).

        On a miss the call's ``timeout_ms`` is filled in; offline, a miss raises.
        """
        option = kwargs.pop("cache", None)
        if "retries" in kwargs:
            raise TypeError(
                "retries= is not supported: mistral_nbenv retries itself "
                "(max_retries / retry_max_wait in the settings)"
            )
        if ep.default_model is not None and kwargs.get("model") is None:
            kwargs["model"] = getattr(self.settings, ep.default_model)
        if self._offline:
            read, write = True, False
        elif option is None:
            read = write = self._cache_enabled
        elif option is True:
            read = write = True
        elif option is False:
            read = write = False
        elif option == "refresh":
            read, write = False, True
        else:
            raise ValueError(f"cache= must be True, False or 'refresh', not {option!r}")
        key = None
        if read or write:
            _SDK.load()  # _canonical needs the SDK's types
            key = self._cache.key(ep.name, _canonical(kwargs))
        if read and key is not None:
            text = self._cache.get(key)
            if text is not None:
                self.stats.add(hits=1)
                return text, None
        if self._offline:
            raise CacheMissError(
                f"Offline mode is on for environment '{self.environment}' and this "
                f"{ep.name} request is not in the cache. Run it once online, or leave "
                "offline mode (unset MISTRAL_NBENV_OFFLINE / set offline = false)."
            )
        if read:
            self.stats.add(misses=1)
        kwargs.setdefault("timeout_ms", self._timeout_ms)
        return None, key if write else None

    def _estimate(self, kwargs: Mapping[str, Any]) -> int:
        return _estimate_tokens(kwargs) if self._limiter.tpm > 0 else 0

    def _raise_mapped(self, exc: Exception, kwargs: Mapping[str, Any]) -> NoReturn:
        """Count the failure and raise it as our error, ``from`` the SDK's."""
        self.stats.add(errors=1)
        timeout_ms = kwargs.get("timeout_ms") or self._timeout_ms
        mapped = translate_error(
            exc,
            environment=self.environment,
            retry_max_wait=float(self.settings.retry_max_wait),
            timeout=timeout_ms / 1000,
            key_source=self._key.source,
            secret=self._key.value.get_secret_value(),
        )
        if mapped is exc:
            raise exc
        raise mapped from exc

    def _account(self, result: Any, estimate: int) -> None:
        prompt, completion, total = _usage(result)
        self.stats.add(
            requests=1, prompt_tokens=prompt, completion_tokens=completion, total_tokens=total
        )
        if total:
            self._limiter.reconcile(estimate, total)

    def _finish_call(self, result: Any, estimate: int, key: str | None, seen: list[Any]) -> Any:
        self._account(result, estimate)
        if key is not None:
            self._cache.set(key, _response_json(result, seen))
        return result

    def _waited(self, seconds: float) -> None:
        if seconds > 0:
            self.stats.add(rate_limit_waits=1, rate_limit_wait_seconds=seconds)

    def _call(self, ep: _Endpoint, kwargs: dict[str, Any]) -> Any:
        text, key = self._lookup(ep, kwargs)
        if text is not None:
            return _SDK.model(ep.response).model_validate_json(text)
        method = getattr(getattr(self.raw, ep.group), ep.method)
        estimate = self._estimate(kwargs)
        seen: list[Any] = []

        def attempt() -> Any:
            self._waited(self._limiter.acquire(estimate))
            seen.clear()
            token, scope = _responses.set(seen), _fastsdk.enter()
            try:
                return method(**kwargs)
            finally:
                _fastsdk.leave(scope)
                _responses.reset(token)

        self._concurrency.acquire()
        try:
            result, _attempts = self._policy.call(attempt)
        except Exception as exc:
            self._raise_mapped(exc, kwargs)
        finally:
            self._concurrency.release()
        return self._finish_call(result, estimate, key, seen)

    async def _call_async(self, ep: _Endpoint, kwargs: dict[str, Any]) -> Any:
        text, key = self._lookup(ep, kwargs)
        if text is not None:
            return _SDK.model(ep.response).model_validate_json(text)
        method = getattr(getattr(self._raw_for_loop(), ep.group), ep.method + "_async")
        estimate = self._estimate(kwargs)
        seen: list[Any] = []

        async def attempt() -> Any:
            self._waited(await self._limiter.acquire_async(estimate))
            seen.clear()
            token, scope = _responses.set(seen), _fastsdk.enter()
            try:
                return await method(**kwargs)
            finally:
                _fastsdk.leave(scope)
                _responses.reset(token)

        await self._concurrency.acquire_async()
        try:
            result, _attempts = await self._policy.call_async(attempt)
        except Exception as exc:
            self._raise_mapped(exc, kwargs)
        finally:
            self._concurrency.release()
        return self._finish_call(result, estimate, key, seen)

    def _replay(self, ep: _Endpoint, text: str) -> list[Any]:
        event_type = _SDK.model(ep.response)
        return [event_type.model_validate_json(line) for line in text.splitlines()]

    def _stream(self, ep: _Endpoint, kwargs: dict[str, Any]) -> Stream:
        text, key = self._lookup(ep, kwargs)
        if text is not None:
            return Stream(self, replay=self._replay(ep, text))
        method = getattr(getattr(self.raw, ep.group), ep.method)
        estimate = self._estimate(kwargs)

        def attempt() -> tuple[Any, list[Any]]:
            self._waited(self._limiter.acquire(estimate))
            scope = _fastsdk.enter()
            try:
                events = method(**kwargs)
                try:  # a stream is retried only until its first event arrives
                    return events, [next(events)]
                except StopIteration:
                    return events, []
                except BaseException:
                    events.close()
                    raise
            finally:
                _fastsdk.leave(scope)

        self._concurrency.acquire()  # released by the Stream when it ends
        try:
            (events, first), _attempts = self._policy.call(attempt)
        except BaseException as exc:
            self._concurrency.release()
            if isinstance(exc, Exception):
                self._raise_mapped(exc, kwargs)
            raise
        return Stream(self, source=events, first=first, key=key, estimate=estimate, kwargs=kwargs)

    async def _stream_async(self, ep: _Endpoint, kwargs: dict[str, Any]) -> AsyncStream:
        text, key = self._lookup(ep, kwargs)
        if text is not None:
            return AsyncStream(self, replay=self._replay(ep, text))
        method = getattr(getattr(self._raw_for_loop(), ep.group), ep.method + "_async")
        estimate = self._estimate(kwargs)

        async def attempt() -> tuple[Any, list[Any]]:
            self._waited(await self._limiter.acquire_async(estimate))
            scope = _fastsdk.enter()
            try:
                events = await method(**kwargs)
                try:
                    return events, [await events.__anext__()]
                except StopAsyncIteration:
                    return events, []
                except BaseException:
                    await events.close()
                    raise
            finally:
                _fastsdk.leave(scope)

        await self._concurrency.acquire_async()  # released by the stream when it ends
        try:
            (events, first), _attempts = await self._policy.call_async(attempt)
        except BaseException as exc:
            self._concurrency.release()
            if isinstance(exc, Exception):
                self._raise_mapped(exc, kwargs)
            raise
        return AsyncStream(
            self, source=events, first=first, key=key, estimate=estimate, kwargs=kwargs
        )


def _close_async(loop: asyncio.AbstractEventLoop | None, async_client: Any) -> None:
    """Close an ``httpx2.AsyncClient`` from sync code, as well as its loop allows."""
    if async_client is None:
        return
    state = getattr(async_client, "_state", None)
    if getattr(state, "name", "") == "UNOPENED":
        return  # never used: no connections to release (and no event loop to build)
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    target = loop or running
    if target is not None and target.is_closed():
        return  # its connections died with the loop
    with contextlib.suppress(Exception):
        if running is not None and (loop is None or loop is running):
            running.create_task(async_client.aclose())
        elif loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(async_client.aclose(), loop)
        elif loop is None:
            asyncio.run(async_client.aclose())


# --------------------------------------------------------------------------- streams


class _StreamBase:
    """What both stream kinds share: pending events, recording, the end of the call."""

    def __init__(
        self,
        client: Client,
        *,
        replay: list[Any] | None = None,
        source: Any = None,
        first: list[Any] | None = None,
        key: str | None = None,
        estimate: int = 0,
        kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self._client = client
        self._pending = collections.deque(replay if replay is not None else first or ())
        self._source = source
        self._key = key
        self._estimate = estimate
        self._kwargs = kwargs or {}
        self._recorded: list[str] | None = [] if key is not None else None
        self._last_usage: Any = None
        # A live stream holds a concurrency slot until _finish (a replay holds none).
        self._done = source is None
        self.replayed = replay is not None

    def _next_pending(self) -> Any:
        event = self._pending.popleft()
        return event if self.replayed else self._note(event)

    def _note(self, event: Any) -> Any:
        data = getattr(event, "data", None)
        if getattr(data, "usage", None) is not None:
            self._last_usage = data
        if self._recorded is not None:
            self._recorded.append(event.model_dump_json(by_alias=True))
        return event

    def _finish(self, complete: bool) -> None:
        if self._done:
            return
        self._done = True
        client = self._client
        if complete:
            client._account(self._last_usage, self._estimate)
            if self._key is not None and self._recorded is not None:
                client._cache.set(self._key, "\n".join(self._recorded))
        self._recorded = None
        client._concurrency.release()


class Stream(_StreamBase):
    """An iterator of the SDK's ``CompletionEvent``; recorded in the cache when read to the end."""

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._pending:
            return self._next_pending()
        if self._done:
            raise StopIteration
        scope = _fastsdk.enter()
        try:
            event = next(self._source)
        except StopIteration:
            self._finish(complete=True)
            raise
        except Exception as exc:
            self.close()
            self._client._raise_mapped(exc, self._kwargs)
        finally:
            _fastsdk.leave(scope)
        return self._note(event)

    def close(self) -> None:
        """Stop reading; a stream not read to the end is not cached."""
        self._pending.clear()
        if self._source is not None:
            with contextlib.suppress(Exception):
                self._source.close()
        self._finish(complete=False)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._done:
            with contextlib.suppress(Exception):
                self.close()


class AsyncStream(_StreamBase):
    """Async iterator of the SDK's ``CompletionEvent``; cached when read to the end."""

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._pending:
            return self._next_pending()
        if self._done:
            raise StopAsyncIteration
        scope = _fastsdk.enter()
        try:
            event = await self._source.__anext__()
        except StopAsyncIteration:
            self._finish(complete=True)
            raise
        except Exception as exc:
            await self.aclose()
            self._client._raise_mapped(exc, self._kwargs)
        finally:
            _fastsdk.leave(scope)
        return self._note(event)

    async def aclose(self) -> None:
        """Stop reading; a stream not read to the end is not cached."""
        self._pending.clear()
        if self._source is not None:
            with contextlib.suppress(Exception):
                await self._source.close()
        self._finish(complete=False)

    close = aclose

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Abandoned unclosed: give the concurrency slot back (the source cannot be awaited here).
        if not self._done:
            with contextlib.suppress(Exception):
                self._finish(complete=False)


# --------------------------------------------------------------------------- namespaces


class _Namespace:
    def __init__(self, client: Client) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"<{type(self).__name__.lstrip('_').lower()} of {self._client!r}>"


class _Chat(_Namespace):
    """``client.chat``: chat completions."""

    def complete(self, **kwargs: Any) -> Any:
        """``Mistral.chat.complete`` with cache, retries and limits (default ``model``)."""
        return self._client._call(_CHAT_COMPLETE, kwargs)

    async def complete_async(self, **kwargs: Any) -> Any:
        """Async ``chat.complete`` (works on any event loop)."""
        return await self._client._call_async(_CHAT_COMPLETE, kwargs)

    def stream(self, **kwargs: Any) -> Stream:
        """``Mistral.chat.stream``: yields the SDK's ``CompletionEvent``s."""
        return self._client._stream(_CHAT_STREAM, kwargs)

    async def stream_async(self, **kwargs: Any) -> AsyncStream:
        """Async ``chat.stream``: ``async for event in await client.chat.stream_async(...)``."""
        return await self._client._stream_async(_CHAT_STREAM, kwargs)


class _Fim(_Namespace):
    """``client.fim``: fill-in-the-middle completions."""

    def complete(self, **kwargs: Any) -> Any:
        """``Mistral.fim.complete``; ``model`` defaults to ``fim_model``."""
        return self._client._call(_FIM_COMPLETE, kwargs)

    async def complete_async(self, **kwargs: Any) -> Any:
        """Async ``fim.complete``."""
        return await self._client._call_async(_FIM_COMPLETE, kwargs)

    def stream(self, **kwargs: Any) -> Stream:
        """``Mistral.fim.stream``."""
        return self._client._stream(_FIM_STREAM, kwargs)

    async def stream_async(self, **kwargs: Any) -> AsyncStream:
        """Async ``fim.stream``."""
        return await self._client._stream_async(_FIM_STREAM, kwargs)


class _Embeddings(_Namespace):
    """``client.embeddings``."""

    def create(self, **kwargs: Any) -> Any:
        """``Mistral.embeddings.create``; ``model`` defaults to ``embedding_model``."""
        return self._client._call(_EMBEDDINGS, kwargs)

    async def create_async(self, **kwargs: Any) -> Any:
        """Async ``embeddings.create``."""
        return await self._client._call_async(_EMBEDDINGS, kwargs)


class _Models(_Namespace):
    """``client.models``."""

    def list(self, **kwargs: Any) -> Any:
        """``Mistral.models.list`` (cached like any other call)."""
        return self._client._call(_MODELS_LIST, kwargs)

    async def list_async(self, **kwargs: Any) -> Any:
        """Async ``models.list``."""
        return await self._client._call_async(_MODELS_LIST, kwargs)
