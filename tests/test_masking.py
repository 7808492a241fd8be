"""A key-shaped value is never shown, wherever it was put (issues 16 and 12).

A recognisable fake key is put where a new user might put it; every surface is checked
whole: the console script's stdout and stderr, ``str``/``repr`` and
``traceback.format_exception`` of the error, log lines, the magic's message, cache files.
"""

from __future__ import annotations

import logging
import os
import traceback
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mistral_nbenv import APIError, MistralEnvError, get_client, get_settings
from mistral_nbenv.errors import SecretNotCachedWarning
from mistral_nbenv.secrets import SecretStr, known, redact, shows_secret
from mistral_nbenv.secrets.logfilter import apply_debug
from mistral_nbenv.testing import Fault, MistralTestServer
from tests._browser_project import KEYS, reset_core
from tests._cli import run_cli

LEAK = "Rk7pFakeLeakTzB4nY6cJh3sDf8GaU1e"  # shaped like a Mistral key, configured nowhere
TAIL = LEAK[:-4]  # what must never appear (the last 4 may: that is the mask)


def _cli(root: Path, *args: str, **env: str) -> str:
    done = run_cli(*args, cwd=root, env=env, module=True)
    return done.stdout + done.stderr


def _everything(exc: BaseException) -> str:
    return "".join([str(exc), repr(exc), *traceback.format_exception(exc)])


def _settings_and_client(env: str) -> None:
    get_settings(env)
    get_client(env).chat.complete(messages=[{"role": "user", "content": "x"}])


def _project(root: Path, body: str) -> Path:
    root.mkdir(exist_ok=True)
    (root / "settings.toml").write_text(
        '[default]\nserver_url = "http://127.0.0.1:9"\n'
        f'[development]\napi_key = "{KEYS["development"]}"\n' + body,
        encoding="utf-8",
    )
    return root


@pytest.mark.parametrize(
    "body",
    [
        f'[production]\napi_key = ["{LEAK}"]\n',
        f'[production.api_key]\nvalue = "{LEAK}"\n',
        f'[default.secrets]\nvault_token = ["{LEAK}"]\n',
        f'[production]\napi_key = "env:{LEAK}"\n',
        f'[production]\napi_key = "vault:{LEAK}"\n',
        f'[production]\ntimeout = "{LEAK}"\n',
        f'[production]\nmodel = "{LEAK} "\nserver_url = "http://x:{LEAK}@h"\n',
    ],
)
def test_a_key_in_the_wrong_place_is_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str
) -> None:
    root = _project(tmp_path / "proj", body)
    shown = (
        _cli(root, "list")
        + _cli(root, "check", "--all")
        + _cli(root, "status", "--env", "production")
    )
    assert TAIL not in shown
    monkeypatch.chdir(root)
    reset_core()
    with pytest.raises(MistralEnvError) as caught:
        _settings_and_client("production")
    assert TAIL not in _everything(caught.value)


def test_a_key_in_an_environment_variable_is_never_printed(tmp_path: Path) -> None:
    root = _project(tmp_path / "proj", "")
    shown = _cli(root, "check", MISTRAL_NBENV_TIMEOUT=LEAK) + _cli(root, "status", MISTRAL_ENV=LEAK)
    assert "MISTRAL_ENV" in shown
    assert TAIL not in shown


def test_the_magic_never_shows_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell

    from tests.test_magic import ReRaisingShell

    root = _project(
        tmp_path / "proj", f'[development.rate_limits]\nrequests_per_minute = "{LEAK}"\n'
    )
    monkeypatch.chdir(root)
    reset_core()
    InteractiveShell.clear_instance()
    shell = ReRaisingShell()
    try:
        shell.run_cell("%load_ext mistral_nbenv")
        with pytest.raises(UsageError) as caught:
            shell.run_cell("%%mistral\nhello")
        assert "requests_per_minute" in str(caught.value)
        assert TAIL not in _everything(caught.value)
    finally:
        shell.run_cell("%unload_ext mistral_nbenv")
        InteractiveShell.clear_instance()


