"""IPython magics ``%mistral_env`` and ``%%mistral`` (``%load_ext mistral_nbenv``).

Grammar::

    %mistral_env                        the EnvironmentSwitcher widget (text status in a terminal)
    %mistral_env status [ENV]           badge, model, masked key and its source, cache, limits
    %mistral_env list                   every environment, the active one marked
    %mistral_env check [ENV | --all] [--online]
                                        settings valid, key found, keys isolated, models
    %mistral_env models list [ENV]      what ENV's models.list offers (aliases, deprecations)
    %mistral_env models lock [ENV | --all] [--confirm]
    %mistral_env models promote SOURCE TARGET [--confirm]
    %mistral_env use ENV [--confirm]    switch (``--confirm`` for protected environments)
    %mistral_env ENV [--confirm]        the same
    %mistral_env cache stats|clear [--env ENV]

    %%mistral [-m MODEL] [-s SYSTEM] [--no-cache] [-t TEMPERATURE] [--no-stream]
              [--chat NAME [--reset]]
    <the user message; {{name}} is the notebook's value of name>

The magics only parse, call the same core functions as the CLI and render through
:mod:`mistral_nbenv.ui.display`.  Everything heavy (the client, ``mistralai``, ipywidgets) is
imported when a magic first needs it, so ``%load_ext`` stays instant.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar, cast

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display
from IPython.utils.text import dedent

from mistral_nbenv.errors import MistralEnvError, ProductionConfirmationRequired
from mistral_nbenv.secrets import scrub
from mistral_nbenv.ui.ask import ChatAnswer, ask
from mistral_nbenv.ui.display import (
    Rich,
    answer_badge_html,
    answer_badge_text,
    badge_text,
    cache_stats_html,
    cache_stats_text,
    check_html,
    check_text,
    cleared_text,
    environments_html,
    environments_text,
    message_html,
    pending_badge_html,
    pending_badge_text,
    status_html,
    status_text,
)
from mistral_nbenv.ui.status import collect_check, collect_findings, collect_status, one_line

__all__ = ["ChatAnswer", "MistralMagics", "load_ipython_extension", "unload_ipython_extension"]

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _named_line_magic(name: str) -> Callable[[_Method], _Method]:
    """IPython's ``line_magic(name)``, typed as the decorator it is.

    IPython 9 annotates the marker as returning ``_F | Callable[[_F], _F]`` for both the
    bare and the named form, which mypy cannot apply to a method (it reads ``_F`` as
    ``Never``). Called with a name, it always returns the decorator.
    """
    return cast("Callable[[_Method], _Method]", line_magic(name))


def _named_cell_magic(name: str) -> Callable[[_Method], _Method]:
    """IPython's ``cell_magic(name)``, typed as the decorator it is (see above)."""
    return cast("Callable[[_Method], _Method]", cell_magic(name))


class _HelpShown(Exception):
    """Raised instead of exiting after argparse printed the help."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as ``UsageError`` and never exits the kernel."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"%mistral_env: {message} (see %mistral_env --help)")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status:
            raise UsageError(message or "%mistral_env: invalid arguments")
        raise _HelpShown


def _build_parser() -> argparse.ArgumentParser:
    from mistral_nbenv.ui.commands import build_parser

    return build_parser(
        "magic",
        "%mistral_env",
        parser_class=_Parser,
        description="Show and switch the Mistral environment.",
        epilog=(
            "shortcuts:\n"
            "  %mistral_env               the switcher widget\n"
            "  %mistral_env ENV           the same as: %mistral_env use ENV\n"
            "  %mistral_env ENV --confirm switch into a protected environment (production):\n"
            "                             its calls use its key and are billed to it\n"
            "\n%%mistral sends a cell to the active environment: %%mistral --help"
        ),
    )


def _words(line: str, magic: str) -> list[str]:
    """The magic line split as a POSIX shell would (quotes removed); an unbalanced quote is
    a one-line :class:`UsageError`, not shlex's traceback."""
    from IPython.utils.process import arg_split

    try:
        return list(arg_split(line, posix=True))
    except ValueError as exc:
        raise UsageError(
            f"{magic}: {exc} in {line.strip()!r}: close the quote (or escape it with \\)"
        ) from None


