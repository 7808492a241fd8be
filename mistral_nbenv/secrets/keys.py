"""API keys per environment: where they come from, and that no two environments share one.

Resolution for environment E (first hit wins):

1. ``api_key`` from E's settings: a literal, ``env:NAME``, ``file:PATH`` (a token file, read
   again for every request so a rotated token is used at once), or a secret-store reference
   (``vault:``, ``aws-sm:``, ``gcp-sm:`` — fetched by :mod:`mistral_nbenv.secrets.backends` and
   kept in memory for ``secrets.cache_seconds``);
2. the variable ``MISTRAL_API_KEY_DEV`` / ``_STAGING`` / ``_PROD`` (``_QA`` for ``[qa]``);
3. for development only, the generic ``MISTRAL_API_KEY``;
4. ``MISTRAL_SA_TOKEN_PATH``, the SDK's service-account token file (a pod's identity).

Variables are looked up in the process environment, then the project's ``.env.local``,
then its ``.env`` (python-dotenv parsing; the process environment is never overridden).

Everything here takes :class:`~mistral_nbenv.config.Settings`, never a name, and holds no
process state: the keys already resolved and the secrets fetched from stores
(:class:`SecretCache`) belong to :class:`mistral_nbenv.workspace.Workspace`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mistral_nbenv._forksafe import Lock
from mistral_nbenv.config import Settings
from mistral_nbenv.config.names import key_variable
from mistral_nbenv.errors import ConfigurationError, MissingAPIKeyError, SecretBackendError
from mistral_nbenv.secrets import SecretStr, secret_url, url_without_password
from mistral_nbenv.secrets.backends import (
    SecretReference,
    is_known_reference,
    is_reference,
    load_backend,
    parse_reference,
)

__all__ = [
    "ResolvedKey",
    "SecretCache",
    "check_isolation",
    "local_key",
    "project_getenv",
    "resolve",
    "shared_url",
]

GENERIC_VARIABLE = "MISTRAL_API_KEY"
#: The SDK's service-account token file variable (mistralai >= 3.0).
SA_TOKEN_VARIABLE = "MISTRAL_SA_TOKEN_PATH"
DOTENV_FILES = (".env.local", ".env")


@dataclass(frozen=True)
class ResolvedKey:
    """An environment's API key (masked in every rendering) and a description of its source.

    A key from a token file (``file:PATH``, ``MISTRAL_SA_TOKEN_PATH``) keeps its path:
    :meth:`current` reads the file again, so each request sends the token as it is now.
    """

    environment: str
    value: SecretStr
    source: str
    token_file: Path | None = None

    @property
    def masked(self) -> str:
        """The masked key, e.g. ``…abcd``."""
        return self.value.masked

    @property
    def identity(self) -> str:
        """What the rate budget belongs to: the key, or a token file's path (its token
        rotates; the identity it stands for does not). Hashed before any use."""
        if self.token_file is not None:
            return f"file:{self.token_file}"
        return self.value.get_secret_value()

    def current(self) -> str:
        """The key to send now (a token file read again; a clear error if it went away)."""
        if self.token_file is None:
            return self.value.get_secret_value()
        token = read_token(self.token_file, self.environment, self.source)
        check_shape(ResolvedKey(self.environment, token, self.source))
        return token.get_secret_value()


def token_path(raw: str, project_dir: Path | None) -> Path:
    """A token file's path: ``~`` expanded; a relative path is the project's."""
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = (project_dir or Path.cwd()) / path
    return path


def _read_secret_file(path: Path) -> tuple[str, str]:
    """``(text stripped, "")`` or ``("", why it cannot be used)``."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return "", "does not exist"
    except IsADirectoryError:
        return "", "is a directory"
    except PermissionError:
        return "", "cannot be read by this user (permission denied)"
    except UnicodeDecodeError:
        return "", "is not UTF-8 text"
    except OSError as exc:
        return "", f"cannot be read ({exc.strerror})"
    return text, "" if text else "is empty"


def read_token(path: Path, env: str, source: str) -> SecretStr:
    """The token in ``path`` (stripped; a ``Bearer`` prefix dropped), never shown.

    Missing, unreadable or empty: :class:`MissingAPIKeyError` naming the file and the
    setting it came from.
    """
    text, why = _read_secret_file(path)
    scheme, _, rest = text.partition(" ")
    if scheme.lower() == "bearer":  # an Authorization value: the token after it
        text = rest.strip()
        why = why or ("" if text else "holds only 'Bearer'")
    if why:
        raise MissingAPIKeyError(
            f"No API key for environment '{env}': the token file {path} ({source}) {why}. "
            "Mount or write the token there, or change where the key comes from "
            "(api_key, or MISTRAL_SA_TOKEN_PATH).",
            environment=env,
            looked=(str(path),),
        )
    return SecretStr(text)


