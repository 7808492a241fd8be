"""Pinned model IDs per environment: ``models.lock.toml``, beside the project's settings.

``mistral-nbenv models lock`` resolves each environment's model names (``model``,
``new_model``, ``embedding_model``, ``fim_model``) through that environment's
``models.list``: an alias such as ``mistral-large-latest`` becomes the dated ID it points
at today, with the date that ID is deprecated on and its replacement. While a lock exists,
the environment sends the pinned IDs. The file is meant to be committed::

    [production."mistral-large-latest"]
    id = "mistral-large-2512"
    deprecation = 2027-05-31T00:00:00Z      # absent while none is announced
    replacement = "mistral-large-2602"
    locked = 2026-12-07T16:00:00Z

This module reads and writes the file and resolves a name against model cards; it calls
nothing (the CLI asks the API through a client).
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mistral_nbenv.errors import ConfigurationError

__all__ = [
    "LOCK_FILENAME",
    "Pin",
    "card_field",
    "deprecation_problem",
    "read_lock",
    "resolve",
    "write_lock",
]

LOCK_FILENAME = "models.lock.toml"
#: A pin deprecated (or retiring) within this many days fails ``check``.
WARN_DAYS = 30

_HEADER = (
    "# Model IDs each environment sends, resolved from its models.list by\n"
    "# `mistral-nbenv models lock`; `mistral-nbenv models promote staging production --confirm`\n"
    "# copies staging's pins to production. Commit this file; edit it only with those commands.\n"
)


@dataclass(frozen=True)
class Pin:
    """One model name of an environment, pinned to the ID it resolved to."""

    name: str  # what the settings say (an alias or an ID)
    id: str  # what is sent
    deprecation: dt.datetime | None = None  # when the API retires ``id``
    replacement: str | None = None  # what the API recommends instead
    locked: dt.datetime | None = None

    def retires_within(self, days: float, now: dt.datetime | None = None) -> bool:
        """True when ``id`` is deprecated already or will be within ``days``."""
        if self.deprecation is None:
            return False
        now = now or dt.datetime.now(dt.UTC)
        return self.deprecation <= now + dt.timedelta(days=days)

    def as_toml(self) -> dict[str, Any]:
        """The table written for this pin (absent values left out)."""
        table: dict[str, Any] = {"id": self.id}
        if self.deprecation is not None:
            table["deprecation"] = self.deprecation
        if self.replacement:
            table["replacement"] = self.replacement
        if self.locked is not None:
            table["locked"] = self.locked
        return table


Pins = Mapping[str, Pin]  # model name -> pin, for one environment


def _when(value: Any, where: str) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, str):
        try:
            return _when(dt.datetime.fromisoformat(value.replace("Z", "+00:00")), where)
        except ValueError:
            pass
    raise ConfigurationError(f"{where} must be a date and time (e.g. 2027-05-31T00:00:00Z).")


def read_lock(path: Path) -> dict[str, Pins]:
    """The pins in ``path`` by environment (empty when the file does not exist)."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"Cannot read {path}: {exc}. Fix or delete the file.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(
            f"{path} is not valid TOML ({exc}). Run `mistral-nbenv models lock --all` to "
            "write it again."
        ) from None
    pins: dict[str, Pins] = {}
    for env, table in data.items():
        if not isinstance(table, Mapping):
            raise ConfigurationError(f"{path}: [{env}] must be a table of pinned models.")
        found: dict[str, Pin] = {}
        for name, entry in table.items():
            where = f"{path} [{env}.{name!r}]"
            ident = entry.get("id") if isinstance(entry, Mapping) else None
            if not isinstance(ident, str) or not ident.strip():
                raise ConfigurationError(f'{where} needs id = "<model ID>".')
            replacement = entry.get("replacement")
            found[name] = Pin(
                name=name,
                id=ident.strip(),
                deprecation=_when(entry.get("deprecation"), f"{where} deprecation"),
                replacement=replacement if isinstance(replacement, str) else None,
                locked=_when(entry.get("locked"), f"{where} locked"),
            )
        pins[str(env)] = MappingProxyType(found)
    return pins


