"""``models list | lock | promote`` and the model checks of ``check`` (CLI and magic).

* :func:`list_models`: what an environment's ``models.list`` offers, with aliases, the
  dated ID each alias points at, deprecation dates and replacements, and which of the
  environment's settings use each model;
* :func:`lock`: resolve each environment's model names through its own ``models.list`` and
  write ``models.lock.toml`` (:mod:`mistral_nbenv.config.pins`);
* :func:`promote`: copy one environment's pins to another (a protected one needs
  ``confirm``);
* :func:`model_findings`: what ``check`` says about models: pins deprecated or retiring
  within 30 days, names a lock does not pin, and staging against production on everything
  that changes answers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mistral_nbenv.config import Settings
from mistral_nbenv.config.pins import (
    LOCK_FILENAME,
    Pin,
    card_field,
    deprecation_problem,
    read_lock,
    resolve,
    write_lock,
)
from mistral_nbenv.errors import ConfigurationError, ProductionConfirmationRequired
from mistral_nbenv.ui.checks import Finding
from mistral_nbenv.workspace import get_client, get_settings, project

__all__ = [
    "MODEL_SETTINGS",
    "Change",
    "ModelRow",
    "list_models",
    "lock",
    "model_findings",
    "promote",
    "run",
]

#: The settings that name a model, and the endpoint each is the default of.
MODEL_SETTINGS: tuple[tuple[str, str], ...] = (
    ("model", "chat"),
    ("new_model", "chat (features.use_new_model)"),
    ("embedding_model", "embeddings"),
    ("fim_model", "FIM"),
)


@dataclass(frozen=True)
class ModelRow:
    """One model card of ``models.list``, as ``models list`` shows it."""

    id: str
    points_to: str  # the dated ID an alias means today ("" for an ID)
    aliases: tuple[str, ...]
    deprecation: str  # ISO date, "" when none is announced
    replacement: str
    used_by: tuple[str, ...] = ()  # the settings naming it (model, fim_model, ...)
    pinned: str = ""  # the ID models.lock.toml sends for it, if pinned


@dataclass(frozen=True)
class Change:
    """One pin written (``before`` is "" for a new one)."""

    environment: str
    name: str
    before: str
    after: str
    pin: Pin = field(compare=False, repr=False)

    def __str__(self) -> str:
        if self.before == self.after:
            return f"[{self.environment}] {self.name} -> {self.after} (unchanged)"
        was = f" (was {self.before})" if self.before else ""
        return f"[{self.environment}] {self.name} -> {self.after}{was}"


def _cards(env: str) -> list[Any]:
    """``models.list`` of ``env``, asked now (never the cache)."""
    listing = get_client(env).models.list(cache=False)
    return list(getattr(listing, "data", None) or [])


def _names(settings: Settings) -> dict[str, list[str]]:
    """Model name -> the settings naming it (``model``, ``fim_model``, ...)."""
    names: dict[str, list[str]] = {}
    for key, _what in MODEL_SETTINGS:
        names.setdefault(getattr(settings, key), []).append(key)
    return names


def list_models(env: str | None) -> list[ModelRow]:
    """Every model ``env``'s server lists (None or "": the active environment's), the ones
    its settings use first."""
    settings = get_settings(env or None)
    used = _names(settings)
    rows = []
    for card in _cards(settings.environment):
        ident = str(card_field(card, "id"))
        name = card_field(card, "name")
        when = card_field(card, "deprecation")
        rows.append(
            ModelRow(
                id=ident,
                points_to=name if isinstance(name, str) and name != ident else "",
                aliases=tuple(card_field(card, "aliases") or ()),
                deprecation=when.date().isoformat() if isinstance(when, dt.datetime) else "",
                replacement=str(card_field(card, "deprecation_replacement_model") or ""),
                used_by=tuple(used.get(ident, ())),
                pinned=settings.pins[ident].id if ident in settings.pins else "",
            )
        )
    rows.sort(key=lambda r: (not r.used_by, r.id))
    return rows


def _lock_path() -> Path:
    directory = project().directory
    if directory is None:
        raise ConfigurationError(
            f"No project to write {LOCK_FILENAME} into: no settings.toml or .secrets.toml was "
            "found here or above. Run it from the project (or set MISTRAL_NBENV_SETTINGS)."
        )
    return directory / LOCK_FILENAME


def _guard(env: str, changes: list[Change], confirm: bool, command: str) -> None:
    """A protected environment's sent IDs change only with ``confirm``."""
    moved = [c for c in changes if c.before and c.before != c.after]
    if moved and get_settings(env).protected and not confirm:
        lines = "; ".join(str(c) for c in moved)
        raise ProductionConfirmationRequired(
            f"{env} is protected and this would change the models it sends ({lines}). "
            f"Nothing was written. Run `{command} --confirm` to do it.",
            environment=env,
        )


