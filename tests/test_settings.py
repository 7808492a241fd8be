"""Settings layers, discovery, specific-beats-general, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from mistral_nbenv import ConfigurationError, get_settings, list_environments
from mistral_nbenv.config import find_project
from tests.conftest import ProjectFactory, reset_state


def test_packaged_defaults_alone_carry_the_seed_values() -> None:
    assert find_project() == (None, None, None)
    dev, stg, prod = (get_settings(e) for e in ("development", "staging", "production"))
    assert (dev.debug, dev.cache.enabled, dev.cache.ttl_seconds) == (True, False, 60)
    assert (dev.rate_limits.requests_per_minute, dev.rate_limits.tokens_per_minute) == (
        10,
        100000,
    )
    assert (dev.features.use_new_model, dev.features.max_concurrent_requests) == (True, 2)
    assert (stg.cache.enabled, stg.cache.ttl_seconds, stg.features.max_concurrent_requests) == (
        True,
        300,
        5,
    )
    assert (prod.timeout, prod.max_retries, prod.cache.ttl_seconds, prod.protected) == (
        60,
        5,
        600,
        True,
    )
    assert prod.features.use_new_model is False
    assert prod.chat_model == "mistral-small-latest"
    assert dev.chat_model == "mistral-medium-latest"  # use_new_model on in development
    assert (dev.embedding_model, dev.fim_model) == ("mistral-embed", "codestral-latest")
    assert prod.source_of("timeout") == "packaged defaults [production]"


@pytest.mark.parametrize(
    ("settings", "secrets", "env", "key", "expected", "source"),
    [
        # a project's [default] never beats a packaged [production] value
        (
            "[default]\nprotected = false\n",
            None,
            "production",
            "protected",
            True,
            "packaged defaults [production]",
        ),
        (
            "[default]\ntimeout = 45\n",
            None,
            "production",
            "timeout",
            60,
            "packaged defaults [production]",
        ),
        ("[default]\ntimeout = 45\n", None, "staging", "timeout", 45, "settings.toml [default]"),
        # .secrets.toml [default] does not beat settings.toml [production]
        (
            "[production]\ntimeout = 90\n",
            "[default]\ntimeout = 10\n",
            "production",
            "timeout",
            90,
            "settings.toml [production]",
        ),
        # equally specific: the higher layer wins
        (
            "[production]\ntimeout = 90\n",
            "[production]\ntimeout = 99\n",
            "production",
            "timeout",
            99,
            ".secrets.toml [production]",
        ),
        (
            "[default]\ntimeout = 40\n",
            "[default]\ntimeout = 41\n",
            "staging",
            "timeout",
            41,
            ".secrets.toml [default]",
        ),
        # only [production] protected = false unprotects production
        (
            "[production]\nprotected = false\n",
            None,
            "production",
            "protected",
            False,
            "settings.toml [production]",
        ),
        # aliases as section names
        (
            "[prod]\nmodel = 'mistral-large-latest'\n",
            None,
            "production",
            "model",
            "mistral-large-latest",
            "settings.toml [production]",
        ),
    ],
)
def test_specific_beats_general(
    project: ProjectFactory,
    settings: str,
    secrets: str | None,
    env: str,
    key: str,
    expected: object,
    source: str,
) -> None:
    project(settings, secrets)
    s = get_settings(env)
    assert getattr(s, key) == expected
    assert s.source_of(key) == source


def test_nested_tables_merge_key_by_key(project: ProjectFactory) -> None:
    project(
        "[default.cache]\nsize_limit_mb = 10\n[production.cache]\nenabled = false\n",
        "[production.rate_limits]\nrequests_per_minute = 5\n",
    )
    prod = get_settings("production")
    assert prod.cache.enabled is False
    assert prod.cache.ttl_seconds == 600  # packaged [production.cache] kept
    assert prod.cache.size_limit_mb == 10  # project [default.cache] kept
    assert prod.rate_limits.requests_per_minute == 5
    assert prod.rate_limits.tokens_per_minute == 500000
    assert prod.source_of("cache.size_limit_mb") == "settings.toml [default]"
    assert prod.source_of("rate_limits.requests_per_minute") == ".secrets.toml [production]"


@pytest.mark.parametrize(
    ("variable", "value", "env", "key", "expected"),
    [
        ("MISTRAL_NBENV_TIMEOUT", "12", "production", "timeout", 12.0),
        ("MISTRAL_NBENV_CACHE__ENABLED", "false", "staging", "cache.enabled", False),
        ("MISTRAL_NBENV_CACHE__TTL_SECONDS", "7", "production", "cache.ttl_seconds", 7.0),
        ("MISTRAL_NBENV_OFFLINE", "1", "development", "offline", True),
        ("MISTRAL_NBENV_OFFLINE", "yes", "staging", "offline", True),
        (
            "MISTRAL_NBENV_MODEL",
            "mistral-large-latest",
            "production",
            "model",
            "mistral-large-latest",
        ),
        (
            "MISTRAL_NBENV_FEATURES__MAX_CONCURRENT_REQUESTS",
            "3",
            "production",
            "features.max_concurrent_requests",
            3,
        ),
        # a general override can protect, never unprotect
        ("MISTRAL_NBENV_PROTECTED", "false", "production", "protected", True),
        ("MISTRAL_NBENV_PROTECTED", "true", "staging", "protected", True),
    ],
)
def test_environment_variables_apply_to_every_environment(
    project: ProjectFactory,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    env: str,
    key: str,
    expected: object,
) -> None:
    project("[production]\ntimeout = 90\n[staging.cache]\nenabled = true\n")
    monkeypatch.setenv(variable, value)
    s = get_settings(env)
    actual: object = s
    for part in key.split("."):
        actual = getattr(actual, part)
    assert actual == expected
    if variable != "MISTRAL_NBENV_PROTECTED":
        assert s.source_of(key) == f"environment variable {variable}"


def test_api_key_is_never_read_from_mistral_nbenv_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MISTRAL_NBENV_API_KEY", "should-never-be-used-0123456789")
    assert get_settings("development").api_key is None
    from mistral_nbenv.workspace import project

    assert project().ignored_variables == ("MISTRAL_NBENV_API_KEY",)


def test_discovery_from_a_subfolder(
    project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project("[development]\nmodel = 'from-root'\n")
    sub = root / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    reset_state()
    assert find_project()[0] == root
    assert get_settings("development").model == "from-root"
    assert get_settings("development").project_dir == root


def test_discovery_takes_both_files_from_the_nearest_directory(
    project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project("[development]\nmodel = 'outer'\n")
    inner = root / "inner"
    inner.mkdir()
    (inner / ".secrets.toml").write_text("[development]\nfim_model = 'inner-fim'\n")
    monkeypatch.chdir(inner)
    reset_state()
    s = get_settings("development")
    assert s.fim_model == "inner-fim"
    assert s.model == "mistral-small-latest"  # the outer settings.toml is not read


def test_settings_variable_points_at_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "custom.toml").write_text("[staging]\nmodel = 'custom'\n")
    (conf / ".secrets.toml").write_text("[staging]\nfim_model = 'beside'\n")
    monkeypatch.setenv("MISTRAL_NBENV_SETTINGS", str(conf / "custom.toml"))
    s = get_settings("staging")
    assert (s.model, s.fim_model) == ("custom", "beside")
    monkeypatch.setenv("MISTRAL_NBENV_SETTINGS", str(conf / "missing.toml"))
    with pytest.raises(ConfigurationError, match="MISTRAL_NBENV_SETTINGS"):
        get_settings("staging")


def test_dynaconf_variables_change_nothing(
    project: ProjectFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    evil = tmp_path / "evil.toml"
    evil.write_text("[default]\nmodel = 'evil'\n[production]\nprotected = false\n")
    project("[development]\nmodel = 'mine'\n")
    for name in ("ENV_FOR_DYNACONF", "SETTINGS_FILE_FOR_DYNACONF", "INCLUDES_FOR_DYNACONF"):
        monkeypatch.setenv(name, "production" if name == "ENV_FOR_DYNACONF" else str(evil))
    from mistral_nbenv import current_environment

    assert current_environment() == "development"
    assert get_settings("development").model == "mine"
    assert get_settings("production").protected is True


def test_extra_sections_are_environments(project: ProjectFactory) -> None:
    project("[qa]\nmodel = 'qa-model'\n[qa.cache]\nttl_seconds = 5\n")
    assert list_environments() == ["development", "staging", "production", "qa"]
    qa = get_settings("QA")
    assert (qa.environment, qa.model, qa.cache.ttl_seconds, qa.protected) == (
        "qa",
        "qa-model",
        5,
        False,
    )


@pytest.mark.parametrize(
    ("settings", "env", "fragments"),
    [
        (
            "[default]\ntimeout = 'soon'\n",
            "staging",
            ["`timeout`", "'staging'", "settings.toml [default]", "'soon'"],
        ),
        (
            "[production]\nmax_retries = -1\n",
            "production",
            ["`max_retries`", "'production'", "settings.toml [production]", "from 0 to 100"],
        ),
        ("[staging.cache]\nttl_seconds = -5\n", "staging", ["`cache.ttl_seconds`", "-5"]),
        (
            "[staging.features]\nmax_concurrent_requests = 0\n",
            "staging",
            ["`features.max_concurrent_requests`", "from 1 to 1,000"],
        ),
        ("[staging]\ndebug = 'yes'\n", "staging", ["`debug`", "true or false"]),
        ("[staging]\ntimeout = true\n", "staging", ["`timeout`", "True"]),
        ("[staging]\nmodel = ''\n", "staging", ["`model`", "non-blank"]),
        ("[staging]\nserver_url = 'localhost:8000'\n", "staging", ["`server_url`", "http://"]),
        ("[staging]\napi_key = 'vault:secret/x'\n", "staging", ["`api_key`", "#FIELD"]),
        (
            "[staging]\napi_key = 'keyring:mistral'\n",
            "staging",
            ["`api_key`", "unknown secret reference scheme", "vault:"],
        ),
        ("[staging]\ncache = false\n", "staging", ["`cache` must be a table"]),
    ],
)
def test_validation_errors_name_key_environment_and_source(
    project: ProjectFactory, settings: str, env: str, fragments: list[str]
) -> None:
    project(settings)
    with pytest.raises(ConfigurationError) as info:
        get_settings(env)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_validation_reports_every_problem_at_once(project: ProjectFactory) -> None:
    project("[staging]\ntimeout = 0\nmax_retries = 1.5\n")
    with pytest.raises(ConfigurationError) as info:
        get_settings("staging")
    assert "`timeout`" in str(info.value)
    assert "`max_retries`" in str(info.value)


def test_environment_variable_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISTRAL_NBENV_TIMEOUT", "-3")
    with pytest.raises(ConfigurationError, match="environment variable MISTRAL_NBENV_TIMEOUT"):
        get_settings("staging")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("model = 'x'\n", "outside any section"),
        ("[cache]\nenabled = false\n", "[default.cache]"),
        ("[prod]\ntimeout = 1\n[production]\ntimeout = 2\n", "both name"),
        ("[default\n", "not valid TOML"),
    ],
)
def test_malformed_files(project: ProjectFactory, text: str, fragment: str) -> None:
    project(text)
    with pytest.raises(ConfigurationError, match=r"settings\.toml") as info:
        get_settings("staging")
    assert fragment in str(info.value)


def test_unknown_environment_lists_valid_names() -> None:
    with pytest.raises(ConfigurationError) as info:
        get_settings("nope")
    assert "development, staging, production" in str(info.value)


def test_secret_values_never_appear_in_repr_or_errors(project: ProjectFactory) -> None:
    key = "Sekr1tKeyValueThatMustNotLeak0042"
    project(None, f"[staging]\napi_key = '{key}'\n[staging.secrets]\nvault_token = '{key}'\n")
    s = get_settings("staging")
    assert key not in repr(s)
    assert key not in str(list(s.explain()))
    assert s.api_key is not None
    assert s.api_key.get_secret_value() == key
    assert "…0042" in repr(s)


def test_files_are_reread_when_they_change(project: ProjectFactory) -> None:
    root = project("[staging]\nmodel = 'one'\n")
    assert get_settings("staging").model == "one"
    same = get_settings("staging")
    assert get_settings("staging") is same  # cached while nothing changed
    (root / "settings.toml").write_text("[staging]\nmodel = 'two-longer'\n")
    assert get_settings("staging").model == "two-longer"


def test_unknown_keys_are_kept_for_check(project: ProjectFactory) -> None:
    project("[staging]\ntimout = 10\n")
    assert get_settings("staging").unknown_keys == ("timout",)


# ----------------------------------------------------------------------------- the declaration


def test_every_setting_is_declared_once_and_documented() -> None:
    """Rules, packaged defaults and meanings come from one declaration; the user guide names
    every setting (the generated reference lists them all: tests/test_docs.py)."""
    from mistral_nbenv.config import SCHEMA, reference

    guide = "\n".join(
        p.read_text() for p in (Path(__file__).resolve().parent.parent / "docs").rglob("*.md")
    )
    keys = [key for key, _default, _doc in reference()]
    assert keys == list(SCHEMA)
    for key, _default, doc in reference():
        assert doc, key
        leaf = key.split(".")[-1]
        assert f"`{key}`" in guide or f"`{leaf}`" in guide, f"{key} is not in the user guide"
    defaults = get_settings("staging")
    assert defaults.timeout == 30  # from the declaration, not from defaults.toml
    assert defaults.source_of("timeout") == "packaged defaults [default]"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("timeout = inf", "timeout"),
        ("timeout = 1e308", "timeout"),
        ("retry_max_wait = nan", "retry_max_wait"),
        ("model = '   '", "model"),
        ("[staging.cache]\nsize_limit_mb = inf", "cache.size_limit_mb"),
        ("[staging.cache]\nsize_limit_mb = 1e300", "cache.size_limit_mb"),
        ("[staging.rate_limits]\nrequests_per_minute = 100000000000", "requests_per_minute"),
    ],
)
def test_numbers_that_cannot_run_and_blank_models_are_refused(
    project: ProjectFactory, text: str, key: str
) -> None:
    project(f"[staging]\n{text}\n" if not text.startswith("[") else text + "\n")
    with pytest.raises(ConfigurationError, match=key.replace(".", r"\.")):
        get_settings("staging")


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        ("timeout = " + "9" * 400, "`timeout` must be a number > 0"),
        ("[development.prices]\nm = { input = " + "9" * 400 + " }", "`prices` must be a table"),
        ("model = " + "[" * 600 + "]" * 600, "nests arrays or tables too deeply"),
        ('server_url = "http://[::1"', "has an unclosed '['"),
    ],
)
def test_absurd_values_are_a_configuration_error(tmp_path: Path, line: str, expect: str) -> None:
    from tests._cli import run_cli

    (tmp_path / "settings.toml").write_text(f"[development]\n{line}\n")
    done = run_cli("status", cwd=tmp_path)
    assert done.returncode == 2
    assert expect in done.stderr
    assert "Traceback" not in done.stderr
