"""Where an environment's state lives: the one place its stores are built.

Under the cache root (``cache.directory``, else the user cache directory), each environment
has its own directory, so clearing one never touches another:

* ``<root>/<environment>/``: the response cache;
* ``<root>/<environment>/ratelimit/``: the rate budget (requests/min, tokens/min);
* ``<root>/<environment>/usage/``: the usage ledger.

Each is a :class:`~mistral_nbenv.store.local.DiskStore` (diskcache: 0700 directories, 0600
files, JSON text only, every write committed before it returns). With ``[E.shared]`` the
ledger always lives in Redis, the cache when ``shared.cache`` and the budget when
``shared.rate_limits`` are on; the local stores are then what a call uses while Redis is
unavailable (:mod:`mistral_nbenv.store.shared`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mistral_nbenv.store.local import DiskStore

if TYPE_CHECKING:
    from mistral_nbenv.config import Settings
    from mistral_nbenv.store import Budget, KeyValue, Ledger
    from mistral_nbenv.store.shared import Shared, SharedBudget

__all__ = ["Stores", "cache_dir", "cache_root", "open_stores"]


def cache_root(settings: Settings) -> Path:
    """The cache root: ``cache.directory`` or the user cache directory."""
    configured = settings.cache.directory
    if configured:
        return Path(os.path.expandvars(os.path.expanduser(str(configured))))
    import platformdirs

    return Path(platformdirs.user_cache_dir("mistral-nbenv"))


def cache_dir(settings: Settings) -> Path:
    """This environment's own directory (its response cache; the budget and the ledger in
    subdirectories)."""
    return cache_root(settings) / settings.environment


@dataclass(frozen=True)
class Stores:
    """One environment's stores, as a client (or a report) uses them."""

    cache: KeyValue
    budget: Budget
    ledger: Ledger
    #: The budget's admission in Redis (``[E.shared] rate_limits``), else None.
    shared_budget: SharedBudget | None


def open_stores(settings: Settings, shared: Shared | None = None, api_key: str = "") -> Stores:
    """The stores of ``settings``' environment (nothing is opened until first used).

    ``api_key``: the environment's key, whose fingerprint names a shared budget in Redis
    (a budget belongs to the key); unused without one.
    """
    directory = cache_dir(settings)
    limit = int(float(settings.cache.size_limit_mb) * 1024 * 1024)
    cache: KeyValue = DiskStore(directory, size_limit=limit)
    ledger: Ledger = DiskStore(directory / "usage")
    shared_budget = None
    if shared is not None:
        if shared.share_cache:
            cache = shared.cache(cache)
        if shared.share_budget and api_key:
            shared_budget = shared.budget(api_key)
        ledger = shared.ledger(ledger)
    return Stores(cache, DiskStore(directory / "ratelimit"), ledger, shared_budget)
