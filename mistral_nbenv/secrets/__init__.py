"""``SecretStr``, and the one mask: how keys and tokens are shown everywhere in the package.

:func:`mask` is the only rule for showing a secret (logs, errors, the CLI, the widget, the
scanner, the test server): a secret of :data:`SHOW_TAIL_FROM` characters or more shows its
last 4, a shorter one nothing. :func:`redact` applies it to every occurrence of given
secrets in a text; :func:`scrub` to every secret this process knows (each ``SecretStr``
made) *and* to anything shaped like a credential (:data:`SHAPES`: a Mistral key, a Vault
token, AWS keys, the password of a URL); :func:`describe` is ``repr`` with that applied to
every string inside lists and tables.  Every :class:`~mistral_nbenv.errors.MistralEnvError`
message goes through :func:`scrub` (registered below), whoever built it.
"""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Iterable
from typing import Any, NoReturn

from mistral_nbenv import errors
from mistral_nbenv._forksafe import Lock

__all__ = [
    "SHAPES",
    "SHOW_TAIL_FROM",
    "SecretStr",
    "describe",
    "forms",
    "key_token",
    "looks_like_key",
    "mask",
    "redact",
    "redact_bytes",
    "scrub",
    "secret_url",
    "shows_secret",
    "url_credentials",
    "url_without_password",
]

#: A secret this long or longer shows its last 4 characters; a shorter one shows none.
SHOW_TAIL_FROM = 12


def mask(value: str) -> str:
    """Show at most the last 4 characters of a secret (none of a short one): ``…abcd``."""
    return "…" + value[-4:] if len(value) >= SHOW_TAIL_FROM else "…"


