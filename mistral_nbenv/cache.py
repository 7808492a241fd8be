"""Response cache on diskcache: one private directory per environment, JSON text values.

Layout: ``<cache_root>/<environment>/`` holds the responses (diskcache's SQLite database,
values as JSON text so nothing is ever pickled); ``<cache_root>/<environment>/ratelimit/``
holds the shared rate-limit state (see :mod:`mistral_nbenv.ratelimit`).  Directories are
0700 and files 0600.  Keys are SHA-256 digests of the canonical request (endpoint and every
parameter that changes the answer, ``None`` dropped, keys sorted) namespaced by environment
and server URL, so they reveal nothing of the prompt and never include a key.

A cache that cannot be opened, read or written degrades to "no cache" with one warning per
directory and process; the call itself goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import diskcache

    from .config import Settings

__all__ = [
    "CacheUnavailableWarning",
    "ResponseCache",
    "cache_dir",
    "cache_root",
    "canonical_json",
    "clear_for",
    "private_umask",
    "request_key",
    "stats_for",
]

log = logging.getLogger(__name__)

#: Values up to this size stay inside SQLite (responses are typically ~1 KB).
DISK_MIN_FILE_SIZE = 4 * 1024 * 1024
#: Enforce ``size_limit`` (evict oldest entries) once every this many writes.
CULL_EVERY = 64

_warned: set[str] = set()
_warned_lock = threading.Lock()
_open: dict[str, diskcache.Cache] = {}
_open_lock = threading.Lock()
_umask_lock = threading.RLock()


class CacheUnavailableWarning(RuntimeWarning):
    """The response cache could not be used; calls go to the API uncached."""


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


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Create files 0600 and directories 0700 inside the block (process-wide umask)."""
    with _umask_lock:
        old = os.umask(0o077)
        try:
            yield
        finally:
            os.umask(old)


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) and make it 0700."""
    with private_umask():
        path.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)


def _tighten(directory: Path) -> None:
    for child in directory.iterdir():
        with contextlib.suppress(OSError):
            mode = stat.S_IMODE(child.lstat().st_mode)
            if child.is_symlink():
                continue
            want = 0o700 if child.is_dir() else 0o600
            if mode != want:
                child.chmod(want)


def warn_once(directory: Path | str, problem: str) -> None:
    """Warn once per directory and process that the cache is off, and why."""
    key = str(directory)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(
        f"mistral_nbenv: response cache at {key} is unavailable ({problem}); "
        "continuing without a cache. Fix or delete that directory, or set cache.directory.",
        CacheUnavailableWarning,
        stacklevel=4,
    )


def open_diskcache(directory: Path, *, size_limit: int | None = None) -> diskcache.Cache:
    """Open (or reuse within this process) the diskcache at ``directory``, privately."""
    key = str(directory)
    with _open_lock:
        cache = _open.get(key)
        if cache is not None:
            if size_limit is not None and cache.size_limit != size_limit:
                cache.reset("size_limit", size_limit)
            return cache
        import diskcache

        make_private_dir(directory)
        kwargs: dict[str, Any] = {
            "disk_min_file_size": DISK_MIN_FILE_SIZE,
            "statistics": False,
            "tag_index": False,
            "eviction_policy": "least-recently-stored",
            # culling on every write costs more than the write: ResponseCache culls in batches
            "cull_limit": 0,
        }
        if size_limit is not None:
            kwargs["size_limit"] = size_limit
        with private_umask():
            cache = diskcache.Cache(str(directory), **kwargs)
        _tighten(directory)
        _open[key] = cache
        return cache


def close_all() -> None:
    """Close every diskcache this process opened (tests, interpreter shutdown)."""
    with _open_lock:
        for cache in _open.values():
            with contextlib.suppress(Exception):
                cache.close()
        _open.clear()


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


_encode = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
).encode


def canonical_json(params: Mapping[str, Any]) -> str:
    """Canonical JSON text of request parameters: top-level ``None`` dropped, keys sorted.

    SDK (pydantic) objects are dumped by alias without ``None`` fields; callers that want
    dicts and SDK objects to coincide normalise them first (the client does).
    """
    return _encode({k: v for k, v in params.items() if v is not None})


def request_key(namespace: str, endpoint: str, params: Mapping[str, Any]) -> str:
    """SHA-256 cache key of one request within a namespace (environment + server URL)."""
    text = canonical_json(params)
    digest = hashlib.sha256(namespace.encode())
    digest.update(b"\0")
    digest.update(endpoint.encode())
    digest.update(b"\0")
    digest.update(text.encode())
    return digest.hexdigest()


class ResponseCache:
    """One environment's response cache; every failure turns it off with one warning."""

    def __init__(
        self,
        directory: Path,
        *,
        namespace: str,
        ttl_seconds: float | None,
        size_limit_bytes: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.namespace = namespace
        self.ttl = float(ttl_seconds) if ttl_seconds and ttl_seconds > 0 else None
        self.size_limit = size_limit_bytes
        self._cache: diskcache.Cache | None = None
        self._broken = False
        self._writes = 0

    @classmethod
    def for_settings(cls, settings: Settings) -> ResponseCache:
        """The cache of ``settings``' environment, keys namespaced by environment + server URL."""
        return cls(
            cache_dir(settings),
            namespace=f"{settings.environment}\0{settings.server_url}",
            ttl_seconds=settings.cache.ttl_seconds,
            size_limit_bytes=int(float(settings.cache.size_limit_mb) * 1024 * 1024),
        )

    def __repr__(self) -> str:
        state = "off" if self._broken else "ok"
        return f"ResponseCache({str(self.directory)!r}, ttl={self.ttl}, {state})"

    @property
    def available(self) -> bool:
        """False once the cache failed (it stays off for the rest of the process)."""
        return not self._broken

    def _db(self) -> diskcache.Cache | None:
        cache = self._cache
        if cache is not None:
            return cache
        if self._broken:
            return None
        try:
            cache = self._cache = open_diskcache(self.directory, size_limit=self.size_limit)
        except Exception as exc:
            self._fail(exc)
            return None
        return cache

    def _fail(self, exc: BaseException) -> None:
        self._broken = True
        self._cache = None
        warn_once(self.directory, f"{type(exc).__name__}: {exc}")

    def key(self, endpoint: str, params: Mapping[str, Any]) -> str:
        """Cache key of a request to ``endpoint`` with ``params``."""
        return request_key(self.namespace, endpoint, params)

    def get(self, key: str) -> str | None:
        """The stored JSON text for ``key``, or None (miss, expired or cache off)."""
        cache = self._cache if self._cache is not None else self._db()
        if cache is None:
            return None
        try:
            value = cache.get(key, None, retry=True)
        except Exception as exc:
            self._fail(exc)
            return None
        if value is None:
            return None
        if isinstance(value, bytes):
            return value.decode()
        if not isinstance(value, str):  # written by something else: never unpickled by us
            return None
        return value

    def set(self, key: str, text: str) -> None:
        """Store JSON text under ``key`` with the configured TTL (failures only warn)."""
        cache = self._db()
        if cache is None:
            return
        try:
            with private_umask():
                cache.set(key, text, expire=self.ttl, retry=True)
            self._writes += 1
            if self._writes % CULL_EVERY == 1:
                cache.cull(retry=True)
        except Exception as exc:
            self._fail(exc)

    def stats(self) -> dict[str, Any]:
        """Entry count and bytes on disk."""
        cache = self._db()
        if cache is None:
            return {"entries": 0, "bytes": 0, "available": False}
        try:
            cache.expire(retry=True)
            return {"entries": len(cache), "bytes": cache.volume(), "available": True}
        except Exception as exc:
            self._fail(exc)
            return {"entries": 0, "bytes": 0, "available": False}

    def clear(self) -> int:
        """Remove every entry of this environment's cache; return how many."""
        cache = self._db()
        if cache is None:
            return 0
        try:
            return int(cache.clear(retry=True))
        except Exception as exc:
            self._fail(exc)
            return 0


def stats_for(settings: Settings) -> dict[str, Any]:
    """Entries, bytes, directory, enabled flag and TTL of one environment's cache."""
    directory = cache_dir(settings)
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
    }
    if directory.is_dir():
        info.update(ResponseCache.for_settings(settings).stats())
    return info


def clear_for(settings: Settings) -> int:
    """Remove every cached response of one environment (never another's); return how many."""
    if not cache_dir(settings).is_dir():
        return 0
    return ResponseCache.for_settings(settings).clear()
