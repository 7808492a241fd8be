"""One grammar for the CLI and the magic: both spellings of ENV, exact flags, same commands."""

from __future__ import annotations

import argparse

import pytest

from mistral_nbenv.ui.commands import COMMANDS, build_parser, environment_of, names, split_words


class _Refused(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _Refused(message)


def parse(surface: str, *argv: str) -> argparse.Namespace:
    parser = build_parser(surface, "prog", parser_class=_Parser)
    words = split_words(argv) if surface == "magic" else list(argv)
    args = parser.parse_args(words)
    args.env = environment_of(args, parser)
    return args


@pytest.mark.parametrize("surface", ["cli", "magic"])
@pytest.mark.parametrize(
    ("argv", "command", "env"),
    [
        (("status",), "status", None),
        (("status", "stage"), "status", "stage"),
        (("status", "--env", "stage"), "status", "stage"),
        (("check", "prod"), "check", "prod"),
        (("check", "--env", "prod"), "check", "prod"),
        (("cache", "stats", "--env", "dev"), "cache", "dev"),
        (("cache", "clear", "dev"), "cache", "dev"),
    ],
)
def test_both_spellings_of_an_environment_on_both_surfaces(
    surface: str, argv: tuple[str, ...], command: str, env: str | None
) -> None:
    args = parse(surface, *argv)
    assert args.command == command
    assert args.env == env


@pytest.mark.parametrize("surface", ["cli", "magic"])
@pytest.mark.parametrize(
    "argv",
    [
        ("check", "--al"),  # a prefix of --all
        ("check", "--all", "prod"),
        ("check", "--all", "--env", "prod"),
        ("status", "dev", "--env", "prod"),  # two different environments
        ("cache", "purge"),
    ],
)
def test_refused_on_both_surfaces(surface: str, argv: tuple[str, ...]) -> None:
    with pytest.raises(_Refused):
        parse(surface, *argv)


@pytest.mark.parametrize(
    "argv", [("use", "prod", "--c"), ("use", "prod", "--conf"), ("prod", "--confir")]
)
def test_confirm_is_exact(argv: tuple[str, ...]) -> None:
    with pytest.raises(_Refused):
        parse("magic", *argv)
    assert parse("magic", "prod", "--confirm").confirm is True
    assert parse("magic", "use", "prod").confirm is False


def test_surfaces_offer_what_the_design_says() -> None:
    assert names("cli") == ("status", "list", "check", "models", "cache", "usage", "scan", "demo")
    assert names("magic") == ("status", "list", "check", "models", "use", "cache", "usage")
    assert split_words(["prod", "--confirm"]) == ["use", "prod", "--confirm"]
    assert {c.name for c in COMMANDS} == {*names("cli"), *names("magic")}
