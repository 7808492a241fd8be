"""The environment model: detection from the process environment, switch rules, guards.

Pure functions of their arguments: which environment is *active* is held by
:class:`mistral_nbenv.workspace.Workspace`, which calls these. Detection never asks for
confirmation (a deployed job sets ``MISTRAL_ENV=production``); switching into a
``protected`` environment does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ._names import canonical_or_none, normalize_name
from .config import Settings
from .errors import ConfigurationError, EnvironmentGuardError, ProductionConfirmationRequired

__all__ = ["VERCEL_MAP", "check_required", "check_switch", "detect", "required_names"]

VERCEL_MAP = {"production": "production", "preview": "staging", "development": "development"}


def detect(environ: Mapping[str, str], known: Sequence[str]) -> tuple[str, str]:
    """``(environment, reason)`` from ``MISTRAL_ENV``, ``VERCEL_ENV``, ``NODE_ENV``, else dev."""
    value = environ.get("MISTRAL_ENV", "").strip()
    if value:
        canonical = canonical_or_none(value)
        if canonical is not None:
            return canonical, f"MISTRAL_ENV={value}"
        try:
            return normalize_name(value, known), f"MISTRAL_ENV={value}"
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"MISTRAL_ENV={value!r} is not an environment. {exc}"
            ) from None
    vercel = environ.get("VERCEL_ENV", "").strip()
    if vercel.lower() in VERCEL_MAP:
        return VERCEL_MAP[vercel.lower()], f"VERCEL_ENV={vercel}"
    node = environ.get("NODE_ENV", "").strip()
    canonical = canonical_or_none(node) if node else None
    if canonical is not None:
        return canonical, f"NODE_ENV={node}"
    return "development", "default (none of MISTRAL_ENV, VERCEL_ENV, NODE_ENV names one)"


def check_switch(target: Settings, *, confirm: bool) -> None:
    """Raise ``ProductionConfirmationRequired`` for a protected target without ``confirm``."""
    if target.protected and not confirm:
        name = target.environment
        raise ProductionConfirmationRequired(
            f"'{name}' is a protected environment: switching into it needs confirmation. "
            f"Use use_environment({name!r}, confirm=True), `%mistral_env use {name} "
            f"--confirm`, or the widget's Confirm button.",
            environment=name,
        )


def required_names(required: str | Iterable[str], known: Sequence[str]) -> list[str]:
    """The canonical names of a guard's environments (unknown names are an error)."""
    names = [required] if isinstance(required, str) else list(required)
    if not names:
        raise ConfigurationError("require_environment needs at least one environment name.")
    return [normalize_name(n, known) for n in names]


def check_required(allowed: Sequence[str], current: str, operation: str) -> None:
    """Raise ``EnvironmentGuardError`` unless ``current`` is one of ``allowed``."""
    if current not in allowed:
        raise EnvironmentGuardError(
            f'Operation "{operation}" requires {" or ".join(allowed)} but running in {current}'
        )
