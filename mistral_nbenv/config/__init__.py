"""Settings per environment: discovery, layers, "specific beats general", validation.

This is the only module that touches Dynaconf (imported lazily: it costs ~0.3 s). It holds
no process state: :func:`read_project` reads the files as they are now and returns a
:class:`Project`, which builds (and keeps) the validated :class:`Settings` of each
environment; :func:`load` does both for one environment. Which environment is *active*,
and when to read the files again, is :mod:`mistral_nbenv.workspace`'s business.

Layers, lowest to highest: the packaged ``defaults.toml``; the project's ``settings.toml``;
its ``.secrets.toml``; ``MISTRAL_NBENV_*`` environment variables (``__`` nests, e.g.
``MISTRAL_NBENV_CACHE__ENABLED=false``). For environment E a value from an ``[E]``
section of *any* file beats every ``[default]`` value; among equally specific values the
higher layer wins; environment variables beat both. Nested tables merge key by key.
Dynaconf's own loading order would let a later file's ``[default]`` override an earlier
file's ``[production]``, so the layers are merged here and Dynaconf validates the result.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mistral_nbenv.config.names import CANONICAL, canonical_or_none, normalize_name
from mistral_nbenv.config.pins import LOCK_FILENAME, Pins, read_lock
from mistral_nbenv.config.schema import (
    BOOL,
    OPTIONAL,
    SCHEMA,
    SECRET_KEYS,
    TABLES,
    BudgetSettings,
    CacheSettings,
    FeatureFlags,
    RateLimitSettings,
    SecretsSettings,
    Settings,
    SharedSettings,
    build,
    packaged_defaults,
    reference,
)
from mistral_nbenv.errors import ConfigurationError
from mistral_nbenv.secrets import SecretStr, describe, url_without_password

__all__ = [
    "SCHEMA",
    "BudgetSettings",
    "CacheSettings",
    "FeatureFlags",
    "Project",
    "RateLimitSettings",
    "SecretsSettings",
    "Settings",
    "SharedSettings",
    "find_project",
    "fingerprint",
    "load",
    "read_project",
    "reference",
]

SETTINGS_VARIABLE = "MISTRAL_NBENV_SETTINGS"
ENV_PREFIX = "MISTRAL_NBENV_"
SETTINGS_FILENAME = "settings.toml"
SECRETS_FILENAME = ".secrets.toml"
DEFAULTS_PATH = Path(__file__).resolve().parent / "defaults.toml"
ENV_VARS_LABEL = "environment variable"


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        data = path.read_bytes()
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigurationError(
            f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02X} on line {line}). Save it "
            "as UTF-8 (TOML files must be); nothing was loaded from it."
        ) from None
    except tomllib.TOMLDecodeError as exc:
        # The decoder's message gives line/column only, never the file's content.
        raise ConfigurationError(
            f"{path} is not valid TOML ({exc}). Fix the file; nothing was loaded from it."
        ) from None
    except RecursionError:
        raise ConfigurationError(
            f"{path} nests arrays or tables too deeply to read. Fix the file; nothing was "
            "loaded from it."
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"Cannot read settings file {path}: {exc.strerror}.") from None


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0", ""}


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class _Layer:
    label: str
    sections: dict[str, dict[str, Any]]  # environment or "default" -> flat {dotted key: value}


@dataclass(frozen=True)
class Project:
    """One reading of the project's settings files and ``MISTRAL_NBENV_*`` variables."""

    directory: Path | None
    settings_file: Path | None
    secrets_file: Path | None
    layers: tuple[_Layer, ...]
    env_values: dict[str, tuple[Any, str]]  # dotted key -> (value, variable name)
    environments: tuple[str, ...]
    ignored_variables: tuple[str, ...]  # MISTRAL_NBENV_* set but never read (..._API_KEY)
    lock_file: Path | None = None  # models.lock.toml beside the settings (None: no project)
    pins: Mapping[str, Pins] = field(default_factory=dict)  # environment -> its pins
    _built: dict[str, Settings] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def settings(self, env: str) -> Settings:
        """The validated settings of ``env`` (a name or alias), built once per reading."""
        name = normalize_name(env, self.environments)
        with self._lock:
            built = self._built.get(name)
            if built is None:
                built = self._built[name] = _build(self, name)
            return built


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{str(key).lower()}"
        if isinstance(value, Mapping) and dotted in TABLES:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _load_layer(path: Path, label: str) -> _Layer:
    data = _read_toml(path)
    sections: dict[str, dict[str, Any]] = {}
    origin: dict[str, str] = {}
    for raw_name, table in data.items():
        name = str(raw_name).lower()
        if not isinstance(table, Mapping):
            raise ConfigurationError(
                f"{label}: key {raw_name!r} is outside any section. Put it under [default] "
                f"(every environment) or under [development]/[staging]/[production]."
            )
        if name in TABLES or name in SCHEMA:
            raise ConfigurationError(
                f"{label}: [{raw_name}] looks like a setting, not an environment. "
                f"Write it as [default.{name}] or [production.{name}] (etc.)."
            )
        if name != "default":
            name = canonical_or_none(name) or name
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ConfigurationError(
                    f"{label}: [{raw_name}] is not a valid environment name "
                    f"(letters, digits, '-' and '_' only)."
                )
        if name in origin:
            raise ConfigurationError(
                f"{label}: sections [{origin[name]}] and [{raw_name}] both name the "
                f"environment '{name}'. Merge them into one section."
            )
        origin[name] = str(raw_name)
        sections[name] = _flatten(table)
    return _Layer(label, sections)