@functools.lru_cache(maxsize=256)
def forms(secret: str) -> tuple[str, ...]:
    """The ways ``secret`` can appear in text: itself, and as ``repr`` of its str and bytes.

    A key with a newline or a non-ASCII character shows as ``\\n`` or ``\\xe2\\x80\\x8b``
    inside ``b'Bearer ...'`` in an HTTP library's error message.
    """
    found = [secret]
    for form in (
        repr(secret)[1:-1],
        repr(secret.encode("utf-8", "backslashreplace"))[2:-1],
        secret.encode("unicode_escape").decode("ascii"),
    ):
        if form not in found:
            found.append(form)
    return tuple(found)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret (in any of its :func:`forms`) masked."""
    for secret in secrets:
        if not secret:
            continue
        for form in forms(secret):
            if form in text:
                text = text.replace(form, mask(secret))
    return text


# A Mistral key's shape: 32 letters and digits standing alone (not a piece of a longer
# base64 / URL-safe / path run).
_KEY_TOKEN = r"(?<![A-Za-z0-9+/_\-.])[A-Za-z0-9]{32}(?![A-Za-z0-9+/=_\-])"
# CamelCase words, each of 2+ lower-case letters, digits only at a word's end, or a
# version-like ``V2`` (``Mistral3ForCausalLM``-style class names, ``RunV2ResponseTypedDict``);
# a random key looks like this about 26 times in a million (measured).
_WORDS = r"(?:[A-Z]?[a-z]{2,}[0-9]{0,2}|[A-Z][0-9]{1,2})+"
# For masking, any run of 32 or more letters and digits, wherever it stands (a key with a
# character typed before or after it, inside a path or a URL): over-masking a message is
# harmless, under-masking is a leak.
_KEY_RUN = r"(?<![A-Za-z0-9])[A-Za-z0-9]{32,}(?![A-Za-z0-9])"


@functools.cache
def key_token() -> re.Pattern[str]:
    """The Mistral key shape as a compiled pattern (compiled on first use: imports stay fast)."""
    return re.compile(_KEY_TOKEN, re.ASCII)


@functools.cache
def _words() -> re.Pattern[str]:
    return re.compile(_WORDS, re.ASCII)


def looks_like_key(token: str) -> bool:
    """A 32-character token that is mixed case and not a CamelCase identifier."""
    if token.lower() == token or token.upper() == token:
        return False
    return not _words().fullmatch(token)


def _mistral(match: re.Match[str]) -> str:
    token = match.group(0)
    return mask(token) if looks_like_key(token) else token


def _whole(match: re.Match[str]) -> str:
    return mask(match.group(0))


def _url_password(match: re.Match[str]) -> str:
    if match.group(2) == "****":  # already masked (url_without_password)
        return match.group(0)
    return match.group(1) + "…" + match.group(3)


#: Credential shapes masked by :func:`scrub`: (pattern, replacement).
SHAPES: tuple[tuple[str, Any], ...] = (
    (_KEY_RUN, _mistral),
    (r"\bhv[sbr]\.[A-Za-z0-9_\-]{20,}", _whole),  # Vault / OpenBao tokens
    (r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", _whole),  # AWS access key ids
    # AWS secret access keys: 40 base64 characters with a digit, a lower and an upper case
    (
        r"(?<![A-Za-z0-9+/])(?=[A-Za-z0-9+/]{0,39}[0-9])(?=[A-Za-z0-9+/]{0,39}[a-z])"
        r"(?=[A-Za-z0-9+/]{0,39}[A-Z])[A-Za-z0-9+/]{40}(?![A-Za-z0-9+/=])",
        _whole,
    ),
    # a URL's password (user optional; the password may hold "/", "?", "#" or ":")
    (r"(://[^:/@\s]*:)([^@\s]+)(@)", _url_password),
)


@functools.cache
def _shapes() -> tuple[tuple[re.Pattern[str], Any], ...]:
    return tuple((re.compile(pattern), replace) for pattern, replace in SHAPES)


_known: set[str] = set()
_known_lock = Lock()
_MAX_KNOWN = 1000
_MIN_KNOWN = 8


_known_order: tuple[str, ...] = ()  # _known, longest first: what known() returns
_known_forms: tuple[str, ...] = ()  # every form of every known secret (shows_secret)


def remember(secret: str) -> None:
    """Add a secret to the ones :func:`scrub` masks everywhere (each ``SecretStr`` does)."""
    global _known_order, _known_forms
    if len(secret) >= _MIN_KNOWN:
        with _known_lock:
            if len(_known) < _MAX_KNOWN and secret not in _known:
                _known.add(secret)
                _known_order = tuple(sorted(_known, key=len, reverse=True))
                _known_forms = (*_known_forms, *forms(secret))  # (any order: a yes/no check)


def shows_secret(text: str, secret: str = "") -> bool:
    """Whether ``text`` shows ``secret`` or any known secret, in any of its :func:`forms`:
    exactly when ``redact(text, [secret, *known()])`` would change it, without building the
    masked copy (the check on every answer before it is cached)."""
    for form in _known_forms:
        if form in text:
            return True
    if secret and secret not in _known:  # (too short to be remembered, or past the limit)
        for form in forms(secret):
            if form in text:
                return True
    return False


def known() -> tuple[str, ...]:
    """The secrets this process has seen (longest first, so a longer one masks whole)."""
    return _known_order


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret, ``secrets`` and every credential shape masked."""
    text = redact(text, [*secrets, *known()])
    for pattern, replace in _shapes():
        text = pattern.sub(replace, text)
    return text


_QUERY_PASSWORD = re.compile(r"(?i)((?:^|[?&;])(?:password|pass|pwd)=)([^&#;]*)")


def _url_parts(url: str) -> tuple[str, str | None, str]:
    """``(scheme and "//", credentials or None, the rest)`` of ``url``, without trusting it.

    The credentials are everything before the *last* ``@`` of the authority part, so a
    password holding ``/``, ``?``, ``#``, ``:`` or ``@`` (base64, or a typo) is still taken
    whole; a URL without a scheme (``PASS@host``) works the same way.
    """
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    else:
        head += sep
    if "@" not in rest:
        return head, None, rest
    credentials, _, host = rest.rpartition("@")
    return head, credentials, host


