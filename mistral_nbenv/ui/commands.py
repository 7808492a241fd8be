"""One command grammar, rendered for both front ends: ``mistral-nbenv`` and ``%mistral_env``.

Each :class:`Command` is declared once, with its arguments; :func:`build_parser` renders
the table for one surface (``"cli"`` or ``"magic"``). An environment argument is accepted
in both spellings on both surfaces, ``status staging`` and ``status --env staging``, so the
documented forms of each front end (the CLI's ``--env``, the magic's positional ``ENV``)
work everywhere and the two never disagree. Flags are exact: no prefix of ``--confirm``
or ``--all`` is accepted (``allow_abbrev=False`` on every parser).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["COMMANDS", "Arg", "Command", "build_parser", "environment_of"]


@dataclass(frozen=True)
class Arg:
    """One argument of a command."""

    # "env" (optional environment), "env!" (required), "envs" (environments, any number),
    # "all", "confirm", "action", "paths", "strict", "online", "json", "full"
    kind: str
    help: str = ""
    choices: tuple[str, ...] = ()
    surfaces: tuple[str, ...] = ("cli", "magic")


@dataclass(frozen=True)
class Command:
    """One subcommand, its help line, its arguments and the surfaces that offer it."""

    name: str
    help: str
    args: tuple[Arg, ...] = ()
    surfaces: tuple[str, ...] = ("cli", "magic")
    magic_help: str = ""  # the help in notebook terms, when it differs

    def help_for(self, surface: str) -> str:
        """The help line shown on ``surface``."""
        return self.magic_help if surface == "magic" and self.magic_help else self.help


COMMANDS: tuple[Command, ...] = (
    Command(
        "status",
        "the active (or given) environment: badge, model, masked key and its source, cache, limits",
        (
            Arg("env", "environment name or alias (default: the active one)"),
            Arg(
                "full",
                "every setting with its value and source (default: those the project sets)",
                surfaces=("cli",),
            ),
            Arg("json", "print JSON (documented fields, never a key)", surfaces=("cli",)),
        ),
    ),
    Command(
        "list",
        "every environment with its model and masked key",
        (Arg("json", "print JSON (documented fields, never a key)", surfaces=("cli",)),),
    ),
    Command(
        "check",
        "validate settings and keys (the CLI exits 1 on any problem)",
        (
            Arg("env", "environment name or alias (default: the active one)"),
            Arg("all", "every environment"),
            Arg(
                "strict",
                "warnings fail too (a literal key, staging not mirroring production, ...)",
                surfaces=("cli",),  # an exit code is what it changes
            ),
            Arg("online", "ask each environment's models.list for deprecations now"),
            Arg("json", "print JSON (documented fields, never a key)", surfaces=("cli",)),
        ),
        magic_help="validate settings, keys and models; problems are listed, nothing changes",
    ),
    Command(
        "models",
        "list the models an environment offers; lock (pin) them; promote pins",
        (
            Arg(
                "action",
                "list [ENV] | lock [--env ENV | --all] | promote SOURCE TARGET",
                choices=("list", "lock", "promote"),
            ),
            Arg("envs", "environments: list ENV, lock ENV, promote SOURCE TARGET"),
            Arg("all", "lock: every environment"),
            Arg("confirm", "change the pins of a protected environment"),
            Arg("json", "print JSON (documented fields, never a key)", surfaces=("cli",)),
        ),
    ),
    Command(
        "use",
        "switch the active environment (a protected one needs --confirm)",
        (
            Arg("env!", "environment name or alias"),
            Arg("confirm", "confirm a protected environment"),
        ),
        surfaces=("magic",),
    ),
    Command(
        "cache",
        "response cache statistics, or clear it",
        (
            Arg("action", "stats or clear", choices=("stats", "clear")),
            Arg("env", "environment (default: the active one)"),
            Arg("confirm", "confirm clearing a protected environment's cache"),
            Arg("json", "print JSON (documented fields, never a key)", surfaces=("cli",)),
        ),
    ),
    Command(
        "usage",
        "requests, tokens, cache hits, waits and cost per day, environment and model",
        (
            Arg("env", "one environment (default: every environment)"),
            Arg("json", "print JSON (documented fields, never a key)", surfaces=("cli",)),
        ),
    ),
    Command(
        "scan",
        "find Mistral keys in notebooks and files (exit 1 if any)",
        (Arg("paths", "files or directories"),),
        surfaces=("cli",),
    ),
    Command(
        "demo",
        "a guided tour; uses a built-in local server without a key",
        surfaces=("cli",),
    ),
)


def names(surface: str) -> tuple[str, ...]:
    """The subcommands offered on ``surface``."""
    return tuple(c.name for c in COMMANDS if surface in c.surfaces)


def _add_env(target: argparse._ActionsContainer, arg: Arg, *, required: bool) -> None:
    # Both spellings; environment_of() merges them (and refuses two different ones).
    target.add_argument(
        "env",
        nargs=None if required else "?",
        help=arg.help,
    )


def build_parser(
    surface: str,
    prog: str,
    *,
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
    description: str = "",
    epilog: str = "",
) -> argparse.ArgumentParser:
    """The parser of every command offered on ``surface`` (``"cli"`` or ``"magic"``)."""
    parser = parser_class(
        prog=prog,
        description=description,
        epilog=epilog or None,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # the CLI names its commands COMMAND in the usage line; the magic lists them
    metavar = "COMMAND" if surface == "cli" else None
    sub = parser.add_subparsers(dest="command", metavar=metavar, parser_class=parser_class)
    for command in COMMANDS:
        if surface not in command.surfaces:
            continue
        p = sub.add_parser(command.name, help=command.help_for(surface), allow_abbrev=False)
        kinds = {a.kind for a in command.args}
        group: argparse._ActionsContainer = (
            p.add_mutually_exclusive_group() if {"env", "all"} <= kinds else p
        )
        for arg in command.args:
            if surface not in arg.surfaces:
                continue
            if arg.kind == "strict":
                p.add_argument("--strict", action="store_true", help=arg.help)
            elif arg.kind == "json":
                p.add_argument("--json", action="store_true", help=arg.help)
            elif arg.kind == "online":
                p.add_argument("--online", action="store_true", help=arg.help)
            elif arg.kind == "full":
                p.add_argument("--full", action="store_true", help=arg.help)
            elif arg.kind == "envs":
                p.add_argument("envs", nargs="*", metavar="ENV", help=arg.help)
                p.add_argument("--env", dest="env_option", metavar="ENV", help=arg.help)
            elif arg.kind == "action":
                p.add_argument("action", choices=arg.choices, help=arg.help)
            elif arg.kind == "env!":
                _add_env(p, arg, required=True)
            elif arg.kind == "env":
                _add_env(group, arg, required=False)
                p.add_argument("--env", dest="env_option", metavar="ENV", help=arg.help)
            elif arg.kind == "all":
                group.add_argument("--all", action="store_true", help=arg.help)
            elif arg.kind == "confirm":
                p.add_argument("--confirm", action="store_true", help=arg.help)
            elif arg.kind == "paths":
                p.add_argument("paths", nargs="+", metavar="PATH", help=arg.help)
    return parser


def environment_of(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    """The environment the user named (positional or ``--env``); None means the active one."""
    positional: str | None = getattr(args, "env", None)
    option: str | None = getattr(args, "env_option", None)
    if positional and option and positional != option:
        parser.error(f"two environments given ({positional!r} and --env {option!r}); give one")
    if option and getattr(args, "all", False):
        parser.error("--env and --all exclude each other")
    return positional or option


def did_you_mean(word: str, surface: str) -> str | None:
    """The command ``word`` probably meant (a typo), or None."""
    import difflib

    close = difflib.get_close_matches(word.lower(), names(surface), n=1, cutoff=0.7)
    return close[0] if close else None


def split_words(argv: Sequence[str]) -> list[str]:
    """``%mistral_env prod`` is ``%mistral_env use prod``: add the implied subcommand."""
    words = list(argv)
    if words and words[0] not in names("magic") and not words[0].startswith("-"):
        words.insert(0, "use")
    return words