def _refuse_typo(words: list[str]) -> None:
    """``%mistral_env stauts``: a word that is neither a command nor an environment but
    close to a command is a one-line "did you mean", not "unknown environment"."""
    from mistral_nbenv.ui.commands import did_you_mean, names

    if not words or words[0].startswith("-") or words[0] in names("magic"):
        return
    from mistral_nbenv.workspace import environment_name

    try:
        environment_name(words[0])
    except MistralEnvError:
        guess = did_you_mean(words[0], "magic")
        if guess is not None:
            raise UsageError(
                f"%mistral_env: unknown command {words[0]!r}; did you mean {guess!r}? "
                "(see %mistral_env --help)"
            ) from None


def _show(text: str, html_text: str, metadata: dict[str, Any] | None = None) -> None:
    display(Rich(text, html_text, metadata))


def _widgets_can_render(shell: Any) -> bool:
    """True inside a Jupyter kernel (a front end that can show widgets)."""
    return getattr(shell, "kernel", None) is not None


@magics_class
class MistralMagics(Magics):
    """``%mistral_env`` (show/switch environments) and ``%%mistral`` (send a cell)."""

    def __init__(self, shell: Any = None) -> None:
        super().__init__(shell)
        self._parser: argparse.ArgumentParser | None = None  # built on first use
        self.switchers: list[Any] = []
        #: ``%%mistral --chat NAME`` histories by (environment, NAME); see :func:`mistral_chat`
        self.chats: dict[tuple[str, str], list[dict[str, str]]] = {}

    # ------------------------------------------------------------------ %mistral_env
    @_named_line_magic("mistral_env")
    def mistral_env(self, line: str = "") -> None:
        """Show or switch the Mistral environment; ``%mistral_env --help`` for the grammar."""
        from mistral_nbenv.ui.commands import environment_of, split_words

        if self._parser is None:
            self._parser = _build_parser()
        words = _words(line, "%mistral_env")
        _refuse_typo(words)
        try:
            args = self._parser.parse_args(split_words(words))
            args.env = environment_of(args, self._parser)
        except _HelpShown:
            return None
        try:
            if args.command is None:
                self._show_switcher()
            elif args.command == "status":
                self._status(args.env)
            elif args.command == "list":
                self._list()
            elif args.command == "check":
                self._check(args.env, args.all, args.online)
            elif args.command == "models":
                self._models(args)
            elif args.command == "use":
                self._use(args.env, args.confirm)
            elif args.command == "usage":
                self._usage(args.env)
            else:
                self._cache(args.action, args.env, args.confirm)
        except ProductionConfirmationRequired as exc:
            env = getattr(exc, "environment", "") or args.env
            if args.command != "use":
                raise UsageError(one_line(exc)) from None
            raise UsageError(
                f"{env} is protected; nothing was switched. "
                f"To switch anyway run: %mistral_env use {env} --confirm"
            ) from None
        except MistralEnvError as exc:
            raise UsageError(one_line(exc)) from None
        return None

    def _show_switcher(self) -> None:
        if not _widgets_can_render(self.shell):
            self._status(None)
            return
        from mistral_nbenv.ui.widget import EnvironmentSwitcher

        switcher = EnvironmentSwitcher()
        self.switchers.append(switcher)
        display(switcher)

    def _status(self, env: str | None) -> None:
        st = collect_status(env, with_cache=True)
        _show(status_text(st), status_html(st))

    def _list(self) -> None:
        from mistral_nbenv.workspace import list_environments

        statuses = [collect_status(name) for name in list_environments()]
        _show(environments_text(statuses), environments_html(statuses))

    def _check(self, env: str | None, all_environments: bool, online: bool) -> None:
        results = collect_check(env, all_environments=all_environments)
        findings = collect_findings(results, online=online)
        _show(check_text(results, findings), check_html(results, findings))

    def _models(self, args: argparse.Namespace) -> None:
        from mistral_nbenv.ui import models
        from mistral_nbenv.ui.display import changes_html, changes_text, models_html, models_text

        envs = [*args.envs, *([args.env] if args.env else [])]
        what, result = models.run(args.action, envs, every=args.all, confirm=args.confirm)
        if what == "changes":
            _show(changes_text(result), changes_html(result))
        else:
            rows = cast("list[models.ModelRow]", result)
            _show(models_text(what, rows), models_html(what, rows))

    def _use(self, env: str, confirm: bool) -> None:
        from mistral_nbenv.workspace import use_environment

        use_environment(env, confirm=confirm)
        st = collect_status(None)
        _show(status_text(st), status_html(st))

    def _usage(self, env: str | None) -> None:
        from mistral_nbenv.ui.display import usage_html, usage_text
        from mistral_nbenv.ui.reports import collect_usage

        report = collect_usage(env, all_environments=env is None)
        _show(usage_text(report), usage_html(report))

    def _cache(self, action: str, env: str | None, confirm: bool) -> None:
        from mistral_nbenv.ui.reports import cache_stats, clear_cache
        from mistral_nbenv.workspace import environment_name

        name = environment_name(env)
        if action == "stats":
            stats = cache_stats(name)
            _show(cache_stats_text(name, stats), cache_stats_html(name, stats))
        else:
            removed = clear_cache(name, confirm=confirm)
            msg = cleared_text(removed)
            _show(f"{badge_text(name)} {msg}", message_html(msg, name))

    # ------------------------------------------------------------------ %%mistral
    @magic_arguments()
    @argument("-m", "--model", help="model (default: the environment's chat model)")
    @argument("-s", "--system", help="system prompt ({{name}} is replaced, as in the cell)")
    @argument("--no-cache", action="store_true", help="skip the response cache for this call")
    @argument("-t", "--temperature", type=float, help="sampling temperature")
    @argument(
        "--max-tokens",
        type=int,
        metavar="N",
        help="longest answer in tokens (bounds what the call can cost)",
    )
    @argument("--no-stream", action="store_true", help="wait for the whole answer, then show it")
    @argument("--chat", metavar="NAME", help="continue the conversation NAME (see mistral_chat)")
    @argument("--reset", action="store_true", help="with --chat: start NAME over")
    @_named_cell_magic("mistral")
    @no_var_expand  # {{name}} is ours (IPython would turn it into {name}); {x} stays literal
    def mistral(self, line: str, cell: str) -> ChatAnswer:
        """Send the cell as the user message; show the answer as it arrives (Markdown when it
        ends); return it (``_``). ``{{name}}`` in the cell or ``-s`` is the value of ``name``
        in the notebook (single braces stay as they are)."""
        namespace = getattr(self.shell, "user_ns", {}) or {}
        # posix splitting, so -s 'Be brief.' loses its quotes (parse_argstring keeps them)
        args = self.mistral.parser.parse_args(_words(interpolate(line, namespace), "%%mistral"))
        message = interpolate(dedent(cell).strip(), namespace)
        if not message:
            raise UsageError("%%mistral: the cell is empty; write the message below the magic line")
        if args.reset and not args.chat:
            raise UsageError("%%mistral: --reset goes with --chat NAME")
        from mistral_nbenv.workspace import current_environment, get_client

        system = args.system or None
        history: list[dict[str, str]] = []
        if args.chat:
            key = (current_environment(), args.chat)
            if args.reset:
                self.chats.pop(key, None)
            history = self.chats.setdefault(key, [])
        messages = [m for m in history if m["role"] != "system"]
        if system or (history and history[0]["role"] == "system"):
            first = system or history[0]["content"]
            messages.insert(0, {"role": "system", "content": first})
        messages.append({"role": "user", "content": message})
        kwargs: dict[str, Any] = {"messages": messages}
        if args.model:
            kwargs["model"] = args.model
        if args.temperature is not None:
            kwargs["temperature"] = args.temperature
        if args.max_tokens is not None:
            kwargs["max_tokens"] = args.max_tokens
        if args.no_cache:
            kwargs["cache"] = False
        try:
            client = get_client()
            if args.no_stream:
                answer = ask(client, **kwargs)
            else:
                answer = self._stream_answer(client, kwargs)
        except MistralEnvError as exc:
            raise UsageError(one_line(exc)) from None
        if args.chat:
            history[:] = [*messages, {"role": "assistant", "content": answer.content}]
        if not answer._shown:
            _show(answer_badge_text(answer), answer_badge_html(answer), answer.provenance)
        return answer

    def _stream_answer(self, client: Any, kwargs: dict[str, Any]) -> ChatAnswer:
        """The answer streamed into the cell (a kernel), at most ten updates a second."""
        from mistral_nbenv.ui.ask import _context, ask_stream

        if not _widgets_can_render(self.shell):  # a terminal: one display at the end
            return ask_stream(client, **kwargs)
        sent, _reason = _context(client, kwargs)
        env = client.environment
        pending = Rich(pending_badge_text(env, sent), pending_badge_html(env, sent))
        badge = display(pending, display_id=True)
        body = display(_Answer("…"), display_id=True)
        shown = [0.0]

        def on_text(text: str) -> None:
            now = time.monotonic()
            if now - shown[0] >= UPDATE_EVERY:
                shown[0] = now
                body.update(_Answer(text + " ▌"))

        answer = ask_stream(client, on_text, **kwargs)
        meta = answer.provenance
        badge.update(Rich(answer_badge_text(answer), answer_badge_html(answer), meta))
        body.update(_Answer(answer.content, meta))
        answer._shown = True  # Out[n] stays empty: the answer is above
        return answer


