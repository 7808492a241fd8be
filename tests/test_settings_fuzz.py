"""Fuzzing the settings: any value in settings.toml or a variable is a setting or one clear error.

Hypothesis writes values of every kind (wrong types, huge and non-finite numbers, unicode,
empty strings, NUL bytes, nested lists and tables, key-shaped strings) into a real
``settings.toml`` and into ``MISTRAL_NBENV_*`` variables.  Each must either load as a valid
setting or raise a ``ConfigurationError`` naming the key and where it came from: never a
traceback from inside Dynaconf or pydantic, and never a key-shaped value in the message.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mistral_nbenv import ConfigurationError, get_settings
from mistral_nbenv.config.schema import SCHEMA, SECRET_KEYS
from tests._browser_project import reset_core

LEAK = "Rk7pFakeLeakTzB4nY6cJh3sDf8GaU1e"
KEYS = sorted(k for k in SCHEMA if k not in SECRET_KEYS and k != "api_key")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", LEAK, f"x{LEAK}", "1e308", "inf", "-1", "true", "０"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text("abc", min_size=1, max_size=3), inner, max_size=2)
    ),
    max_leaves=6,
)


def toml_value(value: Any) -> str | None:
    """``value`` in TOML syntax (None: TOML has no way to write it, e.g. None)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # a TOML basic string: JSON's escapes are TOML's, but astral characters stay raw
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        items = [toml_value(v) for v in value]
        return None if None in items else "[" + ", ".join(items) + "]"  # type: ignore[arg-type]
    if isinstance(value, dict):
        items = [(json.dumps(k, ensure_ascii=False), toml_value(v)) for k, v in value.items()]
        if any(v is None for _, v in items):
            return None
        return "{" + ", ".join(f"{k} = {v}" for k, v in items) + "}"
    raise AssertionError(value)


@contextmanager
def project(text: str, env: dict[str, str]) -> Iterator[Path]:
    saved = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "settings.toml"
        path.write_text(text, encoding="utf-8")
        os.environ["MISTRAL_NBENV_SETTINGS"] = str(path)
        os.environ.update(env)
        reset_core()
        try:
            yield path
        finally:
            os.environ.clear()
            os.environ.update(saved)
            reset_core()


def _assert_clear(exc: ConfigurationError, key: str, where: str) -> None:
    message = str(exc)
    assert key in message or key.split(".")[0] in message, message
    assert where in message, message
    assert LEAK[:-4] not in message
    assert "Traceback" not in message


def _toml_line(key: str, text: str) -> str:
    if "." in key:
        table, name = key.split(".", 1)
        return f"[development.{table}]\n{name} = {text}\n"
    return f"[development]\n{key} = {text}\n"


fuzz = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(key=st.sampled_from(KEYS), value=values)
def test_any_toml_value_is_a_setting_or_a_clear_error(key: str, value: Any) -> None:
    text = toml_value(value)
    if text is None:
        return
    with project(_toml_line(key, text), {}):
        try:
            loaded = get_settings("development")
        except ConfigurationError as exc:
            _assert_clear(exc, key, "settings.toml")
        else:
            assert loaded.environment == "development"


@fuzz
@given(key=st.sampled_from(KEYS), value=st.text(max_size=40).filter(lambda v: "\x00" not in v))
def test_any_variable_is_a_setting_or_a_clear_error(key: str, value: str) -> None:
    variable = "MISTRAL_NBENV_" + key.upper().replace(".", "__")
    with project("[development]\n", {variable: value}):
        try:
            get_settings("development")
        except ConfigurationError as exc:
            _assert_clear(exc, key, variable)


@fuzz
@given(value=st.text(max_size=40).filter(lambda v: "\x00" not in v))
def test_any_mistral_env_is_an_environment_or_a_clear_error(value: str) -> None:
    from mistral_nbenv import current_environment

    with project("[development]\n", {"MISTRAL_ENV": value + LEAK}):
        try:
            current_environment()
        except ConfigurationError as exc:
            _assert_clear(exc, "MISTRAL_ENV", "MISTRAL_ENV")