def _read_env_vars() -> tuple[dict[str, tuple[Any, str]], tuple[str, ...]]:
    from dynaconf.utils.parse_conf import parse_conf_data

    values: dict[str, tuple[Any, str]] = {}
    ignored: list[str] = []
    for variable, raw in os.environ.items():
        if not variable.startswith(ENV_PREFIX) or variable == SETTINGS_VARIABLE:
            continue
        key = variable[len(ENV_PREFIX) :].lower().replace("__", ".")
        if key == "api_key":
            ignored.append(variable)  # keys come per environment: MISTRAL_API_KEY_PROD etc.
            continue
        try:
            value = (
                raw if key in SECRET_KEYS else parse_conf_data(raw, tomlfy=True, box_settings={})
            )
        except (RecursionError, OverflowError, ValueError):
            value = raw  # validated as the text it is (a clear error naming the variable)
        rule = SCHEMA.get(key)
        if rule is BOOL and not isinstance(value, bool):
            text = str(value).strip().lower()
            if text in _TRUE | _FALSE:
                value = text in _TRUE
        values[key] = (value, variable)
    return values, tuple(ignored)


def find_project(start: Path | None = None) -> tuple[Path | None, Path | None, Path | None]:
    """Return ``(project_dir, settings_file, secrets_file)`` found by the discovery rules."""
    explicit = os.environ.get(SETTINGS_VARIABLE, "").strip()
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_dir():
            path = path / SETTINGS_FILENAME
        if not path.is_file():
            raise ConfigurationError(
                f"{SETTINGS_VARIABLE}={explicit} does not point to a settings file. "
                f"Fix or unset {SETTINGS_VARIABLE}."
            )
        secrets = path.parent / SECRETS_FILENAME
        return path.parent, path, secrets if secrets.is_file() else None
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        settings, secrets = directory / SETTINGS_FILENAME, directory / SECRETS_FILENAME
        has_settings, has_secrets = settings.is_file(), secrets.is_file()
        if has_settings or has_secrets:
            return (
                directory,
                settings if has_settings else None,
                secrets if has_secrets else None,
            )
    return None, None, None


def _stamp(path: Path | None) -> tuple[str, int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return (str(path), -1, -1)
    return (str(path), st.st_mtime_ns, st.st_size)


@functools.cache
def _packaged() -> _Layer:
    """The declared defaults as ``[default]``, and defaults.toml's per-environment values."""
    layer = _load_layer(DEFAULTS_PATH, "packaged defaults")
    sections = {"default": packaged_defaults(), **layer.sections}
    return _Layer(layer.label, sections)


def fingerprint() -> tuple[Any, ...]:
    """What a reading depends on: the files found (path, mtime, size) and the variables.

    Equal fingerprints mean :func:`read_project` would read the same thing again.
    """
    found = find_project()
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(ENV_PREFIX)))
    lock = found[0] / LOCK_FILENAME if found[0] is not None else None
    return (found, _stamp(found[1]), _stamp(found[2]), _stamp(lock), env)