def lock(envs: Iterable[str], *, confirm: bool = False) -> list[Change]:
    """Pin every model name of each environment to what its ``models.list`` says now.

    Writes ``models.lock.toml`` once, for all of them (other environments' pins kept). A
    protected environment whose existing pin would move needs ``confirm``.
    """
    path = _lock_path()
    pins = {env: dict(table) for env, table in read_lock(path).items()}
    changes: list[Change] = []
    for env in envs:
        settings = get_settings(env)
        name = settings.environment
        cards = _cards(name)
        old = pins.get(name, {})
        new: dict[str, Pin] = {}
        found: list[Change] = []
        for model in _names(settings):
            try:
                pin = resolve(model, cards)
            except ConfigurationError as exc:
                raise ConfigurationError(f"[{name}] {exc}") from None
            new[model] = pin
            before = old[model].id if model in old else ""
            found.append(Change(name, model, before, pin.id, pin))
        _guard(name, found, confirm, f"mistral-nbenv models lock --env {name}")
        pins[name] = new
        changes += found
    write_lock(path, {env: MappingProxyType(table) for env, table in pins.items()})
    return changes


def promote(source: str, target: str, *, confirm: bool = False) -> list[Change]:
    """Copy ``source``'s pins to ``target`` (``models promote staging production``)."""
    src, dst = get_settings(source).environment, get_settings(target).environment
    if src == dst:
        raise ConfigurationError(f"models promote: {src} to itself changes nothing.")
    path = _lock_path()
    pins = {env: dict(table) for env, table in read_lock(path).items()}
    if not pins.get(src):
        raise ConfigurationError(
            f"[{src}] has no pins in {path} to promote. Run `mistral-nbenv models lock "
            f"--env {src}` first."
        )
    current = pins.get(dst, {})
    changes = [
        Change(dst, name, current[name].id if name in current else "", pin.id, pin)
        for name, pin in sorted(pins[src].items())
    ]
    guarded = [
        c if c.before else Change(dst, c.name, "(unpinned)", c.after, c.pin) for c in changes
    ]
    _guard(dst, guarded, confirm, f"mistral-nbenv models promote {src} {dst}")
    pins[dst] = {**current, **{c.name: c.pin for c in changes}}
    write_lock(path, {env: MappingProxyType(table) for env, table in pins.items()})
    return changes


def run(
    action: str, envs: list[str], *, every: bool = False, confirm: bool = False
) -> tuple[str, list[ModelRow] | list[Change]]:
    """``models ACTION ENV...`` as both front ends parse it: ``("list", rows)`` for
    ``list [ENV]``, ``(ENV, rows)``; ``("changes", changes)`` for ``lock`` and ``promote``.
    A wrong number of environments is a ConfigurationError saying the form."""
    from mistral_nbenv.workspace import environment_name, list_environments

    if action == "list":
        if len(envs) > 1 or every:
            raise ConfigurationError("models list takes one environment (default: the active)")
        return environment_name(envs[0] if envs else None), list_models(envs[0] if envs else "")
    if action == "lock":
        if every and envs:
            raise ConfigurationError("models lock: give environments or --all, not both")
        if every:
            names = list_environments()
        else:
            names = [environment_name(e) for e in envs] if envs else [environment_name(None)]
        return "changes", lock(names, confirm=confirm)
    if len(envs) != 2 or every:
        raise ConfigurationError(
            "models promote takes two environments: SOURCE TARGET "
            "(e.g. models promote staging production --confirm)"
        )
    return "changes", promote(envs[0], envs[1], confirm=confirm)


