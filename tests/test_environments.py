"""Environment detection, switching, confirmation, the context manager, guards and flags."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import mistral_nbenv
from mistral_nbenv import (
    ConfigurationError,
    EnvironmentGuardError,
    ProductionConfirmationRequired,
    current_environment,
    detect_environment,
    environment,
    feature_flags,
    get_client,
    require_environment,
    require_production,
    requires_environment,
    use_environment,
)
from mistral_nbenv.testing import MistralTestServer
from mistral_nbenv.workspace import add_switch_listener
from tests._browser_project import write_project
from tests.conftest import ProjectFactory, reset_state

ALIASES = [
    ("dev", "development"),
    ("Develop", "development"),
    ("LOCAL", "development"),
    ("development", "development"),
    ("stage", "staging"),
    ("staging", "staging"),
    ("Preview", "staging"),
    ("prod", "production"),
    ("production", "production"),
    ("LIVE", "production"),
]


@pytest.mark.parametrize(("alias", "canonical"), ALIASES)
def test_every_alias_through_mistral_env(
    monkeypatch: pytest.MonkeyPatch, alias: str, canonical: str
) -> None:
    monkeypatch.setenv("MISTRAL_ENV", alias)
    assert detect_environment() == canonical
    assert current_environment() == canonical


@pytest.mark.parametrize(("alias", "canonical"), ALIASES)
def test_every_alias_through_use_environment(alias: str, canonical: str) -> None:
    assert use_environment(alias, confirm=True) == canonical
    assert current_environment() == canonical


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, "development"),
        ({"MISTRAL_ENV": "staging", "VERCEL_ENV": "production"}, "staging"),
        ({"VERCEL_ENV": "production"}, "production"),
        ({"VERCEL_ENV": "preview"}, "staging"),
        ({"VERCEL_ENV": "development", "NODE_ENV": "production"}, "development"),
        ({"VERCEL_ENV": "something-else", "NODE_ENV": "production"}, "production"),
        ({"NODE_ENV": "test"}, "development"),  # NODE_ENV values we do not know are skipped
        ({"NODE_ENV": "staging"}, "staging"),
    ],
)
def test_detection_precedence(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert detect_environment() == expected


@pytest.mark.parametrize("blank", [" ", "  ", "\t"])
def test_a_blank_mistral_env_is_an_error_not_development(
    monkeypatch: pytest.MonkeyPatch, blank: str
) -> None:
    monkeypatch.setenv("MISTRAL_ENV", blank)
    monkeypatch.setenv("NODE_ENV", "prod")
    with pytest.raises(ConfigurationError, match=r"MISTRAL_ENV is set to .* blank"):
        detect_environment()


def test_an_empty_mistral_env_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISTRAL_ENV", "")
    monkeypatch.setenv("NODE_ENV", "staging")
    assert detect_environment() == "staging"


@pytest.mark.parametrize("value", ["prodution", "test", "qa"])
def test_unknown_mistral_env_is_an_error_listing_valid_names(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MISTRAL_ENV", value)
    with pytest.raises(ConfigurationError) as info:
        detect_environment()
    message = str(info.value)
    assert f"MISTRAL_ENV={value!r}" in message
    assert "development, staging, production" in message


def test_mistral_env_may_name_an_extra_section(
    project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project("[qa]\nmodel = 'q'\n")
    monkeypatch.setenv("MISTRAL_ENV", "QA")
    assert current_environment() == "qa"


def test_detection_never_asks_for_confirmation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISTRAL_ENV", "production")
    assert current_environment() == "production"
    assert use_environment("production") == "production"  # already there: no switch


def test_active_environment_does_not_follow_later_variable_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert current_environment() == "development"
    monkeypatch.setenv("MISTRAL_ENV", "staging")
    assert current_environment() == "development"


def test_switching_into_production_needs_confirmation() -> None:
    with pytest.raises(ProductionConfirmationRequired) as info:
        use_environment("prod")
    assert "confirm=True" in str(info.value)
    assert info.value.environment == "production"
    assert current_environment() == "development"  # nothing changed
    assert use_environment("prod", confirm=True) == "production"
    assert current_environment() == "production"


def test_any_protected_environment_needs_confirmation(project: ProjectFactory) -> None:
    project("[qa]\nprotected = true\n[production]\nprotected = false\n")
    with pytest.raises(ProductionConfirmationRequired):
        use_environment("qa")
    assert use_environment("production") == "production"


def test_switching_to_an_invalid_environment_changes_nothing(project: ProjectFactory) -> None:
    project("[staging]\ntimeout = -1\n")
    with pytest.raises(ConfigurationError, match="staging"):
        use_environment("staging")
    with pytest.raises(ConfigurationError, match="Unknown environment"):
        use_environment("nowhere")
    assert current_environment() == "development"


def test_context_manager_restores_previous_environment() -> None:
    use_environment("staging")
    with environment("prod", confirm=True) as active:
        assert active == "production"
        assert current_environment() == "production"
    assert current_environment() == "staging"


def test_context_manager_restores_after_an_exception() -> None:
    seen = []

    def work() -> None:
        with environment("staging"):
            seen.append(current_environment())
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        work()
    assert seen == ["staging"]
    assert current_environment() == "development"


def test_context_manager_into_production_needs_confirmation() -> None:
    with pytest.raises(ProductionConfirmationRequired), environment("production"):
        pass  # pragma: no cover - never entered
    assert current_environment() == "development"


def test_switch_listeners_see_old_and_new() -> None:
    seen: list[tuple[str, str]] = []
    remove = add_switch_listener(lambda old, new: seen.append((old, new)))
    use_environment("staging")
    use_environment("staging")  # no-op: no event
    with environment("production", confirm=True):
        pass
    remove()
    use_environment("development")
    assert seen == [
        ("development", "staging"),
        ("staging", "production"),
        ("production", "staging"),
    ]


def test_a_failing_listener_does_not_block_the_switch() -> None:
    def broken(old: str, new: str) -> None:
        raise ValueError("listener bug")

    remove = add_switch_listener(broken)
    try:
        assert use_environment("staging") == "staging"
    finally:
        remove()


def test_require_environment_message() -> None:
    with pytest.raises(EnvironmentGuardError) as info:
        require_production("deploy_model")
    assert str(info.value) == (
        'Operation "deploy_model" requires production but running in development'
    )
    require_environment(["dev", "staging"], "notebook_experiment")
    with pytest.raises(EnvironmentGuardError, match="requires staging or production"):
        require_environment(("stage", "prod"), "load_test")


def test_requires_environment_decorator_sync_and_async() -> None:
    @requires_environment("production")
    def deploy() -> str:
        return "deployed"

    @requires_environment("staging", "production")
    async def evaluate() -> str:
        return "evaluated"

    with pytest.raises(EnvironmentGuardError, match='"test_requires_environment'):
        deploy()
    with pytest.raises(EnvironmentGuardError):
        asyncio.run(evaluate())
    with environment("production", confirm=True):
        assert deploy() == "deployed"
        assert asyncio.run(evaluate()) == "evaluated"


def test_requires_environment_rejects_unknown_names_at_decoration() -> None:
    with pytest.raises(ConfigurationError):
        requires_environment("prodd")


def test_staging_sends_the_model_production_sends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one model configured for both, staging sends it, as production does (the
    packaged staging flags are production's; development keeps trying the new model)."""
    large = 'model = "mistral-large-latest"\n'
    with MistralTestServer() as server:
        settings = write_project(tmp_path, server.url)
        text = settings.read_text().replace("[staging]\n", "[staging]\n" + large)
        settings.write_text(text.replace("[production]\n", "[production]\n" + large))
        monkeypatch.setenv("MISTRAL_NBENV_SETTINGS", str(settings))
        reset_state()
        sent = {}
        for env in ("staging", "production", "development"):
            get_client(env).chat.complete(messages=[{"role": "user", "content": env}], cache=False)
            request = server.last_request
            assert request is not None
            sent[env] = request.body["model"]
    assert sent == {
        "staging": "mistral-large-latest",
        "production": "mistral-large-latest",
        "development": "mistral-medium-latest",  # new_model: development rolls it out
    }


def test_feature_flags_follow_the_environment(project: ProjectFactory) -> None:
    project("[staging.features]\nuse_new_model = false\n")
    assert feature_flags().max_concurrent_requests == 2  # development (packaged)
    flags = feature_flags("staging")
    assert (flags.use_new_model, flags.enable_function_calling, flags.max_concurrent_requests) == (
        False,
        True,
        5,
    )
    use_environment("production", confirm=True)
    assert feature_flags().use_new_model is False
    assert mistral_nbenv.get_settings().chat_model == "mistral-small-latest"
