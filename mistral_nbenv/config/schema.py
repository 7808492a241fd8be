"""Every setting, declared once: its type and limits, its packaged default, what it means.

The typed view (:class:`Settings` and its tables) *is* the declaration: each field made
with :func:`setting` carries its :class:`Rule` (validation and conversion), its packaged
``[default]`` value and a one-line meaning. From it come :data:`SCHEMA` (the rules by
dotted key, which the validators run), :func:`packaged_defaults` (the ``[default]`` layer;
``defaults.toml`` beside this package holds only the per-environment differences),
:func:`reference` (the settings table of the README and ``explain()``) and the builder
that turns validated values into a :class:`Settings`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mistral_nbenv.config.pins import Pin
from mistral_nbenv.config.prices import FIELDS as PRICE_FIELDS
from mistral_nbenv.secrets import SecretStr

__all__ = [
    "BOOL",
    "OPTIONAL",
    "SCHEMA",
    "SECRET_KEYS",
    "TABLES",
    "BudgetSettings",
    "CacheSettings",
    "FeatureFlags",
    "RateLimitSettings",
    "Rule",
    "SecretsSettings",
    "Settings",
    "SharedSettings",
    "build",
    "packaged_defaults",
    "reference",
]


@dataclass(frozen=True)
class Rule:
    """What a setting accepts (types, bounds) and how its value is converted."""

    types: tuple[type, ...]
    expect: str
    gt: float | None = None
    gte: float | None = None
    most: float | None = None  # a stated maximum (numbers)
    non_blank: bool = False
    secret: bool = False
    valid: Callable[[Any], bool] | None = field(default=None, compare=False)  # a deeper check
    convert: Callable[[Any], Any] = field(default=lambda value: value, compare=False)

    def accepts(self, value: Any) -> bool:
        """Type and bounds (a bool is never a number; numbers must be finite)."""
        if not isinstance(value, self.types) or (bool not in self.types and type(value) is bool):
            return False
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not _finite(value):
                return False
            if self.gt is not None and not value > self.gt:
                return False
            if self.gte is not None and not value >= self.gte:
                return False
            if self.most is not None and value > self.most:
                return False
        if self.non_blank and isinstance(value, str) and not value.strip():
            return False
        return self.valid is None or bool(self.valid(value))


def _finite(number: float) -> bool:
    """A finite number a float can hold (a 400-digit integer cannot: not an error, a no)."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def _secret(value: Any) -> SecretStr | None:
    """A secret setting's value; a secret *reference* (``vault:...``) is not itself secret."""
    if not isinstance(value, str) or not value:
        return None
    from mistral_nbenv.secrets.backends import is_reference

    return SecretStr(value, known=not is_reference(value.strip()))


def _shared_url(value: Any) -> SecretStr | None:
    """``shared.url``: its password is masked everywhere; a reference is not secret."""
    if not isinstance(value, str) or not value.strip():
        return None
    from mistral_nbenv.secrets import secret_url
    from mistral_nbenv.secrets.backends import is_known_reference

    value = value.strip()
    return SecretStr(value, known=False) if is_known_reference(value) else secret_url(value)


def one_of(*choices: str) -> Rule:
    """One of a few words."""
    return Rule((str,), " or ".join(repr(c) for c in choices), valid=lambda v: v in choices)


def _price_table(value: Any) -> bool:
    """``prices``: ``{model = {input = USD, output = USD, ...}}`` (:data:`prices.FIELDS`)."""
    if not isinstance(value, Mapping):
        return False
    for model, price in value.items():
        if not isinstance(model, str) or not model.strip() or not isinstance(price, Mapping):
            return False
        if not price or set(price) - set(PRICE_FIELDS):
            return False
        for amount in price.values():
            if isinstance(amount, bool) or not isinstance(amount, int | float):
                return False
            if not _finite(amount) or not 0 <= amount <= 1e6:
                return False
    return True


def _prices(value: Any) -> Mapping[str, Mapping[str, float]]:
    if not isinstance(value, Mapping):
        return MappingProxyType({})
    return MappingProxyType(
        {str(m): MappingProxyType({k: float(v) for k, v in p.items()}) for m, p in value.items()}
    )


#: ``server`` names (the SDK's own table, mistralai.client.sdkconfiguration.SERVERS).
REGIONS = {
    "global": "https://api.mistral.ai",
    "eu": "https://api.eu.mistral.ai",
    "us": "https://api.us.mistral.ai",
}