def mistral_chat(name: str, environment: str | None = None) -> list[dict[str, str]]:
    """The messages of ``%%mistral --chat NAME`` so far in ``environment`` (default: the
    active one), oldest first, as plain dicts (a copy: editing it changes nothing). Put in
    the notebook's namespace by ``%load_ext mistral_nbenv``."""
    from IPython import get_ipython

    from mistral_nbenv.workspace import environment_name

    shell = get_ipython()
    magics = shell.magics_manager.registry.get("MistralMagics") if shell is not None else None
    chats = getattr(magics, "chats", {})
    history = chats.get((environment_name(environment), name), [])
    return [dict(message) for message in history]


#: Seconds between two updates of a streaming answer (frequent updates flicker in VS Code).
UPDATE_EVERY = 0.1
_NAME = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*\}\}")


def interpolate(text: str, namespace: Mapping[str, Any]) -> str:
    """``{{name}}`` (or ``{{name.attr}}``) replaced by its value in ``namespace``; single
    braces stay as they are, so code in a prompt is safe. An unknown name is a UsageError."""

    def value(match: re.Match[str]) -> str:
        first, *rest = match.group(1).split(".")
        if first not in namespace:
            raise UsageError(
                f"%%mistral: {{{{{match.group(1)}}}}} names {first!r}, which is not defined "
                "in this notebook. Define it, or write {{ as text with a space: { {"
            )
        found = namespace[first]
        for attr in rest:
            try:
                found = getattr(found, attr)
            except AttributeError:
                raise UsageError(
                    f"%%mistral: {{{{{match.group(1)}}}}}: {first!r} has no attribute {attr!r}"
                ) from None
        return str(found)

    return _NAME.sub(value, text)


