"""Where an environment's state lives: the one place its stores are built.

State belongs to what it describes. Answers and usage belong to a project and one of its
environments; the rate budget belongs to the API key (and the server it is sent to), since
that is what the provider limits:

* ``<project>/<environment>/``: the response cache;
* ``<project>/<environment>/usage/``: the usage ledger;
* ``<project>/<environment>/usage-pending/``: with ``[E.shared]``, the usage recorded while
  Redis was down, until it is merged there;
* ``<project>/<environment>/spend/``: what the spending caps (``budget.*``) count: the UTC
  day's and month's USD (with ``[E.shared]``, in Redis, and here while it is down), and the
  rate-limit headers the API last sent;
* ``<root>/budgets/<key fingerprint>/``: the rate budget (requests/min, tokens/min), shared
  by every project and process using that key with that server, and by no other.

``<root>`` is ``cache.directory`` when a project sets one (then ``<project>`` is ``<root>``
itself: the project chose that directory), else the user cache directory, where
``<project>`` is ``<root>/projects/<name>-<digest>`` (the directory the settings came from:
its name and 8 hex digits of its path's SHA-256), so two projects on one machine never
share answers, usage or a ``cache clear``. A project found no settings file for is
``projects/default``. The fingerprint is 12 hex digits of the SHA-256 of the key and the
server URL: it names the key without revealing it.

Each is a :class:`~mistral_nbenv.store.local.DiskStore` (diskcache: 0700 directories, 0600
files, JSON text only, every write committed before it returns). With ``[E.shared]`` the
ledger always lives in Redis, the cache when ``shared.cache`` and the budget when
``shared.rate_limits`` are on; the local stores are then what a call uses while Redis is
unavailable (:mod:`mistral_nbenv.store.shared`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mistral_nbenv.store.local import DiskStore, MemoryStore

if TYPE_CHECKING:
    from mistral_nbenv.config import Settings
    from mistral_nbenv.store import Budget, KeyValue, Ledger
    from mistral_nbenv.store.shared import Shared, SharedScript

__all__ = [
    "Stores",
    "budget_dir",
    "cache_dir",
    "cache_root",
    "open_stores",
    "project_name",
]


def cache_root(settings: Settings) -> Path:
    """The cache root: ``cache.directory`` or the user cache directory."""
    configured = settings.cache.directory
    if configured:
        return Path(os.path.expandvars(os.path.expanduser(str(configured))))
    import platformdirs

    return Path(platformdirs.user_cache_dir("mistral-nbenv"))


def cache_dir(settings: Settings) -> Path:
    """This project's directory for ``settings``' environment: its response cache, and its
    usage ledger in ``usage/``."""
    root = cache_root(settings)
    if settings.cache.directory:
        return root / settings.environment
    return root / "projects" / project_name(settings.project_dir) / settings.environment


def project_name(directory: Path | None) -> str:
    """``<name>-<8 hex digits>`` of a project directory (``default`` without one)."""
    if directory is None:
        return "default"
    path = str(Path(directory).resolve())
    digest = hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(path).name)[:40]
    return f"{name or 'root'}-{digest}"


def budget_dir(settings: Settings, api_key: str) -> Path:
    """Where the rate budget of ``api_key`` (sent to ``settings``' server) lives."""
    from mistral_nbenv.store.shared import fingerprint

    return cache_root(settings) / "budgets" / fingerprint(f"{api_key}\0{settings.base_url}")


@dataclass(frozen=True)
class Stores:
    """One environment's stores, as a client (or a report) uses them."""

    cache: KeyValue
    budget: Budget
    ledger: Ledger
    #: The budget's admission in Redis (``[E.shared] rate_limits``), else None.
    shared_budget: SharedScript | None
    #: The spending caps' day and month, and the API's last rate-limit headers.
    spend: Budget
    #: The spending caps in Redis (``[E.shared]``), else None.
    shared_spend: SharedScript | None = None

    def close(self) -> None:
        """Release the local stores' file descriptors (they reopen when used again)."""
        for store in (self.cache, self.budget, self.ledger, self.spend):
            for each in (store, getattr(store, "local", None)):
                close = getattr(each, "close", None)
                if callable(close):
                    close()


def open_stores(settings: Settings, shared: Shared | None = None, api_key: str = "") -> Stores:
    """The stores of ``settings``' environment (nothing is opened until first used).

    ``api_key``: the environment's key, whose fingerprint names its budget, on disk and in
    Redis (a budget belongs to the key); without one (a report), the budget is in memory.
    """
    directory = cache_dir(settings)
    limit = int(float(settings.cache.size_limit_mb) * 1024 * 1024)
    wait = float(settings.timeout)  # no call waits longer than its timeout on a lock
    cache: KeyValue = DiskStore(directory, size_limit=limit, wait=wait)
    ledger: Ledger = DiskStore(directory / "usage", wait=wait)
    shared_budget = shared_spend = None
    spend: Budget = DiskStore(directory / "spend", wait=wait)
    if shared is not None:
        if api_key:
            shared_spend = shared.spend(f"{api_key}\0{settings.base_url}")
        if shared.share_cache:
            cache = shared.cache(cache)
        if shared.share_budget and api_key:
            shared_budget = shared.budget(f"{api_key}\0{settings.base_url}")
        # while Redis is down, usage waits in its own directory until it is merged there
        ledger = shared.ledger(DiskStore(directory / "usage-pending", wait=wait))
    budget: Budget = (
        DiskStore(budget_dir(settings, api_key), wait=wait) if api_key else MemoryStore()
    )
    return Stores(cache, budget, ledger, shared_budget, spend, shared_spend)
