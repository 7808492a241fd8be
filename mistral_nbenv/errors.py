"""The one exception hierarchy of mistral_nbenv.

Every error this package raises on purpose is a ``MistralEnvError``::

    MistralEnvError
    ├── ConfigurationError            settings, environment names, secret references
    │   └── MissingAPIKeyError        no key for an environment (lists every place looked)
    ├── SecretBackendError            Vault/OpenBao, AWS or GCP could not give the key
    ├── EnvironmentGuardError         an operation ran in the wrong environment
    │   └── ProductionConfirmationRequired
    ├── APIError                      the Mistral API answered with an error (status_code, attempts)
    │   ├── RateLimitError            429 / Retry-After beyond the cap (retry_after)
    │   └── APIConnectionError        no response at all
    │       └── APITimeoutError       the request timed out
    ├── BudgetExceededError           a spending cap (budget.*) would be crossed: nothing sent
    ├── ConcurrencyLimitError         no concurrency slot within timeout (also a TimeoutError)
    ├── StreamExpiredError            an unread stream gave its slot away and was closed
    ├── CacheMissError                offline mode and the answer is not cached
    ├── CacheUnavailableError         the cache cannot be read or changed (CLI/magic/widget)
    └── SharedStoreUnavailableError   [E.shared] Redis is down and on_unavailable = "error"

Messages say what happened, in which environment, and what to do.  They never
contain a full API key: keys travel as :class:`mistral_nbenv.secrets.SecretStr`.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "BudgetExceededError",
    "CacheMissError",
    "CacheUnavailableError",
    "ConcurrencyLimitError",
    "ConfigurationError",
    "EnvironmentGuardError",
    "MissingAPIKeyError",
    "MistralEnvError",
    "MistralEnvWarning",
    "ModelDeprecationWarning",
    "ProductionConfirmationRequired",
    "RateLimitError",
    "SecretBackendError",
    "SecretNotCachedWarning",
    "SharedStoreUnavailableError",
    "StreamExpiredError",
]


def _unchanged(text: str) -> str:
    return text


_scrub: Callable[[str], str] = _unchanged


def set_message_scrubber(scrub: Callable[[str], str]) -> None:
    """Install the mask every message goes through (``mistral_nbenv.secrets`` does, at import)."""
    global _scrub
    _scrub = scrub


class MistralEnvError(Exception):
    """Base class of every error raised by mistral_nbenv.

    Its message is scrubbed when the error is made: known secrets and anything shaped like
    a credential are masked, whichever code quoted a user's value.
    """

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str):
            args = (_scrub(args[0]), *args[1:])
        super().__init__(*args)


class ConfigurationError(MistralEnvError, ValueError):
    """A setting, environment name or secret reference is invalid."""


class MissingAPIKeyError(ConfigurationError):
    """No API key could be found for an environment."""

    def __init__(self, message: str, *, environment: str = "", looked: tuple[str, ...] = ()):
        super().__init__(message)
        self.environment = environment
        self.looked = looked


class SecretBackendError(MistralEnvError):
    """A secret store (Vault/OpenBao, AWS, GCP) could not provide a key."""

    def __init__(
        self, message: str, *, environment: str = "", backend: str = "", reference: str = ""
    ):
        super().__init__(message)
        self.environment = environment
        self.backend = backend
        self.reference = reference


class EnvironmentGuardError(MistralEnvError):
    """An operation was attempted in an environment it is not allowed in."""


class ProductionConfirmationRequired(EnvironmentGuardError):
    """Switching into a protected environment needs ``confirm=True``."""

    def __init__(self, message: str, *, environment: str = ""):
        super().__init__(message)
        self.environment = environment


class APIError(MistralEnvError):
    """The Mistral API call failed; ``status_code`` is None when there was no response."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        attempts: int = 1,
        environment: str = "",
        body: str | None = None,
    ):
        super().__init__(message)
        self.status_code = status_code
        self.attempts = attempts
        self.environment = environment
        self.body = body


class RateLimitError(APIError):
    """HTTP 429 that retries could not absorb; ``retry_after`` is the server's wish in seconds.

    ``limit`` says which: ``"minute"`` (the per-minute limits: retried, then this), or
    ``"monthly"`` (the key's monthly limit: never retried).
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        limit: str = "minute",
        **kwargs: object,
    ):
        kwargs.setdefault("status_code", 429)
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after
        self.limit = limit


class BudgetExceededError(MistralEnvError):
    """A call would cross one of its environment's spending caps, or was not confirmed
    (``budget.confirm_above_usd``): nothing was sent.

    ``cap`` is the setting (``budget.daily_usd`` ...), ``limit`` its value, ``spent`` what
    the period has spent (reservations of calls in flight included), ``needed`` the call's
    worst-case cost and ``resets`` when the period ends (ISO 8601, UTC; empty for a
    per-call cap or a refusal).
    """

    def __init__(
        self,
        message: str,
        *,
        environment: str = "",
        cap: str = "",
        limit: float = 0.0,
        spent: float = 0.0,
        needed: float = 0.0,
        resets: str = "",
    ):
        super().__init__(message)
        self.environment = environment
        self.cap = cap
        self.limit = limit
        self.spent = spent
        self.needed = needed
        self.resets = resets


class APIConnectionError(APIError):
    """No response was received (connection refused, dropped, DNS, ...)."""


class APITimeoutError(APIConnectionError):
    """The request did not complete within ``timeout`` seconds."""


class ConcurrencyLimitError(MistralEnvError, TimeoutError):
    """No concurrency slot became free within the call's ``timeout``.

    ``limit`` is ``features.max_concurrent_requests``; ``streams`` how many slots live
    streams held.
    """

    def __init__(self, message: str, *, limit: int, streams: int, environment: str = ""):
        super().__init__(message)
        self.limit = limit
        self.streams = streams
        self.environment = environment


class StreamExpiredError(MistralEnvError):
    """A stream left unread past its ``timeout`` gave its slot to another call and closed."""


class MistralEnvWarning(UserWarning):
    """Every warning this package issues (a notebook shows each as one line)."""


class SecretNotCachedWarning(MistralEnvWarning):
    """An answer held a secret (a server echoing the key), so it was not cached."""


class ModelDeprecationWarning(MistralEnvWarning):
    """The API said a model it answered with is deprecated (``x-model-deprecation-timestamp``):
    issued once per model per process, naming the date and what to do."""


class CacheMissError(MistralEnvError):
    """Offline mode is on and the response is not in the cache."""


class CacheUnavailableError(MistralEnvError):
    """An explicit cache action (stats, clear) could not read or change the cache.

    Calls never raise it: for them an unusable cache is a miss with one warning.
    """


class SharedStoreUnavailableError(MistralEnvError):
    """The shared store (``[E.shared] url``, Redis) cannot be reached and
    ``on_unavailable = "error"``. ``url`` is shown without its password."""

    def __init__(self, message: str, *, environment: str = "", url: str = "") -> None:
        super().__init__(message)
        self.environment = environment
        self.url = url
