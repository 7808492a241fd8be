"""The response cache: request keys, JSON bodies, per-environment namespaces, degradation.

Where the entries live is :mod:`mistral_nbenv.store.layout`'s business (by default
``<cache_root>/<environment>/``: diskcache, values as JSON text so nothing is ever pickled,
directories 0700 and files 0600). Keys are SHA-256 digests of the canonical request
(endpoint and every parameter that changes the answer, ``None`` dropped, keys sorted)
namespaced by environment and server URL, so they reveal nothing of the prompt and never
include a key. :class:`ResponseCache` sees only the :class:`~mistral_nbenv.store.KeyValue`
protocol.

A cache that cannot be opened, read or written degrades to "no cache" with one warning per
location and process; the call itself goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mistral_nbenv.errors import CacheUnavailableError, SharedStoreUnavailableError
from mistral_nbenv.store import (
    Busy,
    CacheUnavailableWarning,
    KeyValue,
    Locked,
    UnreadableEntry,
    warn_once,
)

if TYPE_CHECKING:
    from mistral_nbenv.config import Settings
    from mistral_nbenv.store.shared import Shared

__all__ = [
    "CacheUnavailableWarning",
    "ResponseCache",
    "canonical_json",
    "clear_for",
    "request_key",
    "stats_for",
]

log = logging.getLogger(__name__)


def _json_default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if dump is not None:
        return dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
        return list(value)
    return str(value)


def canonical_json(params: Mapping[str, Any]) -> str:
    """Canonical JSON text of request parameters: top-level ``None`` dropped, keys sorted.

    SDK (pydantic) objects are dumped by alias without ``None`` fields; callers that want
    dicts and SDK objects to coincide normalise them first (the client does). A cycle is a
    ``ValueError``: such a request has no stable form and is not cached.
    """
    return json.dumps(
        {k: v for k, v in params.items() if v is not None},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=_json_default,
    )


def request_key(namespace: str, endpoint: str, params: Mapping[str, Any]) -> str:
    """The cache key of one request: the SHA-256 of ``namespace``, ``endpoint`` and
    :func:`canonical_json` of ``params``, NUL-separated (namespace = environment + server
    URL, so one environment's entries never answer another's requests)."""
    text = f"{namespace}\0{endpoint}\0{canonical_json(params)}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class ResponseCache:
    """One environment's response cache on a :class:`KeyValue` store.

    Every failure of the store turns the cache off for the rest of the process, with one
    warning; the call goes on uncached.
    """

    def __init__(self, store: KeyValue, *, namespace: str, ttl_seconds: float | None) -> None:
        self.store = store
        self.namespace = namespace
        self.ttl = float(ttl_seconds) if ttl_seconds and ttl_seconds > 0 else None
        self._broken = False
        self.problem = ""  # why the cache is off, once it is

    @classmethod
    def for_settings(cls, settings: Settings, store: KeyValue) -> ResponseCache:
        """The cache of ``settings``' environment on ``store`` (``open_stores(...).cache``:
        Redis with ``[E.shared] cache``, the disk then only the fallback), its keys
        namespaced by environment and server URL."""
        return cls(
            store,
            namespace=f"{settings.environment}\0{settings.base_url}",
            ttl_seconds=settings.cache.ttl_seconds,
        )

    def __repr__(self) -> str:
        state = "off" if self._broken else "ok"
        return f"ResponseCache({self.store.location!r}, ttl={self.ttl}, {state})"

    @property
    def available(self) -> bool:
        """False once the cache failed (it stays off for the rest of the process)."""
        return not self._broken

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, SharedStoreUnavailableError | Busy):
            raise exc  # "error": the caller asked to be told; Busy: to be run where it may wait
        if isinstance(exc, Locked):  # this write is skipped; the cache stays on
            warn_once(
                f"{self.store.location} (locked)",
                str(exc),
                then="answers are not stored while it stays locked, and are again after",
                fix="Resume or end the process that holds it; nothing needs deleting.",
            )
            return
        self._broken = True
        self.problem = f"{type(exc).__name__}: {exc}"
        warn_once(self.store.location, self.problem)

    def key(self, endpoint: str, params: Mapping[str, Any]) -> str:
        """Cache key of a request to ``endpoint`` with ``params`` (:func:`request_key`)."""
        return request_key(self.namespace, endpoint, params)

    def get(self, key: str) -> str | None:
        """The stored JSON text for ``key``, or None (miss, expired or cache off)."""
        if self._broken:
            return None
        try:
            return self.store.get(key)
        except UnreadableEntry as exc:  # one entry, not the cache: dropped, with a warning
            self.drop(key, str(exc))
            return None
        except Exception as exc:
            self._fail(exc)
            return None

    def set(self, key: str, text: str) -> None:
        """Store JSON text under ``key`` with the configured TTL (failures only warn)."""
        if self._broken:
            return
        try:
            self.store.set(key, text, self.ttl)
        except Exception as exc:
            self._fail(exc)

    def drop(self, key: str, problem: str) -> None:
        """Remove an entry that cannot be used (one warning); the call goes on as a miss."""
        warnings.warn(
            f"mistral_nbenv: dropped an unreadable cache entry at {self.store.location} "
            f"({problem}); the request goes to the API.",
            CacheUnavailableWarning,
            stacklevel=5,
        )
        try:
            self.store.delete(key)
        except Exception as exc:
            self._fail(exc)

    def stats(self) -> dict[str, Any]:
        """Entry count and bytes stored."""
        if not self._broken:
            try:
                entries, size = self.store.count()
                return {"entries": entries, "bytes": size, "available": True}
            except Exception as exc:
                self._fail(exc)
        return {"entries": 0, "bytes": 0, "available": False, "problem": self.problem}

    def clear(self) -> int:
        """Remove every entry of this environment's cache; return how many."""
        if self._broken:
            return 0
        try:
            return self.store.clear()
        except Exception as exc:
            self._fail(exc)
            return 0


def stats_for(settings: Settings, shared: Shared | None = None) -> dict[str, Any]:
    """Entries, bytes, directory (or shared URL), enabled flag and TTL of one environment's
    cache."""
    from mistral_nbenv.store.layout import cache_dir, open_stores

    directory = cache_dir(settings)
    on_redis = shared is not None and shared.share_cache
    info: dict[str, Any] = {
        "environment": settings.environment,
        "directory": str(directory),
        "enabled": bool(settings.cache.enabled),
        "offline": bool(settings.offline),
        "ttl_seconds": settings.cache.ttl_seconds,
        "size_limit_mb": settings.cache.size_limit_mb,
        "entries": 0,
        "bytes": 0,
        "available": True,
        "shared": shared.url if on_redis and shared is not None else None,
    }
    if directory.is_dir() or on_redis:
        info.update(
            ResponseCache.for_settings(settings, open_stores(settings, shared).cache).stats()
        )
    return info


def clear_for(settings: Settings, shared: Shared | None = None) -> int:
    """Remove every cached response of one environment (never another's); return how many."""
    from mistral_nbenv.store.layout import cache_dir, open_stores

    if not cache_dir(settings).is_dir() and not (shared is not None and shared.share_cache):
        return 0
    cache = ResponseCache.for_settings(settings, open_stores(settings, shared).cache)
    removed = cache.clear()
    if not cache.available:
        raise CacheUnavailableError(
            f"The response cache of '{settings.environment}' at {cache.store.location} cannot "
            f"be cleared ({cache.problem}); nothing was removed. Check that directory's "
            "permissions and free space, or delete it."
        )
    return removed
