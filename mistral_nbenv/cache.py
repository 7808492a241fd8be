"""The response cache: request keys, JSON bodies, per-environment namespaces, degradation.

Layout on the embedded store: ``<cache_root>/<environment>/`` holds the responses (a
:class:`~mistral_nbenv.store.local.DiskStore`: diskcache's SQLite database, values as JSON
text so nothing is ever pickled, directories 0700 and files 0600);
``<cache_root>/<environment>/ratelimit/`` holds the shared rate-limit state (see
:mod:`mistral_nbenv.ratelimit`). Keys are SHA-256 digests of the canonical request
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
import math
import os
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CacheUnavailableError, SharedStoreUnavailableError
from .store import CacheUnavailableWarning, KeyValue, warn_once

if TYPE_CHECKING:
    from .config import Settings
    from .shared import Shared
    from .store.writebehind import WriteBehind

__all__ = [
    "CacheUnavailableWarning",
    "ResponseCache",
    "cache_dir",
    "cache_root",
    "canonical_json",
    "clear_for",
    "request_key",
    "stats_for",
]

log = logging.getLogger(__name__)


def cache_root(settings: Settings) -> Path:
    """The cache root: ``cache.directory`` or the user cache directory."""
    configured = settings.cache.directory
    if configured:
        return Path(os.path.expandvars(os.path.expanduser(str(configured))))
    import platformdirs

    return Path(platformdirs.user_cache_dir("mistral-nbenv"))


def cache_dir(settings: Settings) -> Path:
    """This environment's own cache directory."""
    return cache_root(settings) / settings.environment


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


_encoder = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
)
# The C encoder behind ``_encoder.encode``, made once instead of on every call (None
# without json's C accelerator: then json's own path).
_make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encode = (
    None
    if _make_c_encoder is None
    else _make_c_encoder(
        None, _json_default, json.encoder.encode_basestring, None, ":", ",", True, False, True
    )
)


def _encode(params: dict[str, Any]) -> str:
    """``_encoder.encode(params)``, the same text (no cycle check: a cycle is a
    ``RecursionError``, which the client treats as an input with no stable form)."""
    if _c_encode is None:
        return _encoder.encode(params)
    return "".join(_c_encode(params, 0))


def canonical_json(params: Mapping[str, Any]) -> str:
    """Canonical JSON text of request parameters: top-level ``None`` dropped, keys sorted.

    SDK (pydantic) objects are dumped by alias without ``None`` fields; callers that want
    dicts and SDK objects to coincide normalise them first (the client does).
    """
    return _encode({k: v for k, v in params.items() if v is not None})


def request_key(namespace: str, endpoint: str, params: Mapping[str, Any]) -> str:
    """SHA-256 cache key of one request within a namespace (environment + server URL).

    What is hashed is :func:`canonical_json`'s text, except that a string of
    :data:`DIGEST_FROM` characters or more (a long prompt, a document) stands as ``#`` and
    its own SHA-256 (:func:`_key_string`): hashing a long text costs a fraction of escaping
    it as JSON first, and ``#`` never appears outside a JSON string, so the text still
    names one request. A request with only shorter strings keeps the key earlier releases
    gave it.
    """
    present = {k: v for k, v in params.items() if v is not None}
    return _digest(_prefix(namespace, endpoint), present)


#: Strings this long or longer enter a cache key as their own SHA-256 (see :func:`request_key`).
DIGEST_FROM = 256


def _key_string(value: str) -> str:
    """A string as it enters the key text: JSON, or ``#`` + its SHA-256 when it is long."""
    size = len(value)
    if size < DIGEST_FROM:
        return _encode_basestring(value)
    if size >= RECENT_FROM:
        found = _recent.get(id(value))  # an entry holds its str: a hit is this very object
        if found is not None:
            return found[1]
    # surrogatepass: a lone surrogate is hashed too, as json.dumps would have kept it
    text = "#" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    if size >= RECENT_FROM:
        _recent.remember(value, text)
    return text


