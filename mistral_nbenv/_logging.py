"""The ``debug`` setting: debug logging of ``mistral_nbenv`` to stderr, with keys redacted.

Debug logging follows the environment a client is made for: a client of an environment with
``debug = true`` turns it on for the process, one of an environment without turns it off
again. It only ever touches the ``mistral_nbenv`` logger and a handler of its own, so an
application's own logging configuration is left alone. Every record that handler writes goes
through :class:`RedactSecrets` first: no key can reach a log line even by mistake.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterable

from .secrets import mask, redact

__all__ = ["HANDLER_NAME", "RedactSecrets", "apply_debug"]

HANDLER_NAME = "mistral_nbenv.debug"
LOGGER_NAME = "mistral_nbenv"
# The shape of a Mistral key: 32 letters and digits, no prefix.
_KEY_SHAPE = re.compile(r"\b[A-Za-z0-9]{32}\b")


def _mask_match(match: re.Match[str]) -> str:
    return mask(match.group(0))


KnownSecrets = Callable[[], Iterable[str]]


def _none() -> Iterable[str]:
    return ()


class RedactSecrets(logging.Filter):
    """Replace every known secret, and anything shaped like a Mistral key, by its masked form.

    ``known`` returns the secrets to look for (the workspace's resolved keys).
    """

    def __init__(self, known: KnownSecrets = _none) -> None:
        super().__init__()
        self.known = known

    def filter(self, record: logging.LogRecord) -> bool:
        """Render the message once, redacted, so formatting cannot reintroduce a secret."""
        message = redact(record.getMessage(), self.known())
        record.msg = _KEY_SHAPE.sub(_mask_match, message)
        record.args = None
        return True


def _handler(logger: logging.Logger) -> logging.Handler | None:
    for handler in logger.handlers:
        if handler.get_name() == HANDLER_NAME:
            return handler
    return None


def apply_debug(enabled: bool, known: KnownSecrets = _none) -> None:
    """Turn debug logging of ``mistral_nbenv`` to stderr on or off.

    ``known`` returns the secrets the handler's filter redacts besides key-shaped tokens.
    """
    logger = logging.getLogger(LOGGER_NAME)
    handler = _handler(logger)
    if enabled and handler is not None:
        for existing in handler.filters:
            if isinstance(existing, RedactSecrets):
                existing.known = known
    if enabled and handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        handler.addFilter(RedactSecrets(known))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    elif not enabled and handler is not None:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
