"""What calls cost: the packaged price table, an environment's overrides, a call's cost.

``prices.toml`` beside this module holds Mistral's list prices with the date they were
taken (``as_of``), where from (``source``) and a ``version`` that every usage row records.
An environment's ``prices`` setting overrides or adds models (the table's version then
gains a short digest of the overrides, so a row says which numbers priced it).

A price is found for the model the *answer* names (``response.model``: the dated ID when the
API resolved an alias), by its ID or by an alias the table knows. A model in neither table
has no price: its cost is ``None`` (never a guess), and :func:`warn_unpriced` says so once
per model and process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import tomllib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mistral_nbenv._forksafe import Lock
from mistral_nbenv.errors import MistralEnvWarning

__all__ = ["FIELDS", "Price", "PriceTable", "packaged", "table_for", "warn_unpriced"]

#: What a price may say: USD per million input / output tokens, per OCR page, per audio
#: minute, and the most output tokens one answer can hold (for a worst-case cost).
FIELDS = ("input", "output", "per_page", "per_minute", "max_output")

#: Output tokens assumed for a call that sets no ``max_tokens`` when the table gives no
#: ``max_output`` for its model (the largest output cap of the packaged models).
DEFAULT_MAX_OUTPUT = 40_960


@dataclass(frozen=True, slots=True)
class Price:
    """One model's price (USD)."""

    input: float = 0.0  # per million prompt tokens
    output: float = 0.0  # per million completion tokens
    per_page: float = 0.0  # per OCR page
    per_minute: float = 0.0  # per audio minute
    max_output: int = 0  # output tokens one answer can hold (0: unknown)

    def cost(self, prompt: float, completion: float, pages: float = 0, minutes: float = 0) -> float:
        """USD for these amounts."""
        return (
            prompt * self.input / 1e6
            + completion * self.output / 1e6
            + pages * self.per_page
            + minutes * self.per_minute
        )


@dataclass(frozen=True)
class PriceTable:
    """Prices by model ID, the aliases that name those IDs, and where the numbers came from."""

    version: str
    as_of: str
    source: str
    models: Mapping[str, Price] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)

    def price(self, model: str | None) -> Price | None:
        """The price of ``model`` (an ID or an alias the table knows); None: no price."""
        if not model:
            return None
        found = self.models.get(model)
        if found is None and model in self.aliases:
            found = self.models.get(self.aliases[model])
        return found

    def cost(
        self,
        model: str | None,
        prompt: float,
        completion: float,
        pages: float = 0.0,
        minutes: float = 0.0,
    ) -> float | None:
        """USD for one answer of ``model``; None when the model has no price."""
        price = self.price(model)
        return None if price is None else price.cost(prompt, completion, pages, minutes)

    def worst_case(self, model: str | None, prompt: float, max_tokens: Any) -> float | None:
        """The most one call can cost: its prompt estimate plus ``max_tokens`` (else the
        model's output cap) at the model's price; None when the model has no price."""
        price = self.price(model)
        if price is None:
            return None
        if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0:
            output = max_tokens
        else:
            output = price.max_output or DEFAULT_MAX_OUTPUT
        if not price.output:
            output = 0
        return price.cost(prompt, output)

    def with_overrides(self, overrides: Mapping[str, Mapping[str, float]]) -> PriceTable:
        """This table with an environment's ``prices`` laid over it. A name there prices
        that name, and when it is an alias this table knows, the ID it stands for too (an
        answer names the ID)."""
        if not overrides:
            return self
        models = dict(self.models)
        for name, values in overrides.items():
            base = self.price(name) or Price()
            merged = {k: getattr(base, k) for k in FIELDS}
            merged.update({k: v for k, v in values.items() if k in FIELDS})
            models[name] = _price(merged)
            if name in self.aliases and self.aliases[name] not in overrides:
                models[self.aliases[name]] = models[name]
        plain = {n: dict(v) for n, v in sorted(overrides.items())}
        digest = hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:8]
        return PriceTable(
            version=f"{self.version}+{digest}",
            as_of=self.as_of,
            source=f"{self.source}, with this environment's prices",
            models=MappingProxyType(models),
            aliases={k: v for k, v in self.aliases.items() if k not in overrides},
        )


@functools.cache
def packaged() -> PriceTable:
    """The price table shipped in ``prices.toml``."""
    data = tomllib.loads((Path(__file__).with_name("prices.toml")).read_text("utf-8"))
    models = {name: _price(values) for name, values in data.get("models", {}).items()}
    return PriceTable(
        version=str(data["version"]),
        as_of=str(data["as_of"]),
        source=str(data["source"]),
        models=MappingProxyType(models),
        aliases=MappingProxyType(dict(data.get("aliases", {}))),
    )


def _price(values: Mapping[str, Any]) -> Price:
    return Price(
        input=float(values.get("input", 0.0)),
        output=float(values.get("output", 0.0)),
        per_page=float(values.get("per_page", 0.0)),
        per_minute=float(values.get("per_minute", 0.0)),
        max_output=int(values.get("max_output", 0)),
    )


_tables: dict[str, PriceTable] = {}
_tables_lock = Lock()


def table_for(overrides: Mapping[str, Mapping[str, float]]) -> PriceTable:
    """The packaged table with ``overrides`` (an environment's ``prices``) laid over it."""
    if not overrides:
        return packaged()
    key = json.dumps({n: dict(v) for n, v in overrides.items()}, sort_keys=True)
    with _tables_lock:
        found = _tables.get(key)
        if found is None:
            found = _tables[key] = packaged().with_overrides(overrides)
    return found


_unpriced: set[tuple[str, str]] = set()
_unpriced_lock = Lock()


def warn_unpriced(model: str, environment: str) -> None:
    """One note per model and process: its calls have no cost (no price, no guess)."""
    with _unpriced_lock:
        if (model, environment) in _unpriced:
            return
        _unpriced.add((model, environment))
    warnings.warn(
        f"mistral_nbenv: no price for model '{model}' (environment '{environment}'), so its "
        f"cost is unknown and shown as '-'. Add it under [{environment}.prices]: "
        f'"{model}" = {{ input = USD, output = USD }} per million tokens.',
        MistralEnvWarning,
        stacklevel=3,
    )
