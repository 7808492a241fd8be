"""The SDK and its HTTP clients: made lazily, one async client per event loop, closed safely.

This is the only module that imports ``mistralai`` (and ``httpx2``, its HTTP client), and
only on first use. The SDK's own retries are off (the pipeline retries, in one place);
the timeout comes from the settings.

**Fork-safe.** The SDK objects hold pooled keep-alive connections; a forked child must never
read from a socket its parent also reads. Every entry point checks the pid
(:meth:`Transport._own`): in a child, the parent's SDK objects are forgotten (not closed:
their sockets are the parent's) and the child opens its own connections.

Every HTTP response goes through a response hook that appends it to the list in the
:data:`RESPONSES` context variable while the pipeline makes an attempt, so a successful
body is cached as received (:func:`response_json`) instead of re-serialising the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import weakref
from typing import TYPE_CHECKING, Any

from mistral_nbenv._forksafe import Lock, RLock
from mistral_nbenv.client import deadline, deprecation
from mistral_nbenv.client import sdkpatch as _fastsdk

if TYPE_CHECKING:
    from mistral_nbenv.config import Settings
    from mistral_nbenv.secrets.keys import ResolvedKey

__all__ = ["RESPONSES", "SDK", "Transport", "response_json"]


class SDK:
    """Lazily imported pieces of mistralai (imported on the first client use)."""

    loaded = False
    Mistral: Any
    models: Any
    httpx: Any
    ssl_context: Any
    adapters: dict[str, Any]
    model_types: dict[str, Any]
    _lock = Lock()

    @classmethod
    def load(cls) -> type[SDK]:
        """Import the SDK once per process."""
        if cls.loaded:
            return cls
        with cls._lock:
            if cls.loaded:
                return cls
            import httpx2
            from mistralai.client import Mistral, models

            cls.Mistral = Mistral
            cls.models = models
            deprecation.quiet_sdk_logger()
            cls.httpx = httpx2
            # One SSL context for every HTTP client: building one costs ~60 ms.
            cls.ssl_context = httpx2.create_ssl_context()
            cls.adapters = {}
            cls.model_types = {}
            cls.loaded = True
        return cls

    @classmethod
    def model(cls, name: str) -> Any:
        """An SDK model by name, looked up once (the SDK resolves names lazily)."""
        found = cls.load().model_types.get(name)
        if found is None:
            found = cls.model_types[name] = getattr(cls.models, name)
        return found

    @classmethod
    def adapter(cls, name: str) -> Any:
        """A pydantic ``TypeAdapter`` for one normalised request parameter."""
        adapter = cls.load().adapters.get(name)
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


# The HTTP responses received by the current attempt (the hooks below append to it).
RESPONSES: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "mistral_nbenv_responses", default=None
)


def _note_response(response: Any) -> None:
    seen = RESPONSES.get()
    if seen is not None:
        seen.append(response)


async def _note_response_async(response: Any) -> None:
    _note_response(response)


def response_json(result: Any, seen: list[Any]) -> str:
    """The JSON text to cache for ``result``: the body it was parsed from, when known.

    The SDK parsed that body into ``result`` (so it is valid JSON of a 200 answer);
    anything else falls back to dumping the model.
    """
    if seen:
        response = seen[-1]
        if response.status_code == 200 and getattr(response, "_content", None) is not None:
            with contextlib.suppress(Exception):  # undecodable: the model's own dump below
                text: str = response.text
                return text
    return str(result.model_dump_json(by_alias=True))


class Transport:
    """The SDK objects of one client: one for sync calls, one per event loop for async."""

    def __init__(self, settings: Settings, key: ResolvedKey, *, fast_sdk: bool) -> None:
        self._settings = settings
        self._key = key
        self._fast_sdk = fast_sdk
        self.timeout_ms = max(1, int(float(settings.timeout) * 1000))
        self._lock = RLock()
        self.sync_raw: Any = None
        # the sync SDK object's bound methods by (group, name), looked up once per object
        self._sync_methods: tuple[Any, dict[tuple[str, str], Any]] = (None, {})
        self._async_raw: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._pid = os.getpid()

    def _own(self) -> None:
        """In a forked child, forget the parent's SDK objects and their connections."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self.sync_raw = None
                    self._sync_methods = (None, {})
                    self._async_raw = weakref.WeakKeyDictionary()
                    self._pid = os.getpid()

    def _new_sdk(self, sync_client: Any, async_client: Any) -> Any:
        sdk = SDK.load()
        fast = _fastsdk.install() if self._fast_sdk else False
        key = self._key
        # a token file is read again for every request (the SDK accepts a callable)
        api_key = key.current if key.token_file is not None else key.value.get_secret_value()
        raw = sdk.Mistral(
            api_key=api_key,
            server=self._settings.server or None,
            server_url=self._settings.server_url or None,
            client=sync_client,
            async_client=async_client,
            timeout_ms=self.timeout_ms,
        )
        if fast:
            _fastsdk.inline_hooks(raw)
        return raw

    def _limits(self) -> Any:
        """The pool of one HTTP client, sized to the environment's concurrency: every call
        allowed in flight keeps its connection alive for the next (httpx keeps 20)."""
        slots = int(self._settings.features.max_concurrent_requests)
        return SDK.load().httpx.Limits(
            max_connections=max(100, slots), max_keepalive_connections=slots
        )

    def _async_http_client(self) -> Any:
        sdk = SDK.load()
        client = sdk.httpx.AsyncClient(
            verify=sdk.ssl_context,
            limits=self._limits(),
            follow_redirects=True,
            event_hooks={"response": [_note_response_async]},
        )
        deadline.install(client, is_async=True)
        return client

    @property
    def raw(self) -> Any:
        """The SDK object for sync calls (made on first use)."""
        self._own()
        raw = self.sync_raw
        if raw is None:
            with self._lock:
                raw = self.sync_raw
                if raw is None:
                    sdk = SDK.load()
                    sync_client = sdk.httpx.Client(
                        verify=sdk.ssl_context,
                        limits=self._limits(),
                        follow_redirects=True,
                        event_hooks={"response": [_note_response]},
                    )
                    deadline.install(sync_client, is_async=False)
                    raw = self.sync_raw = self._new_sdk(sync_client, self._async_http_client())
        return raw

    def for_loop(self) -> Any:
        """An SDK object whose async HTTP client belongs to the running event loop."""
        self._own()
        loop = asyncio.get_running_loop()
        raw = self._async_raw.get(loop)
        if raw is None:
            with self._lock:
                raw = self._async_raw.get(loop)
                if raw is None:
                    sync_client = self.raw.sdk_configuration.client
                    async_client = self._async_http_client()
                    raw = self._async_raw[loop] = self._new_sdk(sync_client, async_client)
                    _close_with_loop(loop, async_client)
        return raw

    def method(self, group: str, name: str, *, is_async: bool) -> Any:
        """The bound SDK method ``group.name`` (``name + "_async"`` on this event loop);
        ``group`` may be dotted (``beta.conversations``)."""
        if is_async:
            return self._method(self.for_loop(), group, name, is_async=True)
        raw = self.raw
        methods = self._sync_methods
        if methods[0] is not raw:  # a new SDK object (after close): look up afresh
            methods = self._sync_methods = (raw, {})
        found = methods[1].get((group, name))
        if found is None:
            found = methods[1][group, name] = self._method(raw, group, name, is_async=False)
        return found

    @staticmethod
    def _method(target: Any, group: str, name: str, *, is_async: bool) -> Any:
        for part in group.split("."):
            target = getattr(target, part)
        method = getattr(target, name + "_async" if is_async else name)
        if getattr(method, "__deprecated__", None) is not None:
            # ``@deprecated`` warns at its caller, which would be the pipeline: the wrapper's
            # method warns at the user's line instead (namespaces), and this runs the body.
            body = getattr(getattr(method, "__func__", None), "__wrapped__", None)
            if body is not None:
                return body.__get__(target)
        return method

    def _detach(self) -> tuple[Any, list[tuple[asyncio.AbstractEventLoop, Any]]]:
        """Forget the SDK objects (made again if used again) and close the sync HTTP client;
        return the sync SDK object and each loop's, whose async clients are still open."""
        self._own()  # a child closes only what it opened
        with self._lock:
            raw, self.sync_raw = self.sync_raw, None
            loops = list(self._async_raw.items())
            self._async_raw = weakref.WeakKeyDictionary()
        if raw is not None:
            with contextlib.suppress(Exception):
                raw.sdk_configuration.client.close()
        return raw, loops

    def close(self) -> None:
        """Release HTTP connections; the SDK objects are made again if used again."""
        raw, loops = self._detach()
        if raw is not None:
            _close_async(None, raw.sdk_configuration.async_client)
        for loop, loop_raw in loops:
            _close_async(loop, loop_raw.sdk_configuration.async_client)

    async def aclose(self) -> None:
        """:meth:`close` from a coroutine: the running loop's HTTP clients are closed before
        it returns (other loops' as :meth:`close` closes them)."""
        running = asyncio.get_running_loop()
        raw, loops = self._detach()
        here = [] if raw is None else [raw.sdk_configuration.async_client]
        for loop, loop_raw in loops:
            if loop is running:
                here.append(loop_raw.sdk_configuration.async_client)
            else:
                _close_async(loop, loop_raw.sdk_configuration.async_client)
        for async_client in here:
            if _opened(async_client):
                with contextlib.suppress(Exception):
                    await async_client.aclose()


