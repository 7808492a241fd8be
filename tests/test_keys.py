"""API key resolution, .env files, masking, and isolation between environments."""

from __future__ import annotations

import copy
import pickle

import pytest

from mistral_nbenv import ConfigurationError, MissingAPIKeyError, SecretBackendError
from mistral_nbenv.secrets import SecretStr, mask, scrub
from mistral_nbenv.workspace import get_api_key
from tests.conftest import ProjectFactory, fake_key

DEV, STG, PROD = fake_key("dev"), fake_key("staging"), fake_key("prod")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ("development", "MISTRAL_API_KEY_DEV"),
        ("staging", "MISTRAL_API_KEY_STAGING"),
        ("production", "MISTRAL_API_KEY_PROD"),
        ("development", "MISTRAL_API_KEY"),
    ],
)
def test_fallback_variables(monkeypatch: pytest.MonkeyPatch, env: str, variable: str) -> None:
    monkeypatch.setenv(variable, DEV)
    key = get_api_key(env)
    assert key.value.get_secret_value() == DEV
    assert key.source == f"{variable} from process environment"


@pytest.mark.parametrize("env", ["staging", "production"])
def test_generic_variable_is_for_development_only(
    monkeypatch: pytest.MonkeyPatch, env: str
) -> None:
    monkeypatch.setenv("MISTRAL_API_KEY", DEV)
    with pytest.raises(MissingAPIKeyError):
        get_api_key(env)


def test_specific_dev_variable_beats_generic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISTRAL_API_KEY", STG)
    monkeypatch.setenv("MISTRAL_API_KEY_DEV", DEV)
    assert get_api_key("development").value.get_secret_value() == DEV


