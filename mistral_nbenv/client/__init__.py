"""The Mistral client wrapper: one environment, cache, retries, rate limits, concurrency.

A :class:`Client` is bound to one environment for its whole life (the workspace makes one
per environment: ``mistral_nbenv.get_client``). It mirrors the official SDK
(``from mistralai.client import Mistral``): ``chat.complete``, ``chat.stream``,
``embeddings.create``, ``fim.complete``, ``fim.stream``, ``models.list``, each with an
``_async`` twin, same keyword arguments, the SDK's own response objects, plus the keyword
``cache=True|False|"refresh"``.

The parts, one concern each:

* :mod:`.transport`: the SDK objects and HTTP clients (one per event loop), made lazily;
* :mod:`.request`: the endpoint table, canonical parameters, token estimate, usage;
* :mod:`.pipeline`: prepare -> execute -> finish, the same for every endpoint;
* :mod:`.streams`: streamed events, recorded and cached when read to the end;
* :mod:`.namespaces`: ``client.chat`` etc., generated from the endpoint table.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from .pipeline import CacheOption, ClientStats, Pipeline
from .streams import AsyncStream, Stream
from .transport import Transport, response_json

if TYPE_CHECKING:
    from ..config import Settings
    from ..keys import ResolvedKey
    from ..shared import Shared

__all__ = ["AsyncStream", "CacheOption", "Client", "ClientStats", "Stream", "response_json"]


class Client:
    """A Mistral client bound to one environment; same methods as the SDK's ``Mistral``."""

    chat: Any
    fim: Any
    embeddings: Any
    models: Any

    def __init__(
        self,
        settings: Settings,
        api_key: ResolvedKey,
        *,
        fast_sdk: bool | None = None,
        shared: Shared | None = None,
    ) -> None:
        from .namespaces import build_namespaces

        self.settings = settings
        self.environment = settings.environment
        self._key = api_key
        fast = settings.fast_sdk if fast_sdk is None else fast_sdk
        self._transport = Transport(settings, api_key, fast_sdk=fast)
        self._pipeline = Pipeline(settings, api_key, self._transport, shared)
        self.stats: ClientStats = self._pipeline.stats
        # the pipeline's parts, named as tests and benchmarks know them
        self._cache = self._pipeline.cache
        self._limiter = self._pipeline.limiter
        self._concurrency = self._pipeline.concurrency
        self._policy = self._pipeline.policy
        for group, space in build_namespaces(self._pipeline, repr(self)).items():
            setattr(self, group, space)

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

    def close(self) -> None:
        """Release HTTP connections and held budget, write the usage counts and pending cache
        entries; the client reopens lazily if used again."""
        with contextlib.suppress(Exception):
            self._limiter.flush()
        with contextlib.suppress(Exception):
            self._pipeline.usage.flush()
        self._pipeline.cache.flush()
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
