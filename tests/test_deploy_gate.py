"""Settings that pass ``check`` can run: the deploy gate refuses what would fail later.

Each case is the real console script (``python -m mistral_nbenv check``) on a real project
directory, then the API a script would use against the loopback server: the same setting
that ``check`` rejects must never reach the network.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mistral_nbenv import APIConnectionError, ConfigurationError, get_client
from mistral_nbenv.client.translate import scrub_secret
from mistral_nbenv.secrets import forms, redact
from mistral_nbenv.testing import MistralTestServer
from tests._browser_project import KEYS, reset_core
from tests._cli import run_cli

DEV_KEY = KEYS["development"]


def _check(cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("check", "--env", "development", cwd=cwd, module=True)


def _write(root: Path, body: str, *, url: str = "http://127.0.0.1:9") -> Path:
    root.mkdir(exist_ok=True)
    text = f'[development]\nserver_url = "{url}"\n' + body
    (root / "settings.toml").write_text(text, encoding="utf-8")
    return root


def _assert_refused(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in output, (fragment, output)
    assert DEV_KEY not in output


def test_a_latin1_settings_file_is_one_clear_line(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "settings.toml").write_bytes(
        b'[development]\n# caf\xe9 settings\nmodel = "mistral-small-latest"\n'
    )
    done = _check(root)
    _assert_refused(done, "settings.toml", "not UTF-8", "0xE9", "line 2")


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ("timeout = inf\n", ["`timeout`", "inf"]),
        ("timeout = 1e308\n", ["`timeout`"]),
        ("[development.cache]\nsize_limit_mb = inf\n", ["`cache.size_limit_mb`"]),
        ("[development.cache]\nsize_limit_mb = 1e300\n", ["`cache.size_limit_mb`"]),
        ('model = "   "\n', ["`model`", "non-blank"]),
    ],
)
def test_numbers_and_models_that_cannot_run(
    tmp_path: Path, body: str, fragments: list[str]
) -> None:
    _assert_refused(_check(_write(tmp_path / "proj", body)), *fragments)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://", "has no host"),
        ("http://exa mple.com", "space or control character at position 11"),
        ("http://a\\u0000b.com", "control character at position 9"),
        ("http://example.com:99999", "invalid port"),
        ("ftp://example.com", "http:// or https://"),
    ],
)
def test_urls_httpx_would_refuse(tmp_path: Path, url: str, fragment: str) -> None:
    root = _write(tmp_path / "proj", f'api_key = "{DEV_KEY}"\n', url=url)
    _assert_refused(_check(root), "`server_url`", fragment, "settings.toml [development]")


@pytest.mark.parametrize(
    ("inside", "name"),
    [
        ("\u200b", "ZERO WIDTH SPACE"),
        ("\u00a0", "NO-BREAK SPACE"),
        (" ", "a space"),
        ("\\t", "a control character"),
    ],
)
def test_keys_a_header_cannot_carry(tmp_path: Path, inside: str, name: str) -> None:
    key = DEV_KEY[:10] + inside + DEV_KEY[10:]
    root = _write(tmp_path / "proj", "")
    (root / ".secrets.toml").write_text(f'[development]\napi_key = "{key}"\n', encoding="utf-8")
    done = _check(root)
    _assert_refused(done, name, "position 11 of 33", "paste it again")
    assert DEV_KEY[:10] not in done.stdout + done.stderr  # no part of the key either


def test_a_key_with_a_newline_never_reaches_the_network(
    lproject: MistralTestServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = _write(tmp_path / "nokey", "", url=lproject.url)  # the key from the variable only
    monkeypatch.setenv("MISTRAL_NBENV_SETTINGS", str(root / "settings.toml"))
    monkeypatch.setenv("MISTRAL_API_KEY_DEV", DEV_KEY[:16] + "\n" + DEV_KEY[16:])
    reset_core()
    with pytest.raises(ConfigurationError) as caught:
        get_client().chat.complete(messages=[{"role": "user", "content": "hi"}])
    assert "U+000A" in str(caught.value)
    assert "position 17" in str(caught.value)
    assert lproject.count() == 0


def test_a_blank_mistral_env_is_refused(tmp_path: Path) -> None:
    root = _write(tmp_path / "proj", f'api_key = "{DEV_KEY}"\n')
    done = run_cli("check", cwd=root, env={"MISTRAL_ENV": "   "}, module=True)
    _assert_refused(done, "MISTRAL_ENV", "blank")


def test_ttl_zero_means_no_caching(lproject: MistralTestServer, tmp_path: Path) -> None:
    settings = Path(os.environ["MISTRAL_NBENV_SETTINGS"])
    text = settings.read_text().replace(
        "[staging.rate_limits]", "[staging.cache]\nttl_seconds = 0\n[staging.rate_limits]"
    )
    settings.write_text(text)
    reset_core()
    from mistral_nbenv import use_environment

    use_environment("staging")
    client = get_client()
    hello = [{"role": "user", "content": "ttl zero"}]
    for option in (None, True):  # not even an explicit cache=True stores anything
        client.chat.complete(messages=hello, cache=option)
        client.chat.complete(messages=hello, cache=option)
    assert lproject.count("/v1/chat/completions") == 4
    assert client.stats.hits == 0


def test_a_request_this_machine_cannot_send_is_not_retried(
    lproject: MistralTestServer,
) -> None:
    with pytest.raises(APIConnectionError) as caught:
        get_client().chat.complete(
            messages=[{"role": "user", "content": "hi"}],
            http_headers={"X-Trace": "a\nb"},
            cache=False,
        )
    assert caught.value.attempts == 1
    assert "could not be sent" in str(caught.value)
    assert "not retried" in str(caught.value)
    assert lproject.count() == 0


def test_the_scrub_masks_every_form_of_a_key() -> None:
    import httpx2

    key = DEV_KEY[:16] + "\n\u200b" + DEV_KEY[16:]
    header = b"Bearer " + key.encode()
    exc = httpx2.LocalProtocolError(f"Illegal header value {header!r}")
    try:
        raise exc from UnicodeEncodeError("ascii", "Bearer " + key, 24, 25, "bad")
    except httpx2.LocalProtocolError as raised:
        scrub_secret(raised, key)
        cause = raised.__cause__
    shown = [str(exc), repr(exc), str(cause), repr(cause), str(getattr(cause, "object", ""))]
    for form in forms(key):
        assert all(form not in text for text in shown), form
    assert DEV_KEY[16:] not in "".join(shown)
    assert redact(f"{key!r} {key.encode()!r}", [key]).count("…") == 2


def test_only_what_this_machine_cannot_send_counts_as_local() -> None:
    import httpx2

    from mistral_nbenv.policies.retry import is_local, is_retryable

    header = UnicodeEncodeError("ascii", "Bearer x\u200b", 8, 9, "ordinal not in range")
    body = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    assert is_local(header)
    assert is_local(httpx2.LocalProtocolError("Illegal header value"))
    assert not is_local(body)  # an answer that does not decode is not our request's fault
    assert not is_retryable(httpx2.LocalProtocolError("Illegal header value"))
    assert is_retryable(httpx2.ReadTimeout("slow"))