def test_extra_environment_variable(
    project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project("[qa]\nmodel = 'q'\n")
    monkeypatch.setenv("MISTRAL_API_KEY_QA", STG)
    assert get_api_key("qa").source == "MISTRAL_API_KEY_QA from process environment"


def test_literal_and_env_reference_from_settings(
    project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project(
        None,
        f"[development]\napi_key = '{DEV}'\n[staging]\napi_key = 'env:MY_STAGING_KEY'\n",
    )
    monkeypatch.setenv("MY_STAGING_KEY", STG)
    monkeypatch.setenv("MISTRAL_API_KEY_DEV", PROD)  # configured api_key wins over fallback
    dev = get_api_key("development")
    assert dev.value.get_secret_value() == DEV
    assert dev.source == ".secrets.toml [development] (literal)"
    stg = get_api_key("staging")
    assert stg.value.get_secret_value() == STG
    assert stg.source == "MY_STAGING_KEY from process environment"


def test_env_reference_to_a_missing_variable(project: ProjectFactory) -> None:
    project(None, "[staging]\napi_key = 'env:NOT_SET_ANYWHERE'\n")
    with pytest.raises(MissingAPIKeyError) as info:
        get_api_key("staging")
    assert "NOT_SET_ANYWHERE" in str(info.value)
    assert ".secrets.toml [staging]" in str(info.value)


def test_dotenv_local_is_read_but_never_overrides_the_process(
    project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project(
        "",
        files={
            ".env.local": f"MISTRAL_API_KEY_DEV={DEV}\nMISTRAL_API_KEY_STAGING={STG}\n",
            ".env": f"MISTRAL_API_KEY_STAGING={PROD}\nMISTRAL_API_KEY_PROD={PROD}\n",
        },
    )
    monkeypatch.setenv("MISTRAL_API_KEY_STAGING", fake_key("process"))
    dev = get_api_key("development")
    assert dev.value.get_secret_value() == DEV
    assert dev.source == f"MISTRAL_API_KEY_DEV from {root / '.env.local'}"
    # the process environment wins over both files; .env.local wins over .env
    assert get_api_key("staging").value.get_secret_value() == fake_key("process")
    assert get_api_key("production").source == f"MISTRAL_API_KEY_PROD from {root / '.env'}"
    import os

    assert "MISTRAL_API_KEY_DEV" not in os.environ  # read, not loaded into the process


def test_missing_key_names_environment_and_every_place(project: ProjectFactory) -> None:
    root = project("[production]\ntimeout = 61\n")
    with pytest.raises(MissingAPIKeyError) as info:
        get_api_key("production")
    message = str(info.value)
    first, *places = message.splitlines()
    # one short line that says what to set and where; the places looked on the next lines
    assert first == (
        "No API key for environment 'production': set MISTRAL_API_KEY_PROD, or api_key "
        "under [production] in .secrets.toml."
    )
    assert places[0] == "Looked in:"
    assert "  - api_key under [production] or [default] in settings.toml" in places
    assert "  - MISTRAL_API_KEY_PROD in the process environment, .env.local, .env" in places
    assert any("MISTRAL_SA_TOKEN_PATH" in p for p in places)  # the SDK's token file
    assert str(root) not in message  # the project is the working directory: relative paths
    assert info.value.environment == "production"
    assert len(info.value.looked) == 3


def test_missing_development_key_mentions_the_generic_variable() -> None:
    with pytest.raises(MissingAPIKeyError) as info:
        get_api_key("development")
    assert "MISTRAL_API_KEY_DEV" in str(info.value)
    assert "MISTRAL_API_KEY in" in str(info.value)


def test_same_key_in_two_environments_is_refused(
    project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project(None, f"[production]\napi_key = '{PROD}'\n")
    monkeypatch.setenv("MISTRAL_API_KEY_DEV", PROD)  # the classic leak
    with pytest.raises(ConfigurationError) as info:
        get_api_key("development")
    message = str(info.value)
    assert "'development'" in message
    assert "'production'" in message
    assert PROD not in message
    assert mask(PROD) in message


def test_duplicate_against_a_key_resolved_earlier_in_the_process(
    project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project(None, "[staging]\napi_key = 'env:STAGING_KEY_VAR'\n")
    monkeypatch.setenv("STAGING_KEY_VAR", STG)
    get_api_key("staging")
    monkeypatch.delenv("STAGING_KEY_VAR")
    monkeypatch.setenv("MISTRAL_API_KEY_DEV", STG)
    with pytest.raises(ConfigurationError, match="same"):
        get_api_key("development")


def test_secret_store_reference_without_the_extra(
    project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    project(None, "[staging]\napi_key = 'vault:secret/mistral/staging#api_key'\n")
    monkeypatch.setitem(sys.modules, "hvac", None)
    with pytest.raises(SecretBackendError) as info:
        get_api_key("staging")
    assert 'pip install "mistral-nbenv[vault]"' in str(info.value)
    assert "staging" in str(info.value)


@pytest.mark.parametrize("value", [PROD, "short", "exactly12chr"])
def test_secret_str_never_shows_more_than_four_characters(value: str) -> None:
    secret = SecretStr(value)
    for rendering in (repr(secret), str(secret), f"{secret}", f"{secret:>40}", str([secret])):
        assert value not in rendering
        assert len(rendering.strip().replace("SecretStr('", "").replace("')", "")) <= 7
    assert secret.get_secret_value() == value
    assert secret == SecretStr(value)
    assert copy.deepcopy(secret) is secret
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_masked_form_shows_last_four() -> None:
    assert SecretStr(PROD).masked == "…" + PROD[-4:]
    assert SecretStr("tiny").masked == "…"


def test_resolved_key_repr_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISTRAL_API_KEY_DEV", DEV)
    key = get_api_key()
    assert DEV not in repr(key)
    assert key.masked in repr(key)


def test_scrub_masks_each_remembered_secret_and_a_longer_one_whole() -> None:
    short = "nbenv-test-secret-0123"
    longer = short + "-and-more-4567"
    SecretStr(short)
    SecretStr(longer)  # remembered after the short one, which it contains
    text = scrub(f"a {longer} b {short} c")
    assert text == f"a {mask(longer)} b {mask(short)} c"
