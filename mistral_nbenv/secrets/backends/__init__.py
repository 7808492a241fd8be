"""Secret references (``env:``, ``file:``, ``vault:``, ``aws-sm:``, ``gcp-sm:``); lazy backends.

A reference is parsed once into a :class:`SecretReference`; the backend module that can
fetch it is imported only when needed by :func:`load_backend`, so importing this package
never imports hvac, boto3 or google-cloud.  Every backend module offers::

    def fetch(ref: SecretReference, options: SecretsSettings,
              getenv: Callable[[str], str | None]) -> str

and raises :class:`~mistral_nbenv.errors.SecretBackendError` (never showing the value).
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol

from mistral_nbenv.errors import ConfigurationError, SecretBackendError

__all__ = [
    "BACKEND_MODULES",
    "EXTRAS",
    "KNOWN_SCHEMES",
    "BackendOptions",
    "SecretReference",
    "backend_error",
    "decode_utf8",
    "import_dependency",
    "is_known_reference",
    "is_reference",
    "json_or_none",
    "key_field",
    "key_text",
    "load_backend",
    "parse_reference",
]

#: scheme -> module (relative to this package) that fetches it; ``env`` needs no backend.
BACKEND_MODULES: dict[str, str] = {"vault": "vault", "aws-sm": "aws", "gcp-sm": "gcp"}
#: scheme -> the ``pip install "mistral-nbenv[EXTRA]"`` extra providing its dependency.
EXTRAS: dict[str, str] = {"vault": "vault", "aws-sm": "aws", "gcp-sm": "gcp"}
#: scheme -> top-level modules its backend imports.
_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "vault": ("hvac",),
    "aws-sm": ("boto3", "botocore"),
    "gcp-sm": ("google.cloud.secretmanager", "google.api_core", "google.auth"),
}
KNOWN_SCHEMES: tuple[str, ...] = ("env", "file", "vault", "aws-sm", "gcp-sm")

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_GCP_PATH_RE = re.compile(r"^projects/[^/\s]+/secrets/[^/\s]+/versions/[^/\s]+$")
_FORMS = (
    "env:NAME, file:PATH, vault:MOUNT/PATH#FIELD, aws-sm:SECRET_ID[#JSON_FIELD], "
    "gcp-sm:projects/P/secrets/S/versions/V"
)


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


class BackendOptions(Protocol):
    """What a backend reads from ``settings.SecretsSettings`` (empty string = not set)."""

    @property
    def vault_url(self) -> str: ...
    @property
    def vault_token(self) -> _Secret | None: ...
    @property
    def vault_namespace(self) -> str: ...
    @property
    def aws_region(self) -> str: ...
    @property
    def aws_endpoint_url(self) -> str: ...
    @property
    def gcp_emulator_host(self) -> str: ...


@dataclass(frozen=True)
class SecretReference:
    """A parsed secret reference such as ``vault:secret/mistral/prod#api_key``."""

    scheme: str
    path: str
    field: str | None
    raw: str

    def __str__(self) -> str:
        return self.raw


def is_reference(value: str) -> bool:
    """Whether ``value`` starts with a ``scheme:`` prefix (a Mistral key never does)."""
    return _SCHEME_RE.match(value.strip()) is not None


def is_known_reference(value: str) -> bool:
    """Whether ``value`` starts with a scheme this package resolves (``env:``, ``vault:``,
    ...): a URL such as ``redis://...`` is not a reference."""
    match = _SCHEME_RE.match(value.strip())
    return match is not None and match.group(1).lower() in KNOWN_SCHEMES


def _bad(raw: str, why: str) -> ConfigurationError:
    return ConfigurationError(
        f"malformed secret reference {raw!r}: {why}. Accepted forms: {_FORMS}."
    )


