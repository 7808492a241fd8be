"""``mistral-nbenv`` (and ``python -m mistral_nbenv``): status, list, check, models, cache,
usage, scan, demo.

Thin by design: each subcommand parses its arguments, calls the same core functions as the
magic and the widget, and renders plain text. Exit codes: 0 fine, 1 ``check``/``scan``
found a problem, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TextIO, cast

from mistral_nbenv.errors import MistralEnvError
from mistral_nbenv.secrets import scrub

__all__ = ["main"]


def _ansi(out: TextIO) -> bool:
    return hasattr(out, "isatty") and out.isatty() and not os.environ.get("NO_COLOR")


def _json(out: TextIO, schema: str, **fields: Any) -> None:
    """One JSON document: ``{"schema": "mistral-nbenv/<what>/1", ...}`` (see docs/guide/cli.md)."""
    print(json.dumps({"schema": f"mistral-nbenv/{schema}/1", **fields}, indent=2), file=out)


def _status(args: argparse.Namespace, out: TextIO) -> int:
    from mistral_nbenv.ui.display import status_text
    from mistral_nbenv.ui.status import collect_status
    from mistral_nbenv.workspace import current_environment, detection_reason, get_settings, project

    if args.json:
        settings = get_settings(args.env)
        _json(
            out,
            "status",
            active=current_environment(),
            detected_from=detection_reason(),
            environment=asdict(collect_status(args.env, with_cache=True)),
            settings=[{"key": k, "value": v, "source": src} for k, v, src in settings.explain()],
        )
        return 0
    # everything that can fail first: an error (exit 2) prints nothing on stdout
    status = collect_status(args.env, with_cache=True)
    settings = get_settings(args.env)
    rows = list(settings.explain())
    loaded = project()
    settings_file, secrets_file = loaded.settings_file, loaded.secrets_file
    active = current_environment()
    print(
        textwrap.fill(
            f"active environment: {active} (from {detection_reason()})",
            width=80,
            subsequent_indent=" " * 20,
        ),
        file=out,
    )
    from mistral_nbenv.secrets.keys import shown_path

    files = [shown_path(p) for p in (settings_file, secrets_file) if p is not None]
    print(f"settings files:     {', '.join(files) or 'none found (packaged defaults)'}", file=out)
    print("", file=out)
    print(status_text(status, ansi=_ansi(out)), file=out)
    print("", file=out)
    if args.full:
        print(f"settings for {settings.environment} (value, and where it came from):", file=out)
    else:  # one screen: what the project sets; the packaged defaults behind --full
        every = len(rows)
        rows = [r for r in rows if not r[2].startswith(("packaged defaults", "not set"))]
        print(
            f"set by this project: {len(rows)} of {every} settings (status --full shows every one)",
            file=out,
        )
    width = max((len(k) for k, _, _ in rows), default=0)
    for key, value, source in rows:
        print(f"  {key:<{width}}  {value:<24} {source}", file=out)
    return 0


def _list(args: argparse.Namespace, out: TextIO) -> int:
    from mistral_nbenv.ui.display import environments_text
    from mistral_nbenv.ui.status import collect_status
    from mistral_nbenv.workspace import list_environments

    statuses = [collect_status(name) for name in list_environments()]
    if args.json:
        _json(out, "list", environments=[asdict(st) for st in statuses])
        return 0
    print(environments_text(statuses, ansi=_ansi(out)), file=out)
    return 0


def _check(args: argparse.Namespace, out: TextIO) -> int:
    from mistral_nbenv.ui.display import check_text
    from mistral_nbenv.ui.status import collect_check, collect_findings

    results = collect_check(args.env, all_environments=args.all)
    findings = collect_findings(results, online=args.online)
    failed = any(not r.ok for r in results) or any(f.fails(strict=args.strict) for f in findings)
    code = 1 if failed else 0
    if args.json:
        _json(
            out,
            "check",
            ok=not failed,
            strict=args.strict,
            exit_code=code,
            environments=[
                {
                    "environment": r.environment,
                    "ok": r.ok,
                    "problems": list(r.problems),
                    "notes": list(r.notes),
                }
                for r in results
            ],
            findings=[
                {"severity": f.severity, "message": f.message, "environments": list(f.environments)}
                for f in findings
            ],
        )
        return code
    print(check_text(results, findings), file=out)
    warned = any(f.severity == "warning" for f in findings)
    if args.strict and warned and not any(not r.ok for r in results):
        print("--strict: the warnings above fail the check.", file=out)
    return code


def _models(args: argparse.Namespace, out: TextIO) -> int:
    from mistral_nbenv.ui import models
    from mistral_nbenv.ui.display import changes_text, models_text

    envs = [*args.envs, *([args.env] if args.env else [])]
    what, result = models.run(args.action, envs, every=args.all, confirm=args.confirm)
    if what != "changes":
        rows = cast("list[models.ModelRow]", result)
        if args.json:
            _json(out, "models", environment=what, models=[asdict(r) for r in rows])
        else:
            print(models_text(what, rows), file=out)
        return 0
    if args.json:
        fields = ("environment", "name", "before", "after")
        changes = [{f: getattr(c, f) for f in fields} for c in result]
        _json(out, f"models-{args.action}", changes=changes)
        return 0
    print(changes_text(result), file=out)
    return 0


def _scan(args: argparse.Namespace, out: TextIO) -> int:
    from mistral_nbenv.secrets.scan import run_scan

    return run_scan(args.paths, _configured_keys(), out)


def _configured_keys() -> dict[str, str]:
    """Every environment's key that can be found without calling a secret store."""
    from mistral_nbenv.secrets import keys
    from mistral_nbenv.workspace import get_settings, list_environments

    found: dict[str, str] = {}
    try:
        names = list_environments()
    except MistralEnvError:
        return found  # broken settings must not stop a scan
    for name in names:
        try:
            local = keys.local_key(get_settings(name))
        except MistralEnvError:
            continue
        if isinstance(local, keys.ResolvedKey):
            found[name] = local.value.get_secret_value()
    return found


