"""Helpers for the client tests: settings built directly, a fake key, a client factory."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mistral_nbenv.config import (
    BudgetSettings,
    CacheSettings,
    FeatureFlags,
    RateLimitSettings,
    SecretsSettings,
    Settings,
    SharedSettings,
)
from mistral_nbenv.secrets import SecretStr
from mistral_nbenv.secrets.keys import ResolvedKey

KEY = "Zq3XFakeWv2LrT8sYb4NcF6hJd1GaE7u"  # 32 characters, fake
OTHER_KEY = "Hy5RtU2oPq8WsX3zLm9NbV4cKj7FgD1a"


def make_settings(cache_root: Path, server_url: str, **overrides: Any) -> Settings:
    """Settings for one environment pointing at the loopback server, cache under tmp."""
    cache: dict[str, Any] = dict(
        enabled=True, ttl_seconds=300, directory=str(cache_root), size_limit_mb=16
    )
    cache.update(overrides.pop("cache", {}))
    limits = dict(requests_per_minute=0, tokens_per_minute=0)
    limits.update(overrides.pop("rate_limits", {}))
    flags = dict(use_new_model=False, enable_function_calling=True, max_concurrent_requests=10)
    flags.update(overrides.pop("features", {}))
    budget: dict[str, Any] = dict(
        daily_usd=0.0, monthly_usd=0.0, per_call_usd=0.0, confirm_above_usd=0.0
    )
    budget.update(overrides.pop("budget", {}))
    base = Settings(
        environment="staging",
        model="mistral-small-latest",
        new_model="mistral-medium-latest",
        embedding_model="mistral-embed",
        fim_model="codestral-latest",
        offline=False,
        server="",
        server_url=server_url,
        timeout=10,
        stream_timeout=0,
        max_retries=3,
        retry_max_wait=10,
        debug=False,
        protected=False,
        api_key=None,
        cache=CacheSettings(**cache),
        rate_limits=RateLimitSettings(**limits),
        budget=BudgetSettings(**budget),
        features=FeatureFlags(**flags),  # type: ignore[arg-type]
        secrets=SecretsSettings(300, "", None, "", "", "", ""),
        shared=SharedSettings(None, True, True, "local", 0.5, 0.5),
        prices={},
        fast_sdk=True,
        confirm_in_notebooks=True,
        models_lead_production=False,
    )
    return dataclasses.replace(base, **overrides)


def resolved(env: str = "staging", key: str = KEY) -> ResolvedKey:
    """A resolved key as ``workspace.get_api_key`` would return it."""
    return ResolvedKey(env, SecretStr(key), "MISTRAL_API_KEY_STAGING (test)")