class _Answer:
    """An answer (or its beginning) as Markdown, with its provenance as output metadata."""

    def __init__(self, text: str, metadata: dict[str, Any] | None = None) -> None:
        self.text = scrub(text)
        self.metadata = metadata

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        data = {"text/markdown": self.text, "text/plain": self.text}
        return (data, {"mistral_nbenv": self.metadata}) if self.metadata else data


_remove_wait_listener: Any = None


def _announce_wait(environment: str, seconds: float) -> None:
    """Rate-limit listener: one line per waiting call, whatever ``debug`` is: a grey note
    in the cell in a notebook, stderr in a terminal (``waiting 4.0 s for staging's 60
    requests/min, 500,000 tokens/min``)."""
    try:
        from mistral_nbenv.workspace import get_settings

        limits = get_settings(environment).rate_limits
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        parts = [f"{rpm:,} requests/min" if rpm else "", f"{tpm:,} tokens/min" if tpm else ""]
        budget = ", ".join(p for p in parts if p) or "rate limit"
    except MistralEnvError:
        budget = "rate limit"
    text = f"waiting {seconds:.1f} s for {environment}'s {budget}"
    from IPython import get_ipython

    if _widgets_can_render(get_ipython()):
        _show(text, message_html(text, environment))
    else:
        print(f"mistral_nbenv: {text}", file=sys.stderr)


