"""The active environment: detection, switching (with confirmation), guards and flags.

The active environment is process-wide. It starts as :func:`detect_environment` says and
changes only through :func:`use_environment` (and the magic / widget, which call it).
Detection never asks for confirmation; switching into a ``protected`` environment does.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from ._names import canonical_or_none, normalize_name
from .errors import ConfigurationError, EnvironmentGuardError, ProductionConfirmationRequired

__all__ = [
    "add_switch_listener",
    "current_environment",
    "detect_environment",
    "detection_reason",
    "environment",
    "feature_flags",
    "require_environment",
    "require_production",
    "requires_environment",
    "use_environment",
]

if TYPE_CHECKING:
    from .settings import FeatureFlags

log = logging.getLogger("mistral_nbenv")
F = TypeVar("F", bound=Callable[..., Any])

VERCEL_MAP = {"production": "production", "preview": "staging", "development": "development"}

_lock = threading.RLock()
_active: str | None = None
_listeners: list[Callable[[str, str], None]] = []


def _known() -> list[str]:
    from .settings import list_environments

    return list_environments()


def _detect() -> tuple[str, str]:
    value = os.environ.get("MISTRAL_ENV", "").strip()
    if value:
        canonical = canonical_or_none(value)
        if canonical is not None:
            return canonical, f"MISTRAL_ENV={value}"
        try:
            return normalize_name(value, _known()), f"MISTRAL_ENV={value}"
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"MISTRAL_ENV={value!r} is not an environment. {exc}"
            ) from None
    vercel = os.environ.get("VERCEL_ENV", "").strip()
    if vercel.lower() in VERCEL_MAP:
        return VERCEL_MAP[vercel.lower()], f"VERCEL_ENV={vercel}"
    node = os.environ.get("NODE_ENV", "").strip()
    canonical = canonical_or_none(node) if node else None
    if canonical is not None:
        return canonical, f"NODE_ENV={node}"
    return "development", "default (none of MISTRAL_ENV, VERCEL_ENV, NODE_ENV names one)"


def detect_environment() -> str:
    """The environment from ``MISTRAL_ENV``, ``VERCEL_ENV``, ``NODE_ENV``, else development."""
    return _detect()[0]


def detection_reason() -> str:
    """Why :func:`detect_environment` chose what it chose, e.g. ``MISTRAL_ENV=prod``."""
    return _detect()[1]


def current_environment() -> str:
    """The active environment of this process."""
    global _active
    with _lock:
        if _active is None:
            _active = detect_environment()
        return _active


def add_switch_listener(callback: Callable[[str, str], None]) -> Callable[[], None]:
    """Call ``callback(old, new)`` after every switch; returns a function that removes it."""
    with _lock:
        _listeners.append(callback)

    def remove() -> None:
        with _lock:
            if callback in _listeners:
                _listeners.remove(callback)

    return remove


def _set(target: str) -> str:
    global _active
    with _lock:
        old = current_environment()
        _active = target
        listeners = list(_listeners)
    if old != target:
        log.info("mistral_nbenv: switched environment %s -> %s", old, target)
        for callback in listeners:
            try:
                callback(old, target)
            except Exception:  # a broken listener must not undo or block the switch
                log.exception("mistral_nbenv: switch listener %r failed", callback)
    return target


def use_environment(name: str, *, confirm: bool = False) -> str:
    """Make ``name`` the active environment; a protected one needs ``confirm=True``."""
    from .settings import get_settings

    target = normalize_name(name, _known())
    settings = get_settings(target)  # invalid settings fail here, before anything changes
    if target == current_environment():
        return target
    if settings.protected and not confirm:
        raise ProductionConfirmationRequired(
            f"'{target}' is a protected environment: switching into it needs confirmation. "
            f"Use use_environment({target!r}, confirm=True), `%mistral_env use {target} "
            f"--confirm`, or the widget's Confirm button.",
            environment=target,
        )
    return _set(target)


@contextmanager
def environment(name: str, *, confirm: bool = False) -> Iterator[str]:
    """Switch to ``name`` for a ``with`` block, then restore the previous environment."""
    previous = current_environment()
    active = use_environment(name, confirm=confirm)
    try:
        yield active
    finally:
        _set(previous)  # going back to where the user already was needs no confirmation


def _required(required: str | Iterable[str]) -> list[str]:
    names = [required] if isinstance(required, str) else list(required)
    if not names:
        raise ConfigurationError("require_environment needs at least one environment name.")
    known = _known()
    return [normalize_name(n, known) for n in names]


def require_environment(required: str | Iterable[str], operation: str) -> None:
    """Raise ``EnvironmentGuardError`` unless the active environment is one of ``required``."""
    allowed = _required(required)
    current = current_environment()
    if current not in allowed:
        raise EnvironmentGuardError(
            f'Operation "{operation}" requires {" or ".join(allowed)} but running in {current}'
        )


def require_production(operation: str) -> None:
    """Raise ``EnvironmentGuardError`` unless running in production."""
    require_environment("production", operation)


def requires_environment(*envs: str) -> Callable[[F], F]:
    """Decorator: the function runs only in one of ``envs`` (checked at every call)."""
    _required(envs)  # fail at decoration time for unknown names

    def decorate(func: F) -> F:
        operation = getattr(func, "__qualname__", repr(func))
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                require_environment(envs, operation)
                return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            require_environment(envs, operation)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def feature_flags(env: str | None = None) -> FeatureFlags:
    """The ``features.*`` flags of ``env`` (default: the active environment)."""
    from .settings import get_settings

    return get_settings(env).features


def _reset() -> None:
    """Forget the active environment (tests; the next call detects again)."""
    global _active
    with _lock:
        _active = None