# --------------------------------------------------------------------------- check


def _online_pins(settings: Settings) -> tuple[dict[str, Pin], list[Finding]]:
    """Each model name of ``settings`` as sent (pinned or not), with the deprecation its
    ``models.list`` announces today; a model it does not list is a finding."""
    env = settings.environment
    cards = _cards(env)
    found: dict[str, Pin] = {}
    problems: list[Finding] = []
    for name in _names(settings):
        ident = settings.send(name)
        try:
            today = resolve(ident, cards)
        except ConfigurationError as exc:
            problems.append(Finding(f"[{env}] {exc}", "error", (env,)))
            continue
        found[name] = Pin(name, ident, today.deprecation, today.replacement)
    return found, problems


def _sent(settings: Settings) -> dict[str, tuple[str, str]]:
    """What changes answers: ``label -> (value, its cause)``."""

    def cause(key: str) -> str:
        return settings.source_of(key)

    chat_cause = settings.model_reason or f"model from {cause('model')}"
    where = settings.base_url or "api.mistral.ai (SDK default)"
    server_cause = (
        f"server_url from {cause('server_url')}"
        if settings.server_url
        else (f"server from {cause('server')}" if settings.server else "the SDK default")
    )
    out = {
        "chat model": (settings.model_sent, chat_cause),
        "embeddings model": (
            settings.embedding_model_sent,
            settings.reason_for(settings.embedding_model, setting="embedding_model")
            or f"embedding_model from {cause('embedding_model')}",
        ),
        "FIM model": (
            settings.fim_model_sent,
            settings.reason_for(settings.fim_model, setting="fim_model")
            or f"fim_model from {cause('fim_model')}",
        ),
        "server": (where, server_cause),
    }
    return out


def _compare(staging: Settings, production: Settings) -> list[Finding]:
    """Staging against production on what changes answers."""
    findings = []
    ahead = staging.models_lead_production
    theirs = _sent(production)
    for label, (value, why) in _sent(staging).items():
        other, other_why = theirs[label]
        if value == other:
            continue
        text = (
            f"staging sends {label} {value!r} ({why}) but production sends {other!r} ({other_why})."
        )
        if ahead and label.endswith("model"):  # leading excuses models, not the server
            findings.append(
                Finding(
                    f"{text} Expected: staging tries changes first "
                    f"(models_lead_production = true, from "
                    f"{staging.source_of('models_lead_production')}).",
                    severity="note",
                    environments=("staging", "production"),
                )
            )
        else:
            findings.append(
                Finding(
                    f"{text} Staging should mirror production: align them, or say that "
                    "staging leads (`[staging] models_lead_production = true`).",
                    environments=("staging", "production"),
                )
            )
    return findings


def model_findings(
    checked: Iterable[Settings], *, online: bool = False, now: dt.datetime | None = None
) -> list[Finding]:
    """What ``check`` says about the models of the checked environments."""
    findings: list[Finding] = []
    checked = list(checked)
    for settings in checked:
        env = settings.environment
        pins: Mapping[str, Pin] = settings.pins
        if online:
            pins, problems = _online_pins(settings)
            findings += problems
        for _name, pin in sorted(pins.items()):
            problem = deprecation_problem(env, pin, now=now)
            if problem is not None:
                findings.append(Finding(problem, "error", (env,)))
        if settings.lock_file is not None:
            loose = [n for n in _names(settings) if n not in settings.pins]
            if loose:
                findings.append(
                    Finding(
                        f"[{env}] {', '.join(map(repr, loose))} not pinned in "
                        f"{settings.lock_file.name}, so the API decides what "
                        f"{'it means' if len(loose) == 1 else 'they mean'}. Run "
                        f"`mistral-nbenv models lock --env {env}` and commit the file.",
                        environments=(env,),
                    )
                )
    names = {s.environment for s in checked}
    if names & {"staging", "production"}:
        try:
            staging, production = get_settings("staging"), get_settings("production")
        except ConfigurationError:
            return findings  # broken settings are reported by the check itself
        findings += _compare(staging, production)
    return findings
