"""The composition root: the one owner of this process's state.

A :class:`Workspace` holds what the rest of the package computes from: the settings read
(again when a file or a ``MISTRAL_NBENV_*`` variable changes), the active environment and
its switch listeners, the keys resolved, the secrets fetched, the shared stores and the
clients, per environment. The modules below it take settings and arguments and keep
nothing; the public functions of :mod:`mistral_nbenv` are this module's functions, which
act on one process-wide workspace. :func:`reset` forgets all of it.

One ``get_client()`` reads the settings once: the same :class:`Settings` object goes to key
resolution, the isolation check (which takes the other environments' settings as its
peers) and the client.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from mistral_nbenv import config, environments
from mistral_nbenv._forksafe import RLock
from mistral_nbenv.config.names import normalize_name
from mistral_nbenv.errors import ConfigurationError

if TYPE_CHECKING:  # keys, the client and logging are imported on first use: import stays light
    from mistral_nbenv.client import Client
    from mistral_nbenv.config import FeatureFlags, Project, Settings
    from mistral_nbenv.secrets.keys import ResolvedKey, SecretCache
    from mistral_nbenv.store.shared import Shared

__all__ = [
    "Workspace",
    "add_switch_listener",
    "awaiting_confirmation",
    "close_clients",
    "current_environment",
    "detect_environment",
    "detection_reason",
    "environment",
    "environment_name",
    "feature_flags",
    "get_api_key",
    "get_client",
    "get_settings",
    "list_environments",
    "project",
    "require_environment",
    "require_production",
    "requires_environment",
    "reset",
    "use_environment",
    "workspace",
]

log = logging.getLogger("mistral_nbenv")
F = TypeVar("F", bound=Callable[..., Any])
SwitchListener = Callable[[str, str], None]


class Workspace:
    """Settings, active environment, keys, fetched secrets and clients of one process."""

    def __init__(self) -> None:
        self._lock = RLock()
        self._project: Project | None = None
        self._fingerprint: tuple[Any, ...] | None = None
        self._active: str | None = None
        self._listeners: list[SwitchListener] = []
        self._resolved: dict[str, tuple[Settings, ResolvedKey]] = {}
        self._clients: dict[str, Client] = {}
        self._shared: dict[str, tuple[Settings, Shared | None]] = {}
        self._secrets: SecretCache | None = None
        self.interactive = False  # a notebook kernel / IPython shell (set by %load_ext)
        self._awaiting: str | None = None  # protected, entered by detection, not confirmed
        self._by_user = False  # the active environment was switched to in this process
        self._unknown_warned: set[tuple[str, tuple[str, ...]]] = set()  # see _warn_unknown
        #: Asks the user before a call above ``budget.confirm_above_usd`` (set by
        #: ``%load_ext``: one line in the notebook); None: nobody to ask, calls go on.
        self.confirmer: Callable[[str], bool] | None = None

    @property
    def secrets(self) -> SecretCache:
        """The secrets fetched from stores, kept for ``secrets.cache_seconds``."""
        if self._secrets is None:
            from mistral_nbenv.secrets.keys import SecretCache

            with self._lock:
                if self._secrets is None:
                    self._secrets = SecretCache()
        return self._secrets

    # -- settings ------------------------------------------------------------------------

    def project(self) -> Project:
        """The current reading of the settings files (read again when they change)."""
        stamp = config.fingerprint()
        with self._lock:
            if self._project is None or stamp != self._fingerprint:
                self._project, self._fingerprint = config.read_project(), stamp
            return self._project

    def reload(self) -> None:
        """Read the settings files again on next use (new Settings objects, new clients)."""
        with self._lock:
            self._project = self._fingerprint = None

    def settings(self, env: str | None = None) -> Settings:
        """The validated settings of ``env`` (default: the active environment)."""
        return self.project().settings(self.current() if env is None else env)

    def name(self, env: str | None = None) -> str:
        """The canonical name of ``env`` (an alias is fine); None is the active environment."""
        if env is None:
            return self.current()
        return normalize_name(env, self.project().environments)

    def environments(self) -> list[str]:
        """development, staging, production, then any extra sections."""
        return list(self.project().environments)

    # -- the active environment ---------------------------------------------------------

    def detect(self) -> tuple[str, str]:
        """``(environment, reason)`` from the process environment variables."""

        def known() -> tuple[str, ...]:
            return self.project().environments

        if self.interactive:
            return environments.detect_for_notebook(os.environ, known)
        return environments.detect(os.environ, known)

    def enter_notebook(self) -> Settings | None:
        """``%load_ext``: interactive from now on; a protected environment chosen by a
        variable (not by the user) waits for ``--confirm`` unless ``confirm_in_notebooks``
        is false. Returns its settings (for the red banner), or None."""
        with self._lock:
            self.interactive = True
            if self._by_user:
                return None  # the user chose it in this process: nothing to confirm
            self._active, reason = self.detect()
            active = self._active
        if reason.startswith("default"):
            return None  # no variable chose it
        settings = self.settings(active)  # reads the settings only when a variable chose
        if settings.protected and settings.confirm_in_notebooks:
            with self._lock:
                self._awaiting = active
            return settings
        return None

    def leave_notebook(self) -> None:
        """``%unload_ext``: back to script behaviour."""
        with self._lock:
            self.interactive = False
            self._awaiting = None
            self.confirmer = None

    def awaiting_confirmation(self) -> str | None:
        """The protected environment this kernel started in and has not confirmed yet."""
        return self._awaiting

    def _confirm_cost(self, question: str) -> bool:
        """``budget.confirm_above_usd``: the notebook asks; a script has nobody to ask (its
        caps still hold)."""
        confirmer = self.confirmer
        return True if confirmer is None else confirmer(question)

    def _check_confirmed(self, name: str) -> None:
        if self._awaiting == name:
            raise environments.unconfirmed_start(name, self.detect()[1])

    def current(self) -> str:
        """The active environment (detected on first use)."""
        with self._lock:
            if self._active is None:
                self._active = self.detect()[0]
            return self._active

    def add_switch_listener(self, callback: SwitchListener) -> Callable[[], None]:
        """Call ``callback(old, new)`` after every switch; returns a function that removes it."""
        with self._lock:
            self._listeners.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return remove

    def use(self, name: str, *, confirm: bool = False) -> str:
        """Make ``name`` active; a protected environment needs ``confirm=True``."""
        target = self.settings(name)  # invalid settings fail here, before anything changes
        if target.environment == self.current():
            if self._awaiting == target.environment:
                environments.check_switch(target, confirm=confirm)
                with self._lock:
                    self._awaiting = None
            return target.environment
        environments.check_switch(target, confirm=confirm)
        return self._switch(target.environment)

    @contextmanager
    def environment(self, name: str, *, confirm: bool = False) -> Iterator[str]:
        """Switch to ``name`` for a ``with`` block, then restore the state it found: the
        previous environment, and a confirmation still pending stays pending."""
        previous = self.current()
        with self._lock:
            awaiting, by_user = self._awaiting, self._by_user
        active = self.use(name, confirm=confirm)
        try:
            yield active
        finally:
            self._switch(previous)  # back to where the user already was: no confirmation
            with self._lock:
                if awaiting is not None and self._awaiting is None and awaiting == previous:
                    self._awaiting, self._by_user = awaiting, by_user

    def _switch(self, target: str) -> str:
        with self._lock:
            old = self.current()
            self._active = target
            if old != target:
                self._awaiting = None  # left (or explicitly entered) by the user
                self._by_user = True
            listeners = list(self._listeners)
            client = self._clients.get(old) if old != target else None
        if old == target:
            return target
        log.info("mistral_nbenv: switched environment %s -> %s", old, target)
        if client is not None:
            client.close()  # its connections; it reopens lazily if used again
        for callback in listeners:
            try:
                callback(old, target)
            except Exception:  # a broken listener must not undo or block the switch
                log.exception("mistral_nbenv: switch listener %r failed", callback)
        return target

    def require(self, required: str | Iterable[str], operation: str) -> None:
        """Raise ``EnvironmentGuardError`` unless the active environment is in ``required``."""
        allowed = environments.required_names(required, self.project().environments)
        environments.check_required(allowed, self.current(), operation)

    # -- keys ----------------------------------------------------------------------------

    def api_key(self, env: str | None = None) -> ResolvedKey:
        """The API key of ``env`` (default: the active one), checked for isolation."""
        return self.key_for(self.settings(env))

    def key_for(self, settings: Settings) -> ResolvedKey:
        """Resolve ``settings``' key and check no other environment has the same one."""
        from mistral_nbenv.secrets import keys

        key = keys.resolve(settings, self.secrets)
        project = self.project()
        peers: list[Settings] = []
        for name in project.environments:
            if name == settings.environment:
                continue
            try:
                peers.append(project.settings(name))
            except ConfigurationError:
                continue  # an environment with broken settings has no key to compare
        current = {peer.environment: peer for peer in peers}
        with self._lock:
            held = [
                resolved
                for env, (seen, resolved) in self._resolved.items()
                if current.get(env) is seen  # resolved from the settings in force now
            ]
        keys.check_isolation(key, peers, held)
        with self._lock:
            self._resolved[settings.environment] = (settings, key)
        return key

    def known_secret_values(self) -> list[str]:
        """Every key resolved or fetched by this process (for redaction, never display)."""
        with self._lock:
            values = [key.value.get_secret_value() for _, key in self._resolved.values()]
        return values + (self._secrets.values() if self._secrets is not None else [])

    # -- the shared store ----------------------------------------------------------------

    def shared(self, settings: Settings) -> Shared | None:
        """``settings``' shared store (``[E.shared]``; its ``url`` resolved like a key), made
        once per settings reading; None when the environment shares nothing."""
        with self._lock:
            found = self._shared.get(settings.environment)
            if found is not None and found[0] is settings:
                return found[1]
        if settings.shared.url is None:
            made = None
        else:
            from mistral_nbenv.secrets import keys
            from mistral_nbenv.store.shared import Shared

            url = keys.shared_url(settings, self.secrets)
            made = Shared(settings, url) if url is not None else None
        with self._lock:
            self._shared[settings.environment] = (settings, made)
        return made

    # -- clients -------------------------------------------------------------------------

    def client(self, env: str | None = None) -> Client:
        """The client of ``env`` (default: the active one), made once and reused.

        Debug logging follows the ``debug`` setting of the environment asked for.
        """
        from mistral_nbenv.secrets.logfilter import apply_debug

        settings = self.settings(env)
        name = settings.environment
        self._check_confirmed(name)
        apply_debug(bool(settings.debug), self.known_secret_values, notebook=self.interactive)
        with self._lock:
            client = self._clients.get(name)
            if client is not None and client.settings is settings:
                return client
        from mistral_nbenv.client import Client

        with self._lock:
            first = (settings.environment, settings.unknown_keys) not in self._unknown_warned
            self._unknown_warned.add((settings.environment, settings.unknown_keys))
        if first and settings.unknown_keys:
            _warn_unknown(settings)
        new = Client(
            settings,
            self.key_for(settings),
            shared=self.shared(settings),
            gate=lambda: self._check_confirmed(name),  # every call, however it got the client
            confirm=self._confirm_cost,
        )
        with self._lock:
            old = self._clients.get(name)
            if old is not None and old.settings is settings:
                new.close()
                return old
            self._clients[name] = new
        if old is not None:
            old.close()
        return new

    def close_clients(self) -> None:
        """Close every client (they reopen lazily if used again) and forget them."""
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()

    def reset(self) -> None:
        """Forget everything: clients, keys, fetched secrets, active environment, settings."""
        self.close_clients()
        with self._lock:
            self._resolved.clear()
            self._shared.clear()
            self._active = None
            self._awaiting = None
            self._by_user = False
            self._unknown_warned.clear()
            self.interactive = False
            self._project = self._fingerprint = None
        if self._secrets is not None:
            self._secrets.clear()


