"""The ``debug`` setting: debug logging of ``mistral_nbenv`` to stderr, with keys redacted.

Debug logging follows the environment a client is made for: a client of an environment with
``debug = true`` turns it on for the process, one of an environment without turns it off
again. It only ever touches the ``mistral_nbenv`` logger and a handler of its own, so an
application's own logging configuration is left alone. Every record that handler writes goes
through :class:`RedactSecrets` first: no key can reach a log line even by mistake.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable

from mistral_nbenv.secrets import scrub

__all__ = ["HANDLER_NAME", "RedactSecrets", "apply_debug"]

HANDLER_NAME = "mistral_nbenv.debug"
LOGGER_NAME = "mistral_nbenv"
KnownSecrets = Callable[[], Iterable[str]]


def _none() -> Iterable[str]:
    return ()


class RedactSecrets(logging.Filter):
    """Mask every known secret and credential shape in a record: message, exception, stack.

    ``known`` returns secrets to look for besides those :func:`~mistral_nbenv.secrets.scrub`
    already knows (the workspace's resolved keys).  An exception is formatted here, masked,
    and kept as ``exc_text`` (``exc_info`` is dropped, so no formatter renders it again).
    """

    def __init__(self, known: KnownSecrets = _none) -> None:
        super().__init__()
        self.known = known

    def filter(self, record: logging.LogRecord) -> bool:
        """Render the message once, redacted, so formatting cannot reintroduce a secret."""
        extra = list(self.known())
        record.msg = scrub(record.getMessage(), extra)
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, extra)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, extra)
        return True


def _handler(logger: logging.Logger) -> logging.Handler | None:
    for handler in logger.handlers:
        if handler.get_name() == HANDLER_NAME:
            return handler
    return None


def apply_debug(enabled: bool, known: KnownSecrets = _none, *, notebook: bool = False) -> None:
    """Turn debug logging of ``mistral_nbenv`` to stderr on or off.

    ``known`` returns the secrets the handler's filter redacts besides key-shaped tokens.
    In a notebook (``notebook``) the records go to the kernel process's own stderr (the
    Jupyter server's log), never into a cell's output.
    """
    logger = logging.getLogger(LOGGER_NAME)
    handler = _handler(logger)
    stream = (sys.__stderr__ or sys.stderr) if notebook else sys.stderr
    if enabled and handler is not None:
        for existing in handler.filters:
            if isinstance(existing, RedactSecrets):
                existing.known = known
        if isinstance(handler, logging.StreamHandler) and handler.stream is not stream:
            handler.setStream(stream)
    if enabled and handler is None:
        handler = logging.StreamHandler(stream)
        handler.set_name(HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        handler.addFilter(RedactSecrets(known))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    elif not enabled and handler is not None:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
