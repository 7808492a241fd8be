"""The Mistral client wrapper: one environment, cache, retries, rate limits, concurrency.

A :class:`Client` is bound to one environment for its whole life (the workspace makes one
per environment: ``mistral_nbenv.get_client``). It mirrors the installed official SDK
(``from mistralai.client import Mistral``): every namespace and operation it has
(``chat.complete``, ``chat.parse``, ``files.upload``, ``beta.conversations.start_stream``
...), discovered from the SDK, each with its ``_async`` twin, the same keyword arguments and
the SDK's own response objects, plus the keywords ``cache=True|False|"refresh"`` and
``retry=True|False|"unsent"``. Each goes through one pipeline whose policy comes from the
operation's HTTP method and kind (:mod:`.policy`).

The parts, one concern each:

* :mod:`.transport`: the SDK objects and HTTP clients (one per event loop), made lazily;
* :mod:`.request`: endpoints (from discovery), canonical parameters, token estimate, usage;
* :mod:`.policy`: the policy table (inference / conversation / read / write);
* :mod:`.pipeline`: prepare -> execute -> finish, the same for every endpoint;
* :mod:`.streams`: streamed events, recorded and cached when read to the end;
* :mod:`.namespaces`: ``client.chat`` etc., mirrored from the SDK on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mistral_nbenv.client.pipeline import CacheOption, ClientStats, Pipeline
from mistral_nbenv.client.streams import AsyncStream, Stream
from mistral_nbenv.client.transport import Transport, response_json

if TYPE_CHECKING:
    # the SDK's namespaces with their own signatures and return types, plus cache= and
    # retry= (generated from the installed SDK by tools/gen_sdk_types.py): for type checkers
    # and editors; at run time the namespaces are built from the SDK (namespaces.py)
    from mistral_nbenv.client.sdk_types import Namespaces as _Namespaces
    from mistral_nbenv.config import Settings
    from mistral_nbenv.policies.spend import Spending
    from mistral_nbenv.secrets.keys import ResolvedKey
    from mistral_nbenv.store.shared import Shared

__all__ = ["AsyncStream", "CacheOption", "Client", "ClientStats", "Stream", "response_json"]


def _namespace_names() -> frozenset[str]:
    """The SDK's top-level namespaces (chat, files, beta ...)."""
    from mistral_nbenv.client import surface

    return frozenset(surface.space(()).children)


if not TYPE_CHECKING:
    _Namespaces = object


class Client(_Namespaces):
    """A Mistral client bound to one environment; same methods as the SDK's ``Mistral``."""

    def __init__(
        self,
        settings: Settings,
        api_key: ResolvedKey,
        *,
        fast_sdk: bool | None = None,
        shared: Shared | None = None,
        gate: Callable[[], None] | None = None,
        confirm: Callable[[str], bool] | None = None,
    ) -> None:
        """``gate`` runs before every call and may refuse it by raising (the workspace's
        check that a protected environment a notebook started in was confirmed);
        ``confirm(question)`` asks before a call above ``budget.confirm_above_usd`` (a
        notebook's one-line prompt; without it nobody is asked)."""
        from mistral_nbenv.client.namespaces import build_namespaces

        self.settings = settings
        self.environment = settings.environment
        self._key = api_key
        fast = settings.fast_sdk if fast_sdk is None else fast_sdk
        self._transport = Transport(settings, api_key, fast_sdk=fast)
        self._pipeline = Pipeline(
            settings, api_key, self._transport, shared, gate=gate, confirm=confirm
        )
        self.stats: ClientStats = self._pipeline.stats
        # the pipeline's parts, named as tests and benchmarks know them
        self._cache = self._pipeline.cache
        self._limiter = self._pipeline.limiter
        self._concurrency = self._pipeline.concurrency
        self._policy = self._pipeline.policy
        self._root = build_namespaces(self._pipeline, repr(self))

    def __getattr__(self, name: str) -> Any:
        """``client.chat``, ``client.beta`` ...: the SDK's namespaces, made on first use."""
        if name.startswith("_") or name not in _namespace_names():
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        space = getattr(self._root, name)
        setattr(self, name, space)
        return space

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *_namespace_names()})

    def __repr__(self) -> str:
        server = f", server_url={self.settings.server_url!r}" if self.settings.server_url else ""
        return (
            f"<mistral_nbenv.Client environment={self.environment!r} "
            f"key={self._key.value.masked!r} ({self._key.source}){server}>"
        )

    @property
    def raw(self) -> Any:
        """The underlying ``mistralai.client.Mistral`` (SDK retries off, our timeout).

        The escape hatch: calls made on it skip the cache, budget, retries and masking.
        """
        return self._transport.raw

    @property
    def _raw(self) -> Any:
        """The sync SDK object if one is open (None after :meth:`close`)."""
        return self._transport.sync_raw

    def request_key(self, operation: str, **kwargs: Any) -> str | None:
        """The cache key of ``operation`` (``"chat.complete"``) called with ``kwargs``: a
        one-way SHA-256 digest of the request as it would be sent, the cache on or off
        (what ``%%mistral`` records as provenance). None when it has no stable form."""
        from mistral_nbenv.client.request import ENDPOINTS

        found = next((ep for ep in ENDPOINTS if ep.name == operation), None)
        if found is None:
            raise ValueError(f"request_key: {operation!r} is not one of the keyed operations")
        return self._pipeline.key_of(found, dict(kwargs))

    @property
    def spending(self) -> Spending:
        """This environment's prices and caps; ``spending.spent()`` is ``(today, this month)``
        in USD, as the caps count it (every process, and every host through Redis)."""
        return self._pipeline.spending

    def cost_of(self, response: Any) -> float | None:
        """USD of one answer at this environment's prices (by the model it names); None
        when that model has no price."""
        return self._pipeline.price(response)

    def close(self) -> None:
        """Release HTTP connections and the stores' file descriptors; the client reopens
        them lazily if used again. (Nothing is pending: each call wrote its cache entry,
        usage and budget before it returned.)"""
        self._transport.close()
        self._pipeline.stores.close()

    async def aclose(self) -> None:
        """:meth:`close` for async code (``async with get_client() as client:``): this
        event loop's HTTP connections are closed before it returns."""
        await self._transport.aclose()
        self._pipeline.stores.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