_workspace = Workspace()


def workspace() -> Workspace:
    """The process-wide workspace behind the public functions."""
    return _workspace


def reset() -> None:
    """Forget loaded settings, the active environment, keys, fetched secrets and clients."""
    _workspace.reset()


# --------------------------------------------------------------------------- public API


def get_settings(env: str | None = None) -> Settings:
    """The validated settings of ``env`` (default: the active environment)."""
    return _workspace.settings(env)


def list_environments() -> list[str]:
    """The environments: development, staging, production, then any extra sections."""
    return _workspace.environments()


def environment_name(env: str | None = None) -> str:
    """The canonical name of ``env`` (aliases resolved); None is the active environment."""
    return _workspace.name(env)


def _warn_unknown(settings: Settings) -> None:
    """Settings nobody reads (``modle = ...``): the warning given once per environment (the
    workspace keeps which) when a client is made, with the closest real name; ``check``
    lists them too."""
    unknown = settings.unknown_keys
    import difflib
    import warnings

    from mistral_nbenv.config import SCHEMA
    from mistral_nbenv.errors import MistralEnvWarning

    described = []
    for key in unknown:
        guess = difflib.get_close_matches(key, SCHEMA, n=1)
        where = settings.source_of(key)
        described.append(
            f"`{key}` (from {where})" + (f", did you mean `{guess[0]}`?" if guess else "")
        )
    warnings.warn(
        f"mistral_nbenv: environment '{settings.environment}' has settings nobody reads: "
        + "; ".join(described),
        MistralEnvWarning,
        stacklevel=4,
    )


