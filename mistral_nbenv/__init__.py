"""mistral_nbenv: the Mistral AI API across development, staging and production.

The same code works in notebooks (``%load_ext mistral_nbenv``) and scripts::

    from mistral_nbenv import get_client
    client = get_client()            # bound to the active environment
    client.chat.complete(messages=[{"role": "user", "content": "Hello"}])

Importing this package is cheap: ``mistralai``, IPython, ipywidgets, Dynaconf and the
secret-store libraries are imported only when first needed.
"""

from __future__ import annotations

from typing import Any

from mistral_nbenv.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    BudgetExceededError,
    CacheMissError,
    ConcurrencyLimitError,
    ConfigurationError,
    EnvironmentGuardError,
    MissingAPIKeyError,
    MistralEnvError,
    MistralEnvWarning,
    ModelDeprecationWarning,
    ProductionConfirmationRequired,
    RateLimitError,
    SecretBackendError,
    StreamExpiredError,
)
from mistral_nbenv.workspace import (
    current_environment,
    detect_environment,
    environment,
    feature_flags,
    get_client,
    get_settings,
    list_environments,
    require_environment,
    require_production,
    requires_environment,
    use_environment,
)

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "BudgetExceededError",
    "CacheMissError",
    "ConcurrencyLimitError",
    "ConfigurationError",
    "EnvironmentGuardError",
    "MissingAPIKeyError",
    "MistralEnvError",
    "MistralEnvWarning",
    "ModelDeprecationWarning",
    "ProductionConfirmationRequired",
    "RateLimitError",
    "SecretBackendError",
    "StreamExpiredError",
    "__version__",
    "current_environment",
    "detect_environment",
    "environment",
    "feature_flags",
    "get_client",
    "get_settings",
    "list_environments",
    "load_ipython_extension",
    "require_environment",
    "require_production",
    "requires_environment",
    "unload_ipython_extension",
    "use_environment",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext mistral_nbenv``: register ``%mistral_env`` and ``%%mistral``."""
    from mistral_nbenv.ui.magic import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext mistral_nbenv``: close clients and remove the magics."""
    from mistral_nbenv.ui.magic import unload_ipython_extension as _unload

    _unload(ipython)
