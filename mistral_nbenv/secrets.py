"""``SecretStr``, and the one mask: how keys and tokens are shown everywhere in the package.

:func:`mask` is the only rule for showing a secret (logs, errors, the CLI, the widget, the
scanner, the test server): a secret of :data:`SHOW_TAIL_FROM` characters or more shows its
last 4, a shorter one nothing. :func:`redact` applies it to every occurrence in a text.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any, NoReturn

__all__ = ["SHOW_TAIL_FROM", "SecretStr", "forms", "mask", "redact", "redact_bytes"]

#: A secret this long or longer shows its last 4 characters; a shorter one shows none.
SHOW_TAIL_FROM = 12


def mask(value: str) -> str:
    """Show at most the last 4 characters of a secret (none of a short one): ``…abcd``."""
    return "…" + value[-4:] if len(value) >= SHOW_TAIL_FROM else "…"


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

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("SecretStr holds a str")
        self._value = value

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