class _RecentDigests(dict[int, tuple[str, str]]):
    """The key form of the last few documents (:data:`RECENT_FROM` characters or more), by
    identity: a document sent with one question after another (the same ``str`` object) is
    hashed once, not on every call.

    Each entry holds its string, so its ``id`` cannot be taken by another object while it is
    remembered; at most :data:`RECENT_CHARS` characters are held (a longer string is hashed
    every time), the oldest entries dropped first.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._chars = 0

    def remember(self, value: str, text: str) -> None:
        size = len(value)
        if size > RECENT_CHARS:
            return
        with self._lock:
            while self and self._chars + size > RECENT_CHARS:
                oldest = next(iter(self))
                self._chars -= len(self.pop(oldest)[0])
            self[id(value)] = (value, text)
            self._chars += size


#: Most characters of long strings :func:`_key_string` keeps with their digests (4 Mi).
RECENT_CHARS = 1 << 22
#: Strings shorter than this are hashed on every call, never remembered: hashing 4 KiB takes
#: ~3 us, about what remembering costs, so only a document is worth keeping (a long prompt
#: sent once would pay for an entry it never uses).
RECENT_FROM = 4096
_recent = _RecentDigests()


_encode_basestring = json.encoder.encode_basestring

#: Strings shorter than this (parameter names, roles, model names) are remembered in their
#: key form, up to :data:`_REMEMBER_AT_MOST` of them (then the memo starts again).
_REMEMBER_BELOW = 64
_REMEMBER_AT_MOST = 4096


class _KeyStrings(dict[str, str]):
    """Strings in their key form (:func:`_key_string`), the short ones remembered.

    The JSON encoder calls ``memo[s]`` for every string of a request: a remembered one is a
    lookup in C, with no Python call at all; a request's names and roles are the same on
    every call, so only its text reaches :func:`_key_string`.
    """

    def __missing__(self, value: str) -> str:
        text = _key_string(value)
        if len(value) < _REMEMBER_BELOW:
            if len(self) >= _REMEMBER_AT_MOST:
                self.clear()
            self[value] = text
        return text


_key_strings = _KeyStrings()
_c_key_text = (
    None
    if _make_c_encoder is None
    else _make_c_encoder(
        None, _json_default, _key_strings.__getitem__, None, ":", ",", True, False, True
    )
)


def _key_text(params: Mapping[str, Any]) -> str:
    """The text a request's key hashes: :func:`canonical_json` of ``params`` (which hold no
    ``None`` value at the top), long strings as digests."""
    if _c_key_text is None:  # json without its C accelerator: its Python twin
        make = json.encoder._make_iterencode  # type: ignore[attr-defined]
        iterencode = make(
            None, _json_default, _key_string, None, _float_text, ":", ",", True, False, True
        )
        return "".join(iterencode(params, 0))
    return "".join(_c_key_text(params, 0))


def _float_text(value: float) -> str:
    """A float as json's C encoder writes it (``NaN``, ``Infinity``, else ``repr``)."""
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def _prefix(namespace: str, endpoint: str) -> bytes:
    return f"{namespace}\0{endpoint}\0".encode()


def _digest(prefix: bytes, params: Mapping[str, Any]) -> str:
    return hashlib.sha256(prefix + _key_text(params).encode("utf-8", "surrogatepass")).hexdigest()


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
        self._behind: WriteBehind | None = None  # the disk's write-behind, when it has one
        self._prefixes: dict[str, bytes] = {}  # what each endpoint's keys are hashed after

    @classmethod
    def for_settings(cls, settings: Settings, shared: Shared | None = None) -> ResponseCache:
        """The cache of ``settings``' environment, keys namespaced by environment + server URL.

        With a shared store (``[E.shared]``, ``cache = true``) the entries live in Redis
        and the disk cache is only the fallback while Redis is unavailable.
        """
        from .store.local import DiskStore
        from .store.writebehind import write_behind

        limit = int(float(settings.cache.size_limit_mb) * 1024 * 1024)
        disk = DiskStore(cache_dir(settings), size_limit=limit)
        behind = write_behind(disk, write_many=disk.set_many)
        store: KeyValue = behind
        if shared is not None and shared.share_cache:
            store = shared.cache(store)
        cache = cls(
            store,
            namespace=f"{settings.environment}\0{settings.server_url}",
            ttl_seconds=settings.cache.ttl_seconds,
        )
        cache._behind = behind
        return cache

    def __repr__(self) -> str:
        state = "off" if self._broken else "ok"
        return f"ResponseCache({self.store.location!r}, ttl={self.ttl}, {state})"

    @property
    def available(self) -> bool:
        """False once the cache failed (it stays off for the rest of the process)."""
        return not self._broken

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, SharedStoreUnavailableError):
            raise exc  # on_unavailable = "error": the caller asked to be told
        self._broken = True
        self.problem = f"{type(exc).__name__}: {exc}"
        warn_once(self.store.location, self.problem)

    def flush(self) -> None:
        """Write what the disk's write-behind still holds (a closing client calls this)."""
        if self._behind is not None:
            self._behind.flush()  # a failed write warns, never raises

    def key(self, endpoint: str, params: Mapping[str, Any]) -> str:
        """Cache key of a request to ``endpoint`` with ``params`` (:func:`request_key`).

        ``params`` hold no ``None`` value at the top, as the client's ``canonical`` gives
        them (:func:`request_key` drops those itself; the pipeline need not do it twice).
        """
        prefix = self._prefixes.get(endpoint)
        if prefix is None:
            prefix = self._prefixes[endpoint] = _prefix(self.namespace, endpoint)
        return _digest(prefix, params)

    def get(self, key: str) -> str | None:
        """The stored JSON text for ``key``, or None (miss, expired or cache off)."""
        if self._broken:
            return None
        try:
            return self.store.get(key)
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
        info.update(ResponseCache.for_settings(settings, shared).stats())
    return info


def clear_for(settings: Settings, shared: Shared | None = None) -> int:
    """Remove every cached response of one environment (never another's); return how many."""
    if not cache_dir(settings).is_dir() and not (shared is not None and shared.share_cache):
        return 0
    cache = ResponseCache.for_settings(settings, shared)
    removed = cache.clear()
    if not cache.available:
        raise CacheUnavailableError(
            f"The response cache of '{settings.environment}' at {cache.store.location} cannot "
            f"be cleared ({cache.problem}); nothing was removed. Check that directory's "
            "permissions and free space, or delete it."
        )
    return removed
