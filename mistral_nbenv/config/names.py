"""Canonical environment names and their aliases (pure functions, no I/O)."""

from __future__ import annotations

from collections.abc import Iterable

from mistral_nbenv.errors import ConfigurationError

CANONICAL: tuple[str, ...] = ("development", "staging", "production")

ALIASES: dict[str, str] = {
    "dev": "development",
    "develop": "development",
    "development": "development",
    "local": "development",
    "stage": "staging",
    "staging": "staging",
    "preview": "staging",
    "prod": "production",
    "production": "production",
    "live": "production",
}

#: Suffix of the per-environment key variable, e.g. ``MISTRAL_API_KEY_PROD``.
KEY_VARIABLE_SUFFIX: dict[str, str] = {
    "development": "DEV",
    "staging": "STAGING",
    "production": "PROD",
}


def canonical_or_none(name: str) -> str | None:
    """The canonical name for a built-in name or alias (case-insensitive), else None."""
    return ALIASES.get(name.strip().lower())


def normalize_name(
    name: str, known: Iterable[str] = CANONICAL, *, what: str = "environment"
) -> str:
    """Turn a name or alias into a known environment name, or raise ``ConfigurationError``."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"{what} name must be a non-empty string, got {name!r}.")
    known = list(known)
    canonical = canonical_or_none(name)
    if canonical is not None:
        return canonical
    lowered = name.strip().lower()
    if lowered in known:
        return lowered
    raise ConfigurationError(
        f"Unknown {what} {name!r}. Valid names: {', '.join(known)} "
        f"(aliases: dev/develop/local, stage/preview, prod/live)."
    )


def key_variable(environment: str) -> str:
    """The fallback variable holding an environment's key, e.g. ``MISTRAL_API_KEY_STAGING``."""
    suffix = KEY_VARIABLE_SUFFIX.get(environment)
    if suffix is None:
        suffix = "".join(c if c.isalnum() else "_" for c in environment.upper())
    return f"MISTRAL_API_KEY_{suffix}"