def read_project() -> Project:
    """Read the packaged defaults, the project's files and the variables, as they are now."""
    directory, settings_file, secrets_file = find_project()
    layers = [_packaged()]
    if settings_file is not None:
        layers.append(_load_layer(settings_file, _label(settings_file, directory)))
    if secrets_file is not None:
        layers.append(_load_layer(secrets_file, _label(secrets_file, directory)))
    env_values, ignored = _read_env_vars()
    names = list(CANONICAL)
    for layer in layers:
        names += [n for n in layer.sections if n != "default" and n not in names]
    lock_file = directory / LOCK_FILENAME if directory is not None else None
    pins = read_lock(lock_file) if lock_file is not None else {}
    return Project(
        directory,
        settings_file,
        secrets_file,
        tuple(layers),
        env_values,
        tuple(names),
        ignored,
        lock_file=lock_file,
        pins=pins,
    )


def _label(path: Path, directory: Path | None) -> str:
    return path.name if directory is not None and path.parent == directory else str(path)


def load(name: str) -> Settings:
    """The validated settings of environment ``name``, read from the files now."""
    return read_project().settings(name)


# --------------------------------------------------------------------------- merge + validate


#: Settings a ``MISTRAL_NBENV_*`` variable may turn on but never off.
_NEVER_WEAKENED = frozenset({"protected", "confirm_in_notebooks"})


def _merge(project: Project, env: str) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for section in ("default", env):  # every [env] value beats every [default] value
        for layer in project.layers:
            for key, value in layer.sections.get(section, {}).items():
                values[key] = value
                sources[key] = f"{layer.label} [{section}]"
    for key, (value, variable) in project.env_values.items():
        if key in _NEVER_WEAKENED and value is False and values.get(key) is True:
            continue  # a general override never weakens protection: only [ENV] ... = false can
        values[key] = value
        sources[key] = f"{ENV_VARS_LABEL} {variable}"
    return values, sources


def _describe(key: str, value: Any) -> str:
    """A user's value quoted in a message: a secret setting's masked whole, any other
    scrubbed of every known secret and credential shape (inside lists and tables too)."""
    if key == "shared.url" and isinstance(value, str):
        return repr(url_without_password(value))
    if key in SECRET_KEYS and isinstance(value, str):
        return SecretStr(value).masked
    if key in SECRET_KEYS:
        return f"a {type(value).__name__} (not shown: it is a secret setting)"
    return describe(value)


