"""MkDocs hook: the reference pages are generated from the code when the site is built.

``<!-- generated: settings -->`` becomes the table of every declared setting
(``mistral_nbenv.config.schema``), ``<!-- generated: environment defaults -->`` the packaged
per-environment values, ``<!-- generated: cli -->`` / ``magic`` / ``cell magic`` the
command grammar of ``mistral-nbenv``, ``%mistral_env`` and ``%%mistral``. The test
``tests/test_docs.py`` uses the same functions, so a setting or a command without
documentation fails there too.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value is None:
        return "—"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, dict):
        return f"`{json.dumps(value)}`" if value else "`{}`"
    return f"`{value:,}`" if isinstance(value, int) else f"`{value:g}`"


def settings_table() -> str:
    """Every setting: key, packaged default, what it accepts, what it means."""
    from mistral_nbenv.config.schema import SCHEMA, reference

    rows = ["| key | default | accepts | meaning |", "|---|---|---|---|"]
    for key, default, doc in reference():
        accepts = SCHEMA[key].expect
        rows.append(f"| `{key}` | {_shown(default)} | {_cell(accepts)} | {_cell(doc)} |")
    return "\n".join(rows)


def environment_defaults() -> str:
    """The packaged per-environment values, one table per environment."""
    import mistral_nbenv.config

    path = Path(mistral_nbenv.config.__file__).with_name("defaults.toml")
    data = tomllib.loads(path.read_text("utf-8"))
    out = []
    for env, values in data.items():
        out += [f"### `[{env}]`", "", "| key | value |", "|---|---|"]
        for key, value in _flat(values):
            out.append(f"| `{key}` | {_shown(value)} |")
        out.append("")
    return "\n".join(out)


def _flat(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((prefix + key, value))
    return out


def _subparsers(parser: Any) -> dict[str, Any]:
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_reference(surface: str) -> str:
    """Each command of ``surface`` (``cli`` or ``magic``): its help line and its usage."""
    from mistral_nbenv.ui.commands import COMMANDS, build_parser

    prog = "mistral-nbenv" if surface == "cli" else "%mistral_env"
    parsers = _subparsers(build_parser(surface, prog))
    out = []
    for command in COMMANDS:
        if surface not in command.surfaces:
            continue
        sub = parsers[command.name]
        out += [f"### `{command.name}`", "", command.help_for(surface), ""]
        out += ["```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def cell_magic_reference() -> str:
    """``%%mistral``'s usage, from its own argument declarations."""
    from mistral_nbenv.ui.magic import MistralMagics

    parser = MistralMagics.mistral.parser  # made by IPython's @magic_arguments
    return "\n".join(["```text", parser.format_help().rstrip(), "```"])


GENERATED = {
    "<!-- generated: settings -->": settings_table,
    "<!-- generated: environment defaults -->": environment_defaults,
    "<!-- generated: cli -->": lambda: command_reference("cli"),
    "<!-- generated: magic -->": lambda: command_reference("magic"),
    "<!-- generated: cell magic -->": cell_magic_reference,
}


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace each marker by what it stands for."""
    for marker, make in GENERATED.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