def write_lock(path: Path, pins: Mapping[str, Pins]) -> None:
    """Write every environment's pins to ``path`` at once (a reader never sees half)."""
    import tomli_w

    document = {
        env: {name: pin.as_toml() for name, pin in sorted(table.items())}
        for env, table in sorted(pins.items())
        if table
    }
    text = _HEADER + "\n" + tomli_w.dumps(document)
    fd, temporary = tempfile.mkstemp(prefix=".models.lock.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def card_field(card: Any, name: str) -> Any:
    """A field of a ``models.list`` card (an SDK model or a dict); None when unset."""
    value = card.get(name) if isinstance(card, Mapping) else getattr(card, name, None)
    return None if type(value).__name__ == "Unset" else value


def resolve(name: str, cards: Iterable[Any], *, now: dt.datetime | None = None) -> Pin:
    """Pin ``name`` to the dated ID the API's model cards say it means today.

    A card matches when its ``id`` is ``name`` or ``name`` is one of its ``aliases``. Among
    the IDs the matches name (their ``id``, their ``name``, their aliases), the pinned one
    is a dated ID: not ``name`` when ``name`` is an alias, never a ``-latest`` name. A name
    the API does not list is a :class:`ConfigurationError` (nothing would answer it).
    """
    matches = [
        card
        for card in cards
        if card_field(card, "id") == name or name in (card_field(card, "aliases") or ())
    ]
    if not matches:
        raise ConfigurationError(
            f"The API's models.list does not list {name!r}. Fix the model name in the "
            "settings (`mistral-nbenv models list` shows what the server offers)."
        )
    candidates: list[str] = []
    for card in matches:
        for ident in (
            card_field(card, "name"),
            card_field(card, "id"),
            *(card_field(card, "aliases") or ()),
        ):
            if isinstance(ident, str) and ident and ident not in candidates:
                candidates.append(ident)
    dated = [c for c in candidates if c != name and not c.endswith("-latest")]
    exact = next((card for card in matches if card_field(card, "id") == name), None)
    canonical = card_field(exact, "name") if exact is not None else None
    if isinstance(canonical, str) and canonical and canonical != name:
        chosen = canonical  # the API lists ``name`` as another name of ``canonical``
    elif exact is None or name.endswith("-latest"):
        chosen = dated[0] if dated else name
    else:
        chosen = name  # an ID the API lists (its aliases are other names for it)
    card = next((c for c in matches if card_field(c, "id") == chosen), matches[0])
    deprecation = card_field(card, "deprecation")
    replacement = card_field(card, "deprecation_replacement_model")
    return Pin(
        name=name,
        id=chosen,
        deprecation=_when(deprecation, f"models.list deprecation of {chosen!r}"),
        replacement=replacement if isinstance(replacement, str) and replacement else None,
        locked=(now or dt.datetime.now(dt.UTC)).replace(microsecond=0),
    )


def deprecation_problem(env: str, pin: Pin, *, now: dt.datetime | None = None) -> str | None:
    """Why ``pin`` must change soon (None while it may stay)."""
    if not pin.retires_within(WARN_DAYS, now):
        return None
    assert pin.deprecation is not None
    when = pin.deprecation.date().isoformat()
    past = pin.deprecation <= (now or dt.datetime.now(dt.UTC))
    instead = f"; its replacement is {pin.replacement!r}" if pin.replacement else ""
    verb = "was deprecated on" if past else "retires on"
    return (
        f"[{env}] {pin.name!r} is pinned to {pin.id!r}, which {verb} {when}{instead}. "
        f"Change the model in the settings (or run `mistral-nbenv models lock --env {env}` "
        "after the alias moved), test, and commit models.lock.toml."
    )
