"""The environment model: detection from the process environment, switch rules, guards.

Pure functions of their arguments: which environment is *active* is held by
:class:`mistral_nbenv.workspace.Workspace`, which calls these. Detection never asks for
confirmation (a deployed job sets ``MISTRAL_ENV=production``); switching into a
``protected`` environment does.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from mistral_nbenv.config import Settings
from mistral_nbenv.config.names import canonical_or_none, normalize_name
from mistral_nbenv.errors import (
    ConfigurationError,
    EnvironmentGuardError,
    ProductionConfirmationRequired,
)

__all__ = [
    "VERCEL_MAP",
    "check_destructive",
    "check_required",
    "check_switch",
    "detect",
    "detect_for_notebook",
    "guard_decorator",
    "required_names",
    "unconfirmed_start",
]

F = TypeVar("F", bound=Callable[..., Any])

VERCEL_MAP = {"production": "production", "preview": "staging", "development": "development"}


def detect(environ: Mapping[str, str], known: Callable[[], Sequence[str]]) -> tuple[str, str]:
    """``(environment, reason)`` from ``MISTRAL_ENV``, ``VERCEL_ENV``, ``NODE_ENV``, else dev.

    ``known`` lists the environments; it is called only for a ``MISTRAL_ENV`` that is not
    a canonical name or alias (an extra section such as ``qa``), so detection alone never
    reads the settings files.
    """
    raw = environ.get("MISTRAL_ENV", "")
    value = raw.strip()
    if raw and not value:
        raise ConfigurationError(
            f"MISTRAL_ENV is set to {len(raw)} blank character(s), which names no environment. "
            "Unset it (development is then the default) or set it to an environment name."
        )
    if value:
        canonical = canonical_or_none(value)
        if canonical is not None:
            return canonical, f"MISTRAL_ENV={value}"
        try:
            return normalize_name(value, known()), f"MISTRAL_ENV={value}"
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


def check_switch(target: Settings, *, confirm: object) -> None:
    """Raise ``ProductionConfirmationRequired`` for a protected target unless ``confirm is True``.

    Only ``True`` itself confirms: ``"no"``, ``"false"``, ``1`` or any other truthy value
    do not (a string from a form or an environment variable is not a decision).
    """
    name = target.environment
    _require_confirm(
        target,
        confirm,
        f"switching into it needs confirmation. Use use_environment({name!r}, confirm=True), "
        f"`%mistral_env use {name} --confirm`, or the widget's Confirm button.",
    )


def check_destructive(target: Settings, action: str, *, confirm: object) -> None:
    """A destructive action on a protected environment needs ``confirm is True``."""
    name = target.environment
    _require_confirm(
        target,
        confirm,
        f"{action} needs confirmation. Nothing was changed. Use `--confirm` (`mistral-nbenv "
        f"cache clear --env {name} --confirm`, `%mistral_env cache clear --env {name} "
        "--confirm`) or confirm=True.",
    )


def _require_confirm(target: Settings, confirm: object, what: str) -> None:
    if target.protected and confirm is not True:
        raise ProductionConfirmationRequired(
            f"'{target.environment}' is a protected environment: {what}",
            environment=target.environment,
        )


def detect_for_notebook(
    environ: Mapping[str, str], known: Callable[[], Sequence[str]]
) -> tuple[str, str]:
    """:func:`detect` for an interactive kernel: a generic ``NODE_ENV`` alone never picks
    production (container images often set ``NODE_ENV=production`` for other tools)."""
    name, reason = detect(environ, known)
    if reason.startswith("NODE_ENV=") and name == "production":
        return "development", f"default ({reason} is ignored in a notebook)"
    return name, reason


def unconfirmed_start(name: str, reason: str) -> ProductionConfirmationRequired:
    """The error of a call in a kernel that started, unconfirmed, in protected ``name``."""
    return ProductionConfirmationRequired(
        f"This kernel started in the protected environment '{name}' because of {reason}, "
        f"and nothing has confirmed it yet: no call was sent. Run `%mistral_env use {name} "
        "--confirm` to work there, or `%mistral_env use development` to leave it.",
        environment=name,
    )


def guard_decorator(
    envs: Sequence[str], require: Callable[[Sequence[str], str], None]
) -> Callable[[F], F]:
    """A decorator that calls ``require(envs, operation)`` before every call (sync or async)."""

    def decorate(func: F) -> F:
        operation = getattr(func, "__qualname__", repr(func))
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                require(envs, operation)
                return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            require(envs, operation)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


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