def _token_key(env: str, raw: str, project_dir: Path | None, source: str) -> ResolvedKey:
    path = token_path(raw, project_dir)
    source = f"{source}; read on every request"
    return ResolvedKey(env, read_token(path, env, source), source, token_file=path)


# --------------------------------------------------------------------------- variables

_dotenv_cache: dict[Path, tuple[int, dict[str, str | None]]] = {}


def _dotenv(path: Path) -> dict[str, str | None]:
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return {}
    cached = _dotenv_cache.get(path)
    if cached is None or cached[0] != stamp:
        from dotenv import dotenv_values

        cached = (stamp, dict(dotenv_values(path)))
        _dotenv_cache[path] = cached
    return cached[1]


def lookup_variable(name: str, project_dir: Path | None) -> tuple[str, str] | None:
    """``(value, where)`` of a variable: process environment, ``.env.local``, ``.env``."""
    value = os.environ.get(name)
    if value:
        return value, "process environment"
    if project_dir is not None:
        for filename in DOTENV_FILES:
            found = _dotenv(project_dir / filename).get(name)
            if found:
                return found, str(project_dir / filename)
    return None


def shown_path(path: Path | str) -> str:
    """A path as a message shows it: relative when it is under the working directory."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _places(name: str, project_dir: Path | None) -> str:
    where = ["the process environment"]
    if project_dir is not None:
        where += [shown_path(project_dir / f) for f in DOTENV_FILES]
    return f"{name} in {', '.join(where)}"


def project_getenv(project_dir: Path | None) -> Callable[[str], str | None]:
    """A ``getenv`` for secret backends that also reads the project's ``.env`` files."""

    def getenv(name: str) -> str | None:
        found = lookup_variable(name, project_dir)
        return found[0] if found else None

    return getenv


# --------------------------------------------------------------------------- resolution


class SecretCache:
    """Keys fetched from secret stores, kept in memory for ``secrets.cache_seconds``."""

    def __init__(self) -> None:
        self._lock = Lock()
        self._entries: dict[tuple[object, ...], tuple[float, SecretStr]] = {}

    def get(self, key: tuple[object, ...], now: float) -> SecretStr | None:
        """The cached secret, if it has not expired."""
        with self._lock:
            hit = self._entries.get(key)
        return hit[1] if hit is not None and hit[0] > now else None

    def put(self, key: tuple[object, ...], secret: SecretStr, until: float) -> None:
        """Keep ``secret`` until the monotonic time ``until``."""
        with self._lock:
            self._entries[key] = (until, secret)

    def values(self) -> list[str]:
        """Every secret held (for redaction, never for display)."""
        with self._lock:
            return [secret.get_secret_value() for _, secret in self._entries.values()]

    def clear(self) -> None:
        """Forget every fetched secret."""
        with self._lock:
            self._entries.clear()


def _fallback_names(env: str) -> list[str]:
    names = [key_variable(env)]
    if env == "development":
        names.append(GENERIC_VARIABLE)
    return names


def local_key(settings: Settings) -> ResolvedKey | Literal["remote"] | None:
    """The key found without calling a secret store; "remote" for a store reference; None."""
    env, project_dir = settings.environment, settings.project_dir
    configured = settings.api_key
    if configured is not None:
        raw = configured.get_secret_value().strip()
        origin = settings.source_of("api_key")
        if not is_reference(raw):
            return ResolvedKey(env, SecretStr(raw), f"{origin} (literal)")
        ref = parse_reference(raw)
        if ref.scheme == "file":
            return _token_key(env, ref.path, project_dir, f"{ref.raw} from {origin}")
        if ref.scheme != "env":
            return "remote"
        found = lookup_variable(ref.path, project_dir)
        if found is None:
            raise MissingAPIKeyError(
                f"No API key for environment '{env}': api_key = {ref.raw!r} (from {origin}) "
                f"but {ref.path} is not set. Looked for {_places(ref.path, project_dir)}. "
                f"Set {ref.path}, or change api_key in {origin}.",
                environment=env,
                looked=(_places(ref.path, project_dir),),
            )
        return ResolvedKey(env, SecretStr(found[0].strip()), f"{ref.path} from {found[1]}")
    for name in _fallback_names(env):
        found = lookup_variable(name, project_dir)
        if found is not None:
            return ResolvedKey(env, SecretStr(found[0].strip()), f"{name} from {found[1]}")
    found = lookup_variable(SA_TOKEN_VARIABLE, project_dir)
    if found is not None and found[0].strip():
        return _token_key(
            env, found[0].strip(), project_dir, f"{SA_TOKEN_VARIABLE} from {found[1]}"
        )
    return None


