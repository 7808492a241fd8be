"""The package surface: light import, complete ``__all__``, one exception tree."""

from __future__ import annotations

import subprocess
import sys

import pytest

import mistral_nbenv
from mistral_nbenv import errors

HEAVY = (
    "mistralai",
    "IPython",
    "ipywidgets",
    "dynaconf",
    "hvac",
    "boto3",
    "google",
    "diskcache",
    "tenacity",
    "httpx2",
    "dotenv",
)


def test_import_is_light() -> None:
    code = (
        "import sys, mistral_nbenv\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_all_is_complete_and_importable() -> None:
    import types

    public = {
        name
        for name, value in vars(mistral_nbenv).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - {"annotations", "TYPE_CHECKING", "Any"} <= set(mistral_nbenv.__all__)
    for name in mistral_nbenv.__all__:
        assert getattr(mistral_nbenv, name) is not None
    for name in (
        "detect_environment",
        "current_environment",
        "list_environments",
        "use_environment",
        "environment",
        "get_settings",
        "get_client",
        "feature_flags",
        "require_environment",
        "require_production",
        "requires_environment",
        "load_ipython_extension",
        "unload_ipython_extension",
    ):
        assert name in mistral_nbenv.__all__


@pytest.mark.parametrize(
    ("child", "parent"),
    [
        (errors.ConfigurationError, errors.MistralEnvError),
        (errors.MissingAPIKeyError, errors.MistralEnvError),
        (errors.SecretBackendError, errors.MistralEnvError),
        (errors.EnvironmentGuardError, errors.MistralEnvError),
        (errors.ProductionConfirmationRequired, errors.EnvironmentGuardError),
        (errors.APIError, errors.MistralEnvError),
        (errors.RateLimitError, errors.APIError),
        (errors.APIConnectionError, errors.APIError),
        (errors.APITimeoutError, errors.APIConnectionError),
        (errors.CacheMissError, errors.MistralEnvError),
    ],
)
def test_exception_tree(child: type[Exception], parent: type[Exception]) -> None:
    assert issubclass(child, parent)
    assert getattr(mistral_nbenv, child.__name__) is child
    assert child.__name__ in errors.__doc__


def test_api_error_attributes() -> None:
    err = errors.RateLimitError("slow down", retry_after=12.5, attempts=3)
    assert (err.status_code, err.retry_after, err.attempts) == (429, 12.5, 3)
    assert errors.APIError("bad body", status_code=200).status_code == 200