def test_the_log_filter_masks_exceptions_and_stacks(capsys: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("mistral_nbenv.test")
    apply_debug(True)
    try:
        log.warning("x", exc_info=ValueError(f"bad {LEAK}"))
        try:
            raise RuntimeError(LEAK)
        except RuntimeError:
            log.exception("failed with %s", LEAK)
        log.warning("where", stack_info=True, extra={"k": LEAK})
    finally:
        apply_debug(False)
    err = capsys.readouterr().err
    assert "ValueError: bad …" in err
    assert "RuntimeError: …" in err
    assert TAIL not in err


@pytest.fixture
def echo(lproject: MistralTestServer) -> MistralTestServer:
    """The loopback server answering with the caller's bearer token (a hostile echo)."""
    lproject.responder = lambda request: f"your key is {request.api_key}"
    return lproject


def test_a_key_echoed_in_an_answer_is_never_cached(echo: MistralTestServer) -> None:
    from mistral_nbenv import use_environment

    use_environment("staging")  # the cache is on in staging
    client = get_client()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client.chat.complete(messages=[{"role": "user", "content": "a"}])
        list(client.chat.stream(messages=[{"role": "user", "content": "b"}]))
    assert [w.category for w in caught] == [SecretNotCachedWarning, SecretNotCachedWarning]
    assert KEYS["staging"][:-4] not in str(caught[0].message)
    client.close()
    key = KEYS["staging"].encode()
    files = [p for p in Path(client.settings.cache.directory).rglob("*") if p.is_file()]
    assert files  # the cache exists; none of its files holds the key
    assert not [p for p in files if key in p.read_bytes()]
    with pytest.warns(SecretNotCachedWarning):
        client.chat.complete(messages=[{"role": "user", "content": "a"}])
    assert echo.count("/v1/chat/completions") == 3  # asked again: it was not stored


def test_a_key_echoed_in_an_error_header_or_body_is_masked(lproject: MistralTestServer) -> None:
    key = KEYS["development"]
    lproject.enqueue(Fault.status(400, headers={"X-Echo": key}, body={"message": f"bad key {key}"}))
    with pytest.raises(APIError) as caught:
        get_client().chat.complete(messages=[{"role": "user", "content": "x"}], cache=False)
    shown = _everything(caught.value) + repr(getattr(caught.value.__cause__, "headers", ""))
    assert "HTTP 400" in shown
    assert key[:-4] not in shown


def test_a_key_in_a_malformed_200_body_is_masked(lproject: MistralTestServer) -> None:
    key = KEYS["development"]
    lproject.enqueue(Fault.malformed({"unexpected": key, "choices": [{"index": key}]}))
    with pytest.raises(APIError) as caught:
        get_client().chat.complete(messages=[{"role": "user", "content": "y"}], cache=False)
    assert "not a valid response" in str(caught.value)
    assert key[:-4] not in _everything(caught.value)


def _ipython_traceback(exc: BaseException) -> Any:
    from IPython.core.ultratb import FormattedTB

    return FormattedTB().text(type(exc), exc, exc.__traceback__)


def test_ipython_shows_no_key_in_a_chained_error(lproject: MistralTestServer) -> None:
    key = KEYS["development"]
    lproject.enqueue(Fault.malformed({"unexpected": key}))
    with pytest.raises(APIError) as caught:
        get_client().chat.complete(messages=[{"role": "user", "content": "z"}], cache=False)
    assert key[:-4] not in _ipython_traceback(caught.value)


def test_the_widget_never_shows_it(lproject: MistralTestServer) -> None:
    from mistral_nbenv.ui.widget import EnvironmentSwitcher
    from tests.test_widget import _state

    settings = Path(os.environ["MISTRAL_NBENV_SETTINGS"])
    text = settings.read_text().replace(
        f'[qa]\napi_key = "{KEYS["qa"]}"\n', f'[qa]\napi_key = "{KEYS["qa"]}"\ntimeout = "{LEAK}"\n'
    )
    settings.write_text(text)
    reset_core()
    switcher = EnvironmentSwitcher()
    try:
        switcher.picker.value = "qa"
        assert "`timeout`" in switcher.error.value
        assert TAIL not in _state(switcher)
    finally:
        switcher.close()


_SHORT_SECRET = "sk\u00e9\n12"  # under 8 characters: never remembered, checked as given
# remembered by this test only (LEAK must stay unknown: the tests above catch it by its shape)
_REMEMBERED = "ShowsSecretFakeKey9x8w7v6u5t4s3r"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                _REMEMBERED,
                _REMEMBERED[:-1],
                repr(_SHORT_SECRET)[1:-1],  # the short secret as a repr shows it
                _SHORT_SECRET[:-1],
                "\u2026",
                "x",
            ]
        )
        | st.text(max_size=6),
        max_size=6,
    ),
    st.sampled_from(["", _SHORT_SECRET, _REMEMBERED]),
)
def test_shows_secret_is_true_exactly_when_redact_would_change_the_text(
    pieces: list[str], secret: str
) -> None:
    """The check before an answer is cached (``shows_secret``) agrees with the masking."""
    SecretStr(_REMEMBERED)  # known to the process from now on, in all its forms
    text = "".join(pieces)
    assert shows_secret(text, secret) == (redact(text, [secret, *known()]) != text)
    if _REMEMBERED in text:
        assert shows_secret(text)  # a known secret, whatever key the caller passes