#: Closing tasks started on a running loop by :func:`_close_async`, kept until they end (the
#: loop holds only a weak reference to a task).
_closing: set[asyncio.Task[Any]] = set()


def _opened(async_client: Any) -> bool:
    """Whether an ``httpx2.AsyncClient`` was used (an unused one has nothing to release)."""
    if async_client is None:
        return False
    state = getattr(async_client, "_state", None)
    return getattr(state, "name", "") != "UNOPENED"


#: Per loop, the async generators that close its HTTP clients when the loop shuts down
#: (held here: a generator collected early would close its client while in use).
_closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Any]] = (
    weakref.WeakKeyDictionary()
)


async def _closer(async_client: Any) -> Any:
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await async_client.aclose()


def _close_with_loop(loop: asyncio.AbstractEventLoop, async_client: Any) -> None:
    """Close ``async_client`` on ``loop`` as ``asyncio.run()`` ends it.

    ``asyncio.run`` (and IPython's loop runner) calls ``loop.shutdown_asyncgens()`` before
    closing the loop: every async generator the loop started is closed there, while the
    loop still runs. An async generator whose ``finally`` closes the client, started on the
    loop, so closes its connections: a script with one ``asyncio.run()`` per call keeps no
    socket of a finished loop.
    """
    closer = _closer(async_client)
    _closers.setdefault(loop, []).append(closer)  # the loop holds its generators weakly
    task = loop.create_task(closer.__anext__())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def _close_async(loop: asyncio.AbstractEventLoop | None, async_client: Any) -> None:
    """Close an ``httpx2.AsyncClient`` from sync code, as well as its loop allows."""
    if not _opened(async_client):
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
            task = running.create_task(async_client.aclose())
            _closing.add(task)
            task.add_done_callback(_closing.discard)
        elif loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(async_client.aclose(), loop)
        elif loop is None:
            asyncio.run(async_client.aclose())