def parse_reference(raw: str) -> SecretReference:
    """Parse ``raw`` into a :class:`SecretReference`; ``ConfigurationError`` if malformed."""
    text = raw.strip()
    match = _SCHEME_RE.match(text)
    if match is None:
        raise _bad(raw, "it has no 'scheme:' prefix")
    scheme = match.group(1).lower()
    if scheme not in KNOWN_SCHEMES:
        known = ", ".join(f"{s}:" for s in KNOWN_SCHEMES)
        raise ConfigurationError(
            f"unknown secret reference scheme {match.group(1) + ':'!r}; "
            f"known schemes are {known} (forms: {_FORMS})."
        )
    rest = text[match.end() :]
    path, sep, field_text = rest.partition("#")
    path = path.strip()
    field = field_text.strip() if sep else None
    if not path:
        raise _bad(raw, "the path after the scheme is empty")
    if sep and not field:
        raise _bad(raw, "the field after '#' is empty")

    if scheme == "env":
        if sep:
            raise _bad(raw, "env: takes a variable name, not '#FIELD'")
        if not _ENV_NAME_RE.match(path):
            raise _bad(raw, f"{path!r} is not an environment variable name")
    elif scheme == "file":
        if sep:
            raise _bad(raw, "file: takes a path, not '#FIELD'")
    elif scheme == "vault":
        path = path.strip("/")
        mount, slash, sub = path.partition("/")
        if not slash or not mount or not sub or "//" in path:
            raise _bad(raw, "vault: needs MOUNT/PATH (e.g. secret/mistral/prod)")
        if field is None:
            raise _bad(raw, "vault: needs '#FIELD' naming the key inside the secret")
    elif scheme == "gcp-sm":
        if sep:
            raise _bad(raw, "gcp-sm: takes no '#FIELD'")
        if not _GCP_PATH_RE.match(path):
            raise _bad(raw, "gcp-sm: needs projects/P/secrets/S/versions/V (V may be 'latest')")
    return SecretReference(scheme=scheme, path=path, field=field, raw=text)


def backend_error(
    ref: SecretReference, label: str, problem: str, advice: str
) -> SecretBackendError:
    """Build the ``SecretBackendError`` for ``ref``: what went wrong and what to do (no value)."""
    return SecretBackendError(
        f"{label} could not provide {ref.raw}: {problem}. {advice}",
        backend=ref.scheme,
        reference=ref.raw,
    )


def key_text(ref: SecretReference, label: str, value: object, what: str) -> str:
    """``value`` stripped, as the API key; ``SecretBackendError`` if not a non-empty string."""
    if not isinstance(value, str):
        raise backend_error(
            ref,
            label,
            f"{what} is a {type(value).__name__}, not a string",
            "Store the key as a string.",
        )
    text = value.strip()
    if not text:
        raise backend_error(ref, label, f"{what} is empty", "Store the API key in it.")
    return text


def key_field(
    ref: SecretReference, label: str, data: Mapping[str, object], noun: str = "field"
) -> str:
    """``data[ref.field]`` through :func:`key_text`; an error listing the fields if absent."""
    field = ref.field or ""
    if field not in data:
        available = ", ".join(sorted(map(str, data))) or "none"
        raise backend_error(
            ref,
            label,
            f"the secret has no {noun} {field!r} (fields: {available})",
            "Fix the '#FIELD' part of the reference.",
        )
    return key_text(ref, label, data[field], f"{noun} {field!r}")


def decode_utf8(data: bytes) -> str | None:
    """``data`` as UTF-8 text, or None; the decode error (holding the secret) never escapes."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def json_or_none(text: str) -> tuple[bool, object]:
    """``(True, value)`` if ``text`` is JSON, else ``(False, None)``; the error never escapes."""
    try:
        return True, json.loads(text)
    except ValueError:
        return False, None


def import_dependency(name: str, scheme: str) -> ModuleType:
    """Import a backend's third-party module, or raise ``SecretBackendError`` naming the extra."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        extra = EXTRAS.get(scheme, scheme)
        raise SecretBackendError(
            f"{scheme}: secret references need the optional dependency {name!r}, which is "
            f'not installed; run: pip install "mistral-nbenv[{extra}]"',
            backend=scheme,
        ) from exc


def load_backend(scheme: str) -> ModuleType:
    """Import the backend module for ``scheme`` (checking its optional dependency)."""
    key = scheme.lower()
    if key not in BACKEND_MODULES:
        if key == "env":
            raise ConfigurationError("env: references are read from the environment, no backend")
        known = ", ".join(f"{s}:" for s in KNOWN_SCHEMES)
        raise ConfigurationError(f"unknown secret backend {scheme!r}; known schemes are {known}")
    for dependency in _DEPENDENCIES[key]:
        import_dependency(dependency, key)
    return importlib.import_module(f"{__name__}.{BACKEND_MODULES[key]}")