class _FlatView(dict):
    """The merged flat values as Dynaconf validators read them (dotted keys, any case)."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


@functools.cache
def _validators() -> tuple[Any, ...]:
    """One Dynaconf validator per declared setting: its rule, present unless optional."""
    from dynaconf import Validator

    return tuple(
        Validator(key, condition=rule.accepts, must_exist=None if key in OPTIONAL else True)
        for key, rule in SCHEMA.items()
    )


def _validate(values: dict[str, Any], sources: dict[str, str], env: str) -> None:
    from dynaconf import ValidationError

    problems: list[str] = []
    for table in TABLES:
        if table in values:
            problems.append(
                f"`{table}` must be a table (e.g. [{env}.{table}]), got "
                f"{_describe(table, values.pop(table))} from {sources.get(table)}"
            )
    view = _FlatView(values)
    for validator in _validators():
        key = validator.names[0]
        try:
            validator.validate(view)
        except ValidationError:
            rule = SCHEMA[key]
            shown = _describe(key, values.get(key)) if key in values else "(missing)"
            problems.append(
                f"`{key}` must be {rule.expect}, got {shown} from {sources.get(key, 'nowhere')}"
            )
    url = values.get("server_url")
    if isinstance(url, str) and url and values.get("server"):
        problems.append(
            f"`server` = {values['server']!r} (from {sources.get('server')}) and `server_url` "
            f"(from {sources.get('server_url')}) both say where calls go; set one of them"
        )
    problem = url_problem(url) if isinstance(url, str) and url else None
    if problem is not None:
        shown = f" {url!r}" if "@" not in str(url) else ""  # never echo credentials in a URL
        problems.append(f"`server_url`{shown} {problem}, from {sources.get('server_url')}")
    shared = values.get("shared.url")
    if isinstance(shared, str) and shared.strip():
        problem = shared_url_problem(shared.strip())
        if problem is not None:
            problems.append(
                f"`shared.url` {url_without_password(shared.strip())!r} {problem}, "
                f"from {sources.get('shared.url')}"
            )
    for name, is_ref in (("api_key", "is_reference"), ("shared.url", "is_known_reference")):
        ref = values.get(name)
        if isinstance(ref, str):
            from mistral_nbenv.secrets import backends

            try:
                if getattr(backends, is_ref)(ref.strip()):
                    backends.parse_reference(ref.strip())
            except ConfigurationError as exc:
                problems.append(f"`{name}` from {sources.get(name)}: {exc}")
    if problems:
        detail = "\n  - ".join(problems)
        raise ConfigurationError(
            f"Invalid settings for environment '{env}':\n  - {detail}\n"
            f"Fix the value where it came from; `mistral-nbenv status --env {env}` shows "
            f"every value and its source."
        )


def _split_url(url: str, schemes: tuple[str, ...], what: str) -> tuple[Any, str | None]:
    """``(urlsplit(url), None)``, or ``(None, why)`` when the scheme, a character or the
    port is wrong (the checks every URL setting shares)."""
    from urllib.parse import urlsplit

    if not url.startswith(schemes):
        return None, f"must start with {', '.join(schemes[:-1])} or {schemes[-1]}{what}"
    for position, char in enumerate(url, 1):
        if ord(char) <= 0x20 or ord(char) == 0x7F:
            return None, f"contains a space or control character at position {position}"
    try:
        parts = urlsplit(url)  # ValueError: an unclosed "[" (an IPv6 host)
    except ValueError:
        return None, "has an unclosed '[' (an IPv6 host is written [::1])"
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    except ValueError:
        return None, "has an invalid port"
    return parts, None


def url_problem(url: str) -> str | None:
    """Why httpx would refuse ``url`` as a base URL (None when it is usable)."""
    parts, problem = _split_url(url, ("http://", "https://"), "")
    if parts is None:
        return problem
    if not parts.hostname:
        return "has no host (e.g. https://api.mistral.ai)"
    return None


def shared_url_problem(url: str) -> str | None:
    """Why ``url`` cannot name a Redis server (None when it can, or is a secret reference)."""
    from mistral_nbenv.secrets.backends import is_known_reference

    if is_known_reference(url):
        return None
    from mistral_nbenv.secrets import url_credentials

    credentials = url_credentials(url)
    if credentials and any(c in credentials for c in "/?#"):
        return (
            "has a password holding '/', '?' or '#', which ends the host part of a URL: "
            "percent-encode them (%2F, %3F, %23)"
        )
    schemes = ("redis://", "rediss://", "unix://")
    parts, problem = _split_url(url, schemes, " (or be a secret reference)")
    if parts is None:
        return problem
    if parts.scheme == "unix":
        return None if parts.path else "has no socket path (e.g. unix:///run/redis.sock)"
    if not parts.hostname:
        return "has no host (e.g. redis://127.0.0.1:6379/0)"
    db = parts.path.strip("/")
    if db and not db.isdigit():
        return "has a database that is not a number (e.g. redis://host:6379/0)"
    return None


def _build(project: Project, env: str) -> Settings:
    values, sources = _merge(project, env)
    _validate(values, sources, env)
    return build(
        values,
        environment=env,
        project_dir=project.directory,
        settings_file=project.settings_file,
        secrets_file=project.secrets_file,
        sources=MappingProxyType(sources),
        unknown_keys=tuple(sorted(k for k in values if k not in SCHEMA)),
        pins=project.pins.get(env, MappingProxyType({})),
        lock_file=project.lock_file if project.pins else None,
    )