def url_credentials(url: str) -> str | None:
    """The ``user:password`` part of ``url`` (before its last ``@``), or None."""
    return _url_parts(url)[1]


def _passwords(url: str) -> list[str]:
    """The secret parts of ``url``: its userinfo's password (the whole userinfo when it has
    no ``:``, since some clients read ``redis://PASSWORD@host``) and ``?password=``."""
    found: list[str] = []
    _head, credentials, _rest = _url_parts(url)
    if credentials:
        user, colon, password = credentials.partition(":")
        found.append(password if colon else user)
    found += [m.group(2) for m in _QUERY_PASSWORD.finditer(url)]
    return [p for p in found if p]


def url_without_password(url: str) -> str:
    """``url`` for display: every password in it (``user:PASSWORD@``, ``PASSWORD@``,
    ``?password=``) as ``****``, whatever characters it holds or however malformed the URL
    is; known secrets and credential shapes in the rest are masked too."""
    head, credentials, rest = _url_parts(url)
    if credentials is not None:
        user, colon, _password = credentials.partition(":")
        shown = f"{user}:****" if colon else "****"
        rest = f"{shown}@{rest}"
    rest = _QUERY_PASSWORD.sub(lambda m: m.group(1) + "****", rest)
    return scrub(head + rest)


def secret_url(url: str) -> SecretStr:
    """A URL that may carry a password: its password is remembered (masked everywhere),
    the URL itself is not, so messages can show it without the password."""
    from urllib.parse import unquote

    for password in _passwords(url):
        remember(password)
        remember(unquote(password))  # what a client sends (percent-decoded)
    return SecretStr(url, known=False)


def describe(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for a message, strings inside lists and tables scrubbed."""
    text = _describe(value, 0)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value: Any, depth: int) -> str:
    if depth > 4:
        return "..."
    if isinstance(value, SecretStr):
        return repr(value)
    if isinstance(value, str):
        return repr(scrub(value))
    if isinstance(value, bytes):
        return "b" + repr(scrub(value.decode("utf-8", "replace")))
    if isinstance(value, dict):
        inner = ", ".join(
            f"{_describe(k, depth + 1)}: {_describe(v, depth + 1)}" for k, v in value.items()
        )
        return "{" + inner + "}"
    if isinstance(value, list | tuple | set | frozenset):
        inner = ", ".join(_describe(item, depth + 1) for item in value)
        return ("[{}]" if isinstance(value, list) else "({})").format(inner)
    return scrub(repr(value))


def redact_bytes(data: bytes, secrets: Iterable[str]) -> bytes:
    """:func:`redact` for bytes (the UTF-8 encoding of each secret)."""
    for secret in secrets:
        raw = secret.encode("utf-8", "backslashreplace") if secret else b""
        if raw and raw in data:
            data = data.replace(raw, mask(secret).encode("utf-8"))
    return data


class SecretStr:
    """A secret string whose ``repr``/``str``/format show at most its last 4 characters."""

    __slots__ = ("_value",)

    def __init__(self, value: str, *, known: bool = True) -> None:
        """``known=False`` for a value that is not itself secret (a secret reference)."""
        if not isinstance(value, str):
            raise TypeError("SecretStr holds a str")
        self._value = value
        if known:
            remember(value)

    def get_secret_value(self) -> str:
        """The full secret: pass it on, never print or store it."""
        return self._value

    @property
    def masked(self) -> str:
        """The masked form, e.g. ``…abcd``."""
        return mask(self._value)

    def __repr__(self) -> str:
        return f"SecretStr('{self.masked}')"

    def __str__(self) -> str:
        return self.masked

    def __format__(self, spec: str) -> str:
        return format(self.masked, spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretStr):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("SecretStr", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> NoReturn:
        raise TypeError("SecretStr cannot be pickled: secrets never go to a cache or a file")

    def __deepcopy__(self, memo: dict[int, Any]) -> SecretStr:
        return self

    def __copy__(self) -> SecretStr:
        return self


errors.set_message_scrubber(scrub)