def _cache(args: argparse.Namespace, out: TextIO) -> int:
    from mistral_nbenv.ui.display import cache_stats_text
    from mistral_nbenv.ui.reports import cache_stats, clear_cache
    from mistral_nbenv.workspace import environment_name

    env = environment_name(args.env)
    if args.action == "clear":
        removed = clear_cache(env, confirm=args.confirm)
        print(
            f"[{env}] cache cleared: {removed} entries removed (other environments untouched)",
            file=out,
        )
        return 0
    stats = cache_stats(env)
    code = 0 if stats.get("available", True) else 1
    if args.json:
        fields = {k: _plain(v) for k, v in stats.items()}
        fields["environment"] = env
        _json(out, "cache-stats", **fields)
        return code
    print(cache_stats_text(env, stats), file=out)
    return code


def _usage(args: argparse.Namespace, out: TextIO) -> int:
    from mistral_nbenv.ui.display import usage_text
    from mistral_nbenv.ui.reports import collect_usage

    report = collect_usage(args.env, all_environments=args.env is None)
    code = 1 if report.problems else 0
    if args.json:
        _json(
            out,
            "usage",
            rows=[{**asdict(r), "tokens": r.tokens} for r in report.rows],
            totals=report.totals(),
            ledgers=report.ledgers,
            problems=list(report.problems),
        )
        return code
    print(usage_text(report), file=out)
    return code


def _plain(value: Any) -> Any:
    """A JSON-ready value (paths as strings)."""
    return value if isinstance(value, str | int | float | bool | None) else str(value)


def _demo(args: argparse.Namespace, out: TextIO) -> int:
    from mistral_nbenv.ui.demo import run_demo

    return run_demo(out)


_HANDLERS = {
    "status": _status,
    "list": _list,
    "check": _check,
    "models": _models,
    "scan": _scan,
    "cache": _cache,
    "usage": _usage,
    "demo": _demo,
}


def _parser() -> argparse.ArgumentParser:
    from mistral_nbenv import __version__
    from mistral_nbenv.ui.commands import build_parser

    parser = build_parser(
        "cli",
        "mistral-nbenv",
        description="Mistral AI API settings, keys and cache across development, staging "
        "and production.",
    )
    parser.add_argument("--version", action="version", version=f"mistral-nbenv {__version__}")
    return parser


class _Scrubbed:
    """A text stream whose every write is scrubbed (known secrets, credential shapes)."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        return self._inner.write(scrub(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit code.  Nothing it prints can show a key."""
    stream = cast(TextIO, _Scrubbed(out or sys.stdout))
    from mistral_nbenv.ui.commands import environment_of

    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(stream)
        return 2
    args.env = environment_of(args, parser)
    try:
        return int(_HANDLERS[args.command](args, stream))
    except MistralEnvError as exc:
        print(f"mistral-nbenv {args.command}: error: {scrub(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `mistral-nbenv status | head`: the reader left; not an error
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
