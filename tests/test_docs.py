"""The documentation: README as the entry point, a site whose references come from the code.

The site itself is built with warnings as errors by the nox ``docs`` session (``.ci/run``);
here, without MkDocs: every setting and every command has documentation and appears in the
generated references, every page the navigation names exists, and the README stays short
and links only to files that exist.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest

from tests._tools import load_tool

ROOT = Path(__file__).resolve().parent.parent


def _hooks() -> ModuleType:
    return load_tool("docs_hooks")


def test_every_setting_has_a_meaning_and_a_row_in_the_generated_reference() -> None:
    from mistral_nbenv.config.schema import SCHEMA, reference

    table = _hooks().settings_table()
    for key, _default, doc in reference():
        assert doc.strip(), f"setting {key} has no meaning in config/schema.py"
        assert f"| `{key}` |" in table, key
    assert len([line for line in table.splitlines() if line.startswith("| `")]) == len(SCHEMA)


@pytest.mark.parametrize("surface", ["cli", "magic"])
def test_every_command_has_help_and_is_in_the_generated_reference(surface: str) -> None:
    from mistral_nbenv.ui.commands import COMMANDS

    text = _hooks().command_reference(surface)
    offered = [c for c in COMMANDS if surface in c.surfaces]
    assert offered
    for command in offered:
        assert command.help_for(surface).strip(), command.name
        assert f"### `{command.name}`" in text, command.name
        for arg in command.args:
            if surface in arg.surfaces:
                assert arg.help.strip(), f"{command.name}: an argument without help"


def test_the_cell_magic_reference_lists_every_option() -> None:
    text = _hooks().cell_magic_reference()
    for option in ("--model", "--system", "--max-tokens", "--no-stream", "--chat", "--reset"):
        assert option in text, option


def test_every_page_in_the_navigation_exists_and_the_markers_are_filled() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    pages = re.findall(r":\s*([\w/.-]+\.md)\s*$", config, flags=re.M)
    assert "reference/settings.md" in pages
    for page in pages:
        assert (ROOT / "docs" / page).is_file(), page
    hooks = _hooks()
    for page in (ROOT / "docs").rglob("*.md"):
        text = hooks.on_page_markdown(page.read_text())
        assert "<!-- generated:" not in text, page


def test_the_readme_is_the_entry_point_not_the_manual() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 300
    assert "pip install -e . && mistral-nbenv demo" in readme  # the two commands, unchanged
    assert "bash .ci/run" in readme
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