STR = Rule((str,), "a string")
URL = Rule((str,), "a string", convert=lambda value: value.rstrip("/"))
NAME = Rule((str,), "a non-blank model name", non_blank=True)
BOOL = Rule((bool,), "true or false")
SECRET = Rule((str,), "a string", secret=True, convert=_secret)
SHARED_URL = Rule(
    (str,),
    "a redis://, rediss:// or unix:// URL, or a secret reference (env:REDIS_URL, vault:...)",
    secret=True,
    convert=_shared_url,
)
PRICES = Rule(
    (dict, Mapping),
    "a table of model = { input = USD, output = USD } per million tokens (numbers >= 0; "
    "also per_page, per_minute, max_output)",
    valid=_price_table,
    convert=_prices,
)
DAY = 86_400.0


def seconds(most: float, *, positive: bool = False) -> Rule:
    """A finite number of seconds up to ``most``."""
    if positive:
        return Rule((int, float), f"a number > 0 and <= {most:g}", gt=0, most=most, convert=float)
    return Rule((int, float), f"a number >= 0 and <= {most:g}", gte=0, most=most, convert=float)


def count(most: int, *, least: int = 0) -> Rule:
    """A whole number from ``least`` up to ``most``."""
    return Rule((int,), f"a whole number from {least} to {most:,}", gte=least, most=most)


def setting(rule: Rule, default: Any, doc: str) -> Any:
    """A declared setting: a dataclass field carrying its rule, packaged default and meaning."""
    return field(metadata={"rule": rule, "default": default, "doc": doc})


def table(cls: type) -> Any:
    """A nested table of settings (``[E.cache]``, ...)."""
    return field(metadata={"table": cls})


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """``cache.*``: the response cache of one environment."""

    enabled: bool = setting(BOOL, True, "response cache on")
    ttl_seconds: float = setting(
        seconds(10 * 365 * DAY), 300, "seconds a response is kept (0: nothing is cached)"
    )
    directory: str = setting(STR, "", "cache root (empty: the user cache directory)")
    size_limit_mb: float = setting(
        Rule((int, float), "a number > 0 and <= 1e+06", gt=0, most=1e6, convert=float),
        1024,
        "size limit of one environment's cache, in MB",
    )


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """``rate_limits.*``: the client-side budget of one environment (0 = unlimited)."""

    requests_per_minute: int = setting(count(10_000_000), 60, "requests per minute (0: no limit)")
    tokens_per_minute: int = setting(
        count(10_000_000_000), 500_000, "tokens per minute (0: no limit)"
    )


#: An amount in US dollars.
USD = Rule((int, float), "a number of US dollars >= 0", gte=0, most=1e9, convert=float)


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    """``budget.*``: what one environment may spend, enforced before each call (0 = no cap)."""

    daily_usd: float = setting(USD, 0, "USD per UTC day, reserved before each call (0: no cap)")
    monthly_usd: float = setting(USD, 0, "USD per UTC month (0: no cap)")
    per_call_usd: float = setting(USD, 0, "USD one call may cost at worst (0: no cap)")
    confirm_above_usd: float = setting(
        USD, 0, "in a notebook, ask before a call that may cost more (0: never ask)"
    )


@dataclass(frozen=True, slots=True)
class FeatureFlags:
    """``features.*``: feature flags of one environment."""

    use_new_model: bool = setting(BOOL, False, "use new_model instead of model")
    enable_function_calling: bool = setting(BOOL, True, "function calling allowed")
    max_concurrent_requests: int = setting(count(1000, least=1), 10, "in-flight calls at most")


@dataclass(frozen=True, slots=True)
class SecretsSettings:
    """``secrets.*``: how secret references are resolved (empty = the backend's own default)."""

    cache_seconds: float = setting(
        seconds(365 * DAY), 300, "seconds a fetched key is reused (0: fetch every time)"
    )
    vault_url: str = setting(STR, "", "Vault/OpenBao address (else VAULT_ADDR)")
    vault_token: SecretStr | None = setting(SECRET, "", "Vault token (else VAULT_TOKEN)")
    vault_namespace: str = setting(STR, "", "Vault namespace (else VAULT_NAMESPACE)")
    aws_region: str = setting(STR, "", "AWS region (else boto3's resolution)")
    aws_endpoint_url: str = setting(STR, "", "Secrets Manager endpoint (else boto3's)")
    gcp_emulator_host: str = setting(STR, "", "HOST:PORT of a local Secret Manager stand-in")


