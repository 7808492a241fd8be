"""The ``debug`` setting's logging: on and off per environment, keys never in a log line."""

from __future__ import annotations

import logging

import pytest

from mistral_nbenv.secrets.logfilter import HANDLER_NAME, apply_debug
from mistral_nbenv.workspace import get_api_key
from tests.conftest import fake_key

KEY = fake_key("logging-dev")


@pytest.fixture(autouse=True)
def _no_debug_handler() -> object:
    yield
    apply_debug(False)


def _ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger("mistral_nbenv").handlers if h.get_name() == HANDLER_NAME]


def test_apply_debug_adds_one_handler_and_removes_it() -> None:
    apply_debug(True)
    apply_debug(True)
    assert len(_ours()) == 1
    assert logging.getLogger("mistral_nbenv").level == logging.DEBUG
    apply_debug(False)
    assert _ours() == []
    assert logging.getLogger("mistral_nbenv").level == logging.NOTSET


def test_debug_lines_never_carry_a_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MISTRAL_API_KEY_DEV", KEY)
    get_api_key("development")
    apply_debug(True)
    log = logging.getLogger("mistral_nbenv.client")
    log.debug("sending with key %s", KEY)
    log.debug("header Authorization: Bearer %s", "Zz" * 16)  # any key-shaped token
    err = capsys.readouterr().err
    assert KEY not in err
    assert "Zz" * 16 not in err
    assert f"sending with key …{KEY[-4:]}" in err
    assert "DEBUG" in err


def test_without_debug_nothing_is_written(capsys: pytest.CaptureFixture[str]) -> None:
    apply_debug(False)
    logging.getLogger("mistral_nbenv.client").debug("quiet")
    assert "quiet" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("secret", "shown"),
    [("Ab3dEf7hIj", "…"), ("Ab3dEf7hIjKl", "…IjKl"), (KEY, f"…{KEY[-4:]}")],
)
def test_one_mask_in_logs_errors_and_the_scanner(secret: str, shown: str) -> None:
    """The same secret is shown the same way by the log filter, API errors and the scanner."""
    from mistral_nbenv.client import translate
    from mistral_nbenv.secrets import scan
    from mistral_nbenv.secrets.logfilter import RedactSecrets

    record = logging.LogRecord("mistral_nbenv", logging.INFO, __file__, 1, "k=%s", (secret,), None)
    RedactSecrets(lambda: [secret]).filter(record)
    exc = ValueError(f"server said k={secret}")
    translate.scrub_secret(exc, secret)
    assert record.getMessage() == f"k={shown}"
    assert str(exc) == f"server said k={shown}"
    assert scan.mask(secret) == shown
