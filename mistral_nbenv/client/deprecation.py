"""The API's model deprecation notice, said once per model per process.

Mistral marks an answer from a model it will retire with ``x-model-deprecation-timestamp``.
The SDK only logs it, on every response; here it becomes one
:class:`~mistral_nbenv.errors.ModelDeprecationWarning` per model per process (a notebook
shows it as one line, see :mod:`mistral_nbenv.ui.magic`), naming the environment, the date,
and what to do.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from mistral_nbenv._forksafe import Lock
from mistral_nbenv.errors import ModelDeprecationWarning

__all__ = ["HEADER", "note", "quiet_sdk_logger"]

HEADER = "x-model-deprecation-timestamp"
#: The SDK's hook that logs the same header on every response.
SDK_LOGGER = "mistralai.client._hooks.deprecation_warning"

_warned: set[str] = set()
_lock = Lock()


def note(responses: list[Any], sent: Any, result: Any, environment: str) -> None:
    """Warn once if the last response says its model is deprecated."""
    if not responses:
        return
    when = responses[-1].headers.get(HEADER)
    if not when:
        return
    answered = getattr(result, "model", None)
    model = answered if isinstance(answered, str) and answered else str(sent or "?")
    with _lock:
        if model in _warned:
            return
        _warned.add(model)
    also = f" (sent as {sent})" if isinstance(sent, str) and sent != model else ""
    warnings.warn(
        f"[{environment}] the API says model {model}{also} is deprecated and will be retired "
        f"on {when}. Choose its replacement in the settings (`mistral-nbenv models list` shows "
        "each model's replacement), test it, then `mistral-nbenv models lock`.",
        ModelDeprecationWarning,
        stacklevel=2,
    )


class _SaidByUs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False  # this package says it, once per model: not on every response


def quiet_sdk_logger() -> None:
    """Drop the SDK's per-response deprecation log line (this module says it once)."""
    logger = logging.getLogger(SDK_LOGGER)
    if not any(isinstance(f, _SaidByUs) for f in logger.filters):
        logger.addFilter(_SaidByUs())