def awaiting_confirmation() -> str | None:
    """The protected environment this kernel started in and has not confirmed (or None)."""
    return _workspace.awaiting_confirmation()


def project() -> Project:
    """The current reading of the project's settings files."""
    return _workspace.project()


def detect_environment() -> str:
    """The environment from ``MISTRAL_ENV``, ``VERCEL_ENV``, ``NODE_ENV``, else development."""
    return _workspace.detect()[0]


def detection_reason() -> str:
    """Why :func:`detect_environment` chose what it chose, e.g. ``MISTRAL_ENV=prod``."""
    return _workspace.detect()[1]


def current_environment() -> str:
    """The active environment of this process."""
    return _workspace.current()


def use_environment(name: str, *, confirm: bool = False) -> str:
    """Make ``name`` the active environment; a protected one needs ``confirm=True``."""
    return _workspace.use(name, confirm=confirm)


@contextmanager
def environment(name: str, *, confirm: bool = False) -> Iterator[str]:
    """Switch to ``name`` for a ``with`` block, then restore the previous environment."""
    with _workspace.environment(name, confirm=confirm) as active:
        yield active


def add_switch_listener(callback: SwitchListener) -> Callable[[], None]:
    """Call ``callback(old, new)`` after every switch; returns a function that removes it."""
    return _workspace.add_switch_listener(callback)


def require_environment(required: str | Iterable[str], operation: str) -> None:
    """Raise ``EnvironmentGuardError`` unless the active environment is one of ``required``."""
    _workspace.require(required, operation)


def require_production(operation: str) -> None:
    """Raise ``EnvironmentGuardError`` unless running in production."""
    _workspace.require("production", operation)


def requires_environment(*envs: str) -> Callable[[F], F]:
    """Decorator: the function runs only in one of ``envs`` (checked at every call)."""
    environments.required_names(envs, _workspace.project().environments)  # fail now if unknown
    return environments.guard_decorator(envs, _workspace.require)


def feature_flags(env: str | None = None) -> FeatureFlags:
    """The ``features.*`` flags of ``env`` (default: the active environment)."""
    return _workspace.settings(env).features


def get_api_key(env: str | None = None) -> ResolvedKey:
    """The API key of ``env`` (default: the active environment), checked for isolation."""
    return _workspace.api_key(env)


def get_client(env: str | None = None) -> Client:
    """The client of ``env`` (default: the active environment), created once and reused."""
    return _workspace.client(env)


def close_clients() -> None:
    """Close every client made by :func:`get_client` (they reopen lazily if used again)."""
    _workspace.close_clients()