@dataclass(frozen=True, slots=True)
class SharedSettings:
    """``shared.*``: one budget, cache and usage ledger for many hosts, in Redis or Valkey."""

    url: SecretStr | None = setting(
        SHARED_URL, "", "Redis/Valkey URL or a secret reference (empty: nothing is shared)"
    )
    cache: bool = setting(BOOL, True, "share the response cache through it")
    rate_limits: bool = setting(BOOL, True, "share the rate budget (per environment and key)")
    on_unavailable: str = setting(
        one_of("local", "error"),
        "local",
        "Redis down: 'local' goes on with the local stores (one warning), 'error' raises",
    )
    timeout: float = setting(
        seconds(60, positive=True), 0.5, "seconds to connect to or wait for Redis"
    )
    local_share: float = setting(
        Rule((int, float), "a number > 0 and <= 1", gt=0, most=1, convert=float),
        0.5,
        "while Redis is unreachable, this host admits this share of the rate limits",
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated, read-only settings of one environment."""

    environment: str
    model: str = setting(NAME, "mistral-small-latest", "default chat model")
    new_model: str = setting(NAME, "mistral-medium-latest", "chat model while use_new_model")
    embedding_model: str = setting(NAME, "mistral-embed", "default embeddings model")
    fim_model: str = setting(NAME, "codestral-latest", "default FIM model")
    offline: bool = setting(BOOL, False, "serve from the cache only")
    server: str = setting(
        Rule(
            (str,),
            "'global', 'eu' or 'us' (or empty)",
            valid=lambda value: value in ("", *REGIONS),
        ),
        "",
        "the SDK's named region: 'global', 'eu' or 'us' (empty: global); not with server_url",
    )
    server_url: str = setting(URL, "", "base URL (empty: the SDK's default, or `server`)")
    timeout: float = setting(
        seconds(DAY, positive=True),
        30,
        "seconds per attempt (deadline); a stream: until its first event and between events",
    )
    stream_timeout: float = setting(
        seconds(DAY), 0, "seconds a whole stream may take (0: no limit beyond `timeout`)"
    )
    max_retries: int = setting(count(100), 3, "retries after the first attempt")
    retry_max_wait: float = setting(seconds(DAY), 60, "cap in seconds on one wait")
    debug: bool = setting(BOOL, False, "debug logging to stderr (keys redacted)")
    protected: bool = setting(BOOL, False, "switching into it needs confirmation")
    api_key: SecretStr | None = setting(SECRET, None, "literal key or a secret reference")
    cache: CacheSettings = table(CacheSettings)
    rate_limits: RateLimitSettings = table(RateLimitSettings)
    budget: BudgetSettings = table(BudgetSettings)
    features: FeatureFlags = table(FeatureFlags)
    secrets: SecretsSettings = table(SecretsSettings)
    shared: SharedSettings = table(SharedSettings)
    prices: Mapping[str, Mapping[str, float]] = setting(
        PRICES,
        {},
        "USD per million tokens by model: { input = ..., output = ... } over the packaged table",
    )
    fast_sdk: bool = setting(BOOL, True, "the SDK speed-up in the wrapper's own calls")
    confirm_in_notebooks: bool = setting(
        BOOL, True, "a kernel started in this protected environment waits for --confirm"
    )
    models_lead_production: bool = setting(
        BOOL,
        False,
        "this environment tries model changes before production (check notes, not warns)",
    )
    project_dir: Path | None = None
    settings_file: Path | None = None
    secrets_file: Path | None = None
    sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    unknown_keys: tuple[str, ...] = field(default=(), repr=False, compare=False)
    #: This environment's pins from ``models.lock.toml`` (model name -> :class:`Pin`).
    pins: Mapping[str, Pin] = field(default_factory=dict, repr=False, compare=False)
    lock_file: Path | None = None

    @property
    def chat_model(self) -> str:
        """The configured default chat model: ``new_model`` while ``features.use_new_model``
        is on, else ``model`` (before any pin; :attr:`model_sent` is what is sent)."""
        return self.new_model if self.features.use_new_model else self.model

    def send(self, name: str) -> str:
        """The model ID sent for ``name``: its pin in ``models.lock.toml``, else ``name``."""
        pin = self.pins.get(name)
        return pin.id if pin is not None else name

    @property
    def model_sent(self) -> str:
        """The chat model a call that names none sends (:attr:`chat_model`, pinned)."""
        return self.send(self.chat_model)

    @property
    def embedding_model_sent(self) -> str:
        """The embeddings model a call that names none sends."""
        return self.send(self.embedding_model)

    @property
    def fim_model_sent(self) -> str:
        """The FIM model a call that names none sends."""
        return self.send(self.fim_model)

    @property
    def base_url(self) -> str:
        """Where calls go: ``server_url``, else the ``server`` region's URL, else ``""``
        (the SDK's default, api.mistral.ai)."""
        return self.server_url or REGIONS.get(self.server, "")

    def reason_for(self, name: str, *, setting: str = "model") -> str:
        """Why ``send(name)`` (the default of ``setting``) differs from the value of
        ``setting``; empty when it does not."""
        parts = []
        if setting == "model" and name != self.model:
            where = self.source_of("features.use_new_model")
            parts.append(f"new_model, because features.use_new_model is on: {where}")
        pin = self.pins.get(name)
        if pin is not None and pin.id != name:
            lock = self.lock_file.name if self.lock_file is not None else "models.lock.toml"
            parts.append(f"{name} pinned to {pin.id} by {lock}")
        return "; ".join(parts)

    @property
    def model_reason(self) -> str:
        """Why :attr:`model_sent` is not ``model`` (empty when it is), with where the flag
        was set and the pin: ``new_model, because features.use_new_model is on: packaged
        defaults [development]; mistral-medium-latest pinned to mistral-medium-2508 by
        models.lock.toml``."""
        return self.reason_for(self.chat_model)

    def source_of(self, key: str) -> str:
        """Where a (dotted) key's value came from, e.g. ``settings.toml [production]``."""
        return self.sources.get(key, "not set")

    def explain(self) -> Iterator[tuple[str, str, str]]:
        """Yield ``(key, value as text, source)`` for every setting; secrets masked."""
        for key in SCHEMA:
            value: Any = self
            for part in key.split("."):
                value = getattr(value, part)
            if value is None:
                shown = "(not set)"
            elif key == "shared.url" and isinstance(value, SecretStr):
                from mistral_nbenv.secrets import url_without_password

                shown = url_without_password(value.get_secret_value())
            elif isinstance(value, SecretStr):
                shown = value.masked
            elif isinstance(value, Mapping):
                shown = json.dumps(_plain(value), sort_keys=True)
            elif isinstance(value, bool):
                shown = str(value).lower()
            else:
                shown = repr(value) if isinstance(value, str) else str(value)
            yield key, shown, self.source_of(key)


def _plain(value: Any) -> Any:
    return {k: _plain(v) for k, v in value.items()} if isinstance(value, Mapping) else value


def _declared(cls: type, prefix: str = "") -> Iterator[tuple[str, Field[Any]]]:
    for f in fields(cls):
        if "table" in f.metadata:
            yield from _declared(f.metadata["table"], f"{prefix}{f.name}.")
        elif "rule" in f.metadata:
            yield prefix + f.name, f


_FIELDS: dict[str, Field[Any]] = dict(_declared(Settings))
#: The rule of every setting, by dotted key, in declaration order.
SCHEMA: dict[str, Rule] = {key: f.metadata["rule"] for key, f in _FIELDS.items()}
SECRET_KEYS = frozenset(key for key, rule in SCHEMA.items() if rule.secret)
TABLES = tuple(f.name for f in fields(Settings) if "table" in f.metadata)
#: Settings that may be absent (no packaged default).
OPTIONAL = frozenset(key for key, f in _FIELDS.items() if f.metadata["default"] is None)


def packaged_defaults() -> dict[str, Any]:
    """The ``[default]`` layer: every declared default, by dotted key."""
    return {
        key: f.metadata["default"]
        for key, f in _FIELDS.items()
        if f.metadata["default"] is not None
    }


def reference() -> list[tuple[str, Any, str]]:
    """``(key, packaged default, meaning)`` of every setting, in declaration order."""
    return [(key, f.metadata["default"], f.metadata["doc"]) for key, f in _FIELDS.items()]


def _make(cls: type, values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if "table" in f.metadata:
            cls_ = f.metadata["table"]
            kwargs[f.name] = cls_(**_make(cls_, values, f"{prefix}{f.name}."))
        elif "rule" in f.metadata:
            kwargs[f.name] = f.metadata["rule"].convert(values.get(prefix + f.name))
    return kwargs


def build(values: Mapping[str, Any], **context: Any) -> Settings:
    """A :class:`Settings` from validated values by dotted key, plus the non-setting fields."""
    return Settings(**_make(Settings, values), **context)


assert all(
    f.default is MISSING for f in _FIELDS.values()
)  # declarations carry no dataclass default