class _OneLineWarnings:
    """``warnings.showwarning`` while the extension is loaded: this package's warnings as
    one line on stderr (``mistral_nbenv: ...``), without a file name or source line; every
    other warning as before."""

    def __init__(self, previous: Callable[..., None]) -> None:
        self.previous = previous

    def __call__(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        from mistral_nbenv.errors import MistralEnvWarning

        if isinstance(category, type) and issubclass(category, MistralEnvWarning):
            text = " ".join(str(message).split())
            if not text.startswith("mistral_nbenv"):
                text = f"mistral_nbenv: {text}"
            print(text, file=file or sys.stderr)
            return
        self.previous(message, category, filename, lineno, file, line)


def _install_one_line_warnings() -> None:
    if not isinstance(warnings.showwarning, _OneLineWarnings):
        warnings.showwarning = _OneLineWarnings(warnings.showwarning)


def _remove_one_line_warnings() -> None:
    hook = warnings.showwarning
    if isinstance(hook, _OneLineWarnings):
        warnings.showwarning = hook.previous


def _release_displayed_stream(result: Any) -> None:
    """``post_run_cell``: a live stream kept in ``Out[n]`` gives its concurrency slot back.

    The stream stays readable (``for ev in Out[3]``); it just no longer counts against
    ``features.max_concurrent_requests``, so a cell ending in ``client.chat.stream(...)``
    never blocks the kernel's next calls.
    """
    streams = sys.modules.get("mistral_nbenv.client.streams")
    value = getattr(result, "result", None)
    if streams is not None and isinstance(value, (streams.Stream, streams.AsyncStream)):
        value.release_slot()


def load_ipython_extension(ip: Any) -> None:
    """Register the magics, the rate-limit wait note and the Out[n] stream rule (idempotent)."""
    global _remove_wait_listener
    ip.register_magics(MistralMagics)
    ip.push({"mistral_chat": mistral_chat})
    with contextlib.suppress(ValueError):  # registered by an earlier %load_ext
        ip.events.unregister("post_run_cell", _release_displayed_stream)
    ip.events.register("post_run_cell", _release_displayed_stream)
    if _remove_wait_listener is None:
        from mistral_nbenv.policies.ratelimit import add_wait_listener

        _remove_wait_listener = add_wait_listener(_announce_wait)
    _install_one_line_warnings()
    _announce_protected_start()


def ask_before_spending(question: str) -> bool:
    """``budget.confirm_above_usd`` in a notebook: one line, answered y (sent) or anything
    else (not sent). A front end that cannot ask (no stdin) counts as no."""
    try:
        answer = input(f"{question} [y/N] ")
    except Exception:  # StdinNotImplementedError (a kernel run without stdin), EOFError
        print(
            "mistral_nbenv: this front end cannot ask for confirmation, so the call was not "
            "sent (budget.confirm_above_usd).",
            file=sys.stderr,
        )
        return False
    return answer.strip().lower() in ("y", "yes")


def _announce_protected_start() -> None:
    """A kernel started in a protected environment: the red banner, and calls wait."""
    from mistral_nbenv.workspace import workspace

    workspace().confirmer = ask_before_spending
    try:
        waiting = workspace().enter_notebook()
    except MistralEnvError as exc:  # broken settings: the first command will say so
        print(f"mistral_nbenv: {one_line(exc)}", file=sys.stderr)
        return
    if waiting is None:
        return
    name = waiting.environment
    msg = (
        f"this kernel started in {name} (from {workspace().detect()[1]}). Nothing is sent "
        f"until you confirm: %mistral_env use {name} --confirm "
        f"(or %mistral_env use development). confirm_in_notebooks = false under [{name}] "
        "turns this off."
    )
    _show(f"{badge_text(name, protected=True)} {msg}", message_html(msg, name))


def unload_ipython_extension(ip: Any) -> None:
    """Remove the magics, close any switcher widgets and every client (safe to call twice)."""
    global _remove_wait_listener
    if _remove_wait_listener is not None:
        _remove_wait_listener()
        _remove_wait_listener = None
    _remove_one_line_warnings()
    from mistral_nbenv.workspace import workspace

    workspace().leave_notebook()
    with contextlib.suppress(ValueError):
        ip.events.unregister("post_run_cell", _release_displayed_stream)
    manager = ip.magics_manager
    instance = manager.registry.pop("MistralMagics", None)
    for switcher in getattr(instance, "switchers", []):
        switcher.close()
    manager.magics["line"].pop("mistral_env", None)
    manager.magics["cell"].pop("mistral", None)
    if ip.user_ns.get("mistral_chat") is mistral_chat:
        del ip.user_ns["mistral_chat"]
    from mistral_nbenv.workspace import close_clients

    close_clients()