def _missing(settings: Settings) -> MissingAPIKeyError:
    env, project_dir = settings.environment, settings.project_dir
    settings_file, secrets_file = settings.settings_file, settings.secrets_file
    files = [shown_path(p) for p in (settings_file, secrets_file) if p is not None]
    looked = [
        f"api_key under [{env}] or [default] in "
        + (", ".join(files) if files else "no settings file (none was found)")
    ]
    looked += [_places(name, project_dir) for name in _fallback_names(env)]
    looked.append(_places(SA_TOKEN_VARIABLE, project_dir))
    target = secrets_file or (project_dir / ".secrets.toml" if project_dir else None)
    where = shown_path(target) if target is not None else ".secrets.toml"
    return MissingAPIKeyError(
        f"No API key for environment '{env}': set {key_variable(env)}, or api_key under "
        f"[{env}] in {where}.\nLooked in:\n" + "\n".join(f"  - {place}" for place in looked),
        environment=env,
        looked=tuple(looked),
    )


def _fetch(
    settings: Settings, name: str, ref: SecretReference, fetched: SecretCache, what: str
) -> tuple[str, bool]:
    """``(the value a secret store holds for ref, whether it came from fetched)``; setting
    ``name``'s value is kept in ``fetched`` for ``secrets.cache_seconds``."""
    env = settings.environment
    origin = settings.source_of(name)
    cache_key = (env, name, ref.raw, settings.secrets, settings.project_dir)
    now = time.monotonic()
    hit = fetched.get(cache_key, now)
    if hit is not None:
        return hit.get_secret_value(), True
    try:
        backend = load_backend(ref.scheme)
        value = backend.fetch(ref, settings.secrets, project_getenv(settings.project_dir))
    except SecretBackendError as exc:
        raise SecretBackendError(
            f"Environment '{env}': {exc}",
            environment=env,
            backend=exc.backend or ref.scheme,
            reference=ref.raw,
        ) from exc
    value = value.strip() if isinstance(value, str) else ""
    if not value:
        raise SecretBackendError(
            f"Environment '{env}': {ref.raw} (from {origin}) is empty. Store {what} there.",
            environment=env,
            backend=ref.scheme,
            reference=ref.raw,
        )
    if settings.secrets.cache_seconds > 0:
        fetched.put(cache_key, SecretStr(value), now + settings.secrets.cache_seconds)
    return value, False


def _remote_key(settings: Settings, fetched: SecretCache) -> ResolvedKey:
    assert settings.api_key is not None
    ref = parse_reference(settings.api_key.get_secret_value().strip())
    origin = settings.source_of("api_key")
    value, cached = _fetch(settings, "api_key", ref, fetched, "the key")
    note = "; cached in memory" if cached else ""
    return ResolvedKey(settings.environment, SecretStr(value), f"{ref.raw} (from {origin}{note})")


def shared_url(settings: Settings, fetched: SecretCache | None = None) -> SecretStr | None:
    """``shared.url`` resolved (a reference read from its variable or store); None if unset.

    The URL's password is remembered by the mask; the URL itself is shown without it.
    """
    configured = settings.shared.url
    if configured is None:
        return None
    raw = configured.get_secret_value().strip()
    if not is_known_reference(raw):
        return configured
    ref = parse_reference(raw)
    origin = settings.source_of("shared.url")
    if ref.scheme == "file":
        path = token_path(ref.path, settings.project_dir)
        text, why = _read_secret_file(path)
        if why:
            raise ConfigurationError(
                f"Environment '{settings.environment}': shared.url = {ref.raw!r} (from "
                f"{origin}) but {path} {why}. Write the Redis URL there, or change shared.url."
            )
        return _checked_url(settings, ref, origin, text)
    if ref.scheme == "env":
        found = lookup_variable(ref.path, settings.project_dir)
        if found is None or not found[0].strip():
            raise ConfigurationError(
                f"Environment '{settings.environment}': shared.url = {ref.raw!r} (from "
                f"{origin}) but {ref.path} is not set. Looked for "
                f"{_places(ref.path, settings.project_dir)}. Set {ref.path} to the Redis URL "
                "(redis://:PASSWORD@HOST:6379/0), or remove shared.url."
            )
        value = found[0].strip()
    else:
        value, _ = _fetch(settings, "shared.url", ref, fetched or SecretCache(), "the Redis URL")
    return _checked_url(settings, ref, origin, value)


