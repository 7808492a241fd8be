"""Messages that point at the fix (part of issue 39, item 5): a [default] key, an example's
placeholder, a misspelled section, a misspelled setting."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import mistral_nbenv
from mistral_nbenv import ConfigurationError, MissingAPIKeyError
from tests._cli import run_cli
from tests.conftest import ProjectFactory

KEY = "SoloFakeKeyAbCdEfGhIjKlMnOpQr0009"


def test_a_default_key_is_told_to_move_under_development(project: ProjectFactory) -> None:
    project("", secrets=f'[default]\napi_key = "{KEY}"\n')
    with pytest.raises(ConfigurationError) as info:
        mistral_nbenv.get_client("development")
    message = str(info.value)
    assert "api_key is under [default]" in message
    assert "Move it under [development]" in message
    assert "classic leak" not in message
    assert KEY[:-4] not in message


@pytest.mark.parametrize("placeholder", ["your-development-key-here", "<your key>", "changeme"])
def test_an_examples_placeholder_is_not_a_key(project: ProjectFactory, placeholder: str) -> None:
    root = project("", secrets=f'[development]\napi_key = "{placeholder}"\n')
    with pytest.raises(MissingAPIKeyError, match="placeholder copied from an example"):
        mistral_nbenv.get_client("development")
    done = run_cli("check", cwd=root)
    assert done.returncode == 1
    assert "placeholder copied from an example" in done.stdout


def test_a_misspelled_section_gets_did_you_mean(project: ProjectFactory) -> None:
    root = project("[stagging]\nmodel = 'mistral-large-latest'\n")
    done = run_cli("check", "--all", cwd=root)
    assert "[stagging] is a further environment of its own; did you mean [staging]?" in (
        done.stdout
    )
    assert run_cli("check", "--all", "--strict", cwd=root).returncode == 1


def test_a_misspelled_setting_warns_once_when_a_client_is_made(
    project: ProjectFactory, tmp_path: Path
) -> None:
    project(
        "[development]\nmodle = 'mistral-large-latest'\n",
        secrets=f'[development]\napi_key = "{KEY}"\n',
    )
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        mistral_nbenv.get_client("development")
        mistral_nbenv.get_client("development")
    said = [str(w.message) for w in seen if "nobody reads" in str(w.message)]
    assert len(said) == 1
    assert "`modle` (from settings.toml [development]), did you mean `model`?" in said[0]