def _checked_url(settings: Settings, ref: SecretReference, origin: str, value: str) -> SecretStr:
    url = secret_url(value)
    from mistral_nbenv.config import shared_url_problem

    problem = shared_url_problem(value)
    if problem is not None or is_known_reference(value):
        raise ConfigurationError(
            f"Environment '{settings.environment}': shared.url = {ref.raw!r} (from {origin}) "
            f"gives {url_without_password(value)!r}, which "
            f"{problem or 'is another reference'}. Store the Redis URL itself there."
        )
    return url


def resolve(settings: Settings, fetched: SecretCache | None = None) -> ResolvedKey:
    """Find ``settings``' environment's key (may call a secret store); no isolation check.

    ``fetched`` keeps what a store returned for ``secrets.cache_seconds``; without one,
    every call asks the store.
    """
    local = local_key(settings)
    if local == "remote":
        return check_shape(_remote_key(settings, fetched if fetched is not None else SecretCache()))
    if local is None or not local.value:
        raise _missing(settings)
    return check_shape(local)


#: The example values this package ships (``.secrets.toml.example``, the README): never a key.
PLACEHOLDERS = re.compile(r"^(your[-_].*[-_]here|<.*>|changeme|xxx+|\.\.\.)$", re.IGNORECASE)


def check_shape(key: ResolvedKey) -> ResolvedKey:
    """Refuse a key an HTTP header cannot carry: whitespace, control or non-ASCII characters;
    and a placeholder copied from an example (``your-development-key-here``).

    A copy-paste often brings a zero-width space or a non-breaking space along; the error
    gives the character's position and Unicode name, never the key.
    """
    import unicodedata

    value = key.value.get_secret_value()
    if PLACEHOLDERS.match(value):
        raise MissingAPIKeyError(
            f"The API key for environment '{key.environment}' (from {key.source}) is a "
            "placeholder copied from an example, not a key. Put the real key there (or remove "
            "the line and set the environment's variable).",
            environment=key.environment,
            looked=(key.source,),
        )
    for position, char in enumerate(value, 1):
        code = ord(char)
        if 0x21 <= code <= 0x7E:
            continue
        name = (
            unicodedata.name(char, "a control character")
            if code > 0x7E
            else ("a space" if char == " " else "a control character")
        )
        raise ConfigurationError(
            f"The API key for environment '{key.environment}' (from {key.source}) contains "
            f"{name} (U+{code:04X}) at position {position} of {len(value)}. A key is printable "
            "ASCII without spaces: paste it again, or delete that character where it is stored."
        )
    return key


def _duplicate(key: ResolvedKey, other: ResolvedKey) -> ConfigurationError:
    if "[default]" in key.source and "[default]" in other.source:
        return ConfigurationError(
            f"api_key is under [default] ({key.source}), so it applies to every environment, "
            f"'{key.environment}' and '{other.environment}' alike — and each environment needs "
            "its own key. Move it under [development] (a solo setup starts there), and give "
            "staging and production their own keys when you use them."
        )
    return ConfigurationError(
        f"The API key for '{key.environment}' ({key.masked}, from {key.source}) is the same "
        f"as the key for '{other.environment}' (from {other.source}). Each environment needs "
        f"its own key — a production key used in development is the classic leak. "
        f"Replace one of them."
    )


def check_isolation(
    key: ResolvedKey, peers: Iterable[Settings], resolved: Iterable[ResolvedKey] = ()
) -> None:
    """Raise ``ConfigurationError`` if another environment has the same key.

    ``resolved`` are keys this process already holds for other environments; ``peers`` are
    the other environments' settings, whose literal / variable keys are compared too. A
    secret store is never called for that.
    """
    for other in resolved:
        if other.environment != key.environment and other.value == key.value:
            raise _duplicate(key, other)
    for peer in peers:
        if peer.environment == key.environment:
            continue
        try:
            local = local_key(peer)
        except ConfigurationError:
            continue
        if isinstance(local, ResolvedKey) and local.value == key.value:
            raise _duplicate(key, local)
