"""``mistral-nbenv demo``: the quickstart flow in a terminal, with or without an API key.

Without a development key it starts the built-in loopback server
(:mod:`mistral_nbenv.testing`) with its own temporary settings and cache, and says so;
with a key (``MISTRAL_API_KEY`` / ``MISTRAL_API_KEY_DEV`` or configured) it sends one tiny
request to the real API.  Either way it shows: the environment status, a chat call, the
same call served from the cache, an environment guard, and the production confirmation.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any, TextIO

from mistral_nbenv.errors import (
    EnvironmentGuardError,
    MissingAPIKeyError,
    MistralEnvError,
    ProductionConfirmationRequired,
)
from mistral_nbenv.ui.ask import ChatAnswer, ask
from mistral_nbenv.ui.display import status_text
from mistral_nbenv.ui.status import collect_status, one_line

__all__ = ["run_demo"]

DEMO_ENV = "development"
PROMPT = "In one short sentence: why keep separate API keys per environment?"

#: Fake keys for the local run: distinct per environment, obviously not real.
_LOCAL_KEYS = {
    "development": "demo-local-development-key-0000",
    "staging": "demo-local-staging-key-000000000",
    "production": "demo-local-production-key-000000",
}


@contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set process environment variables for the block, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _reset_core() -> None:
    """Forget settings, resolved keys and clients so the next call sees the current setup."""
    from mistral_nbenv.workspace import reset

    reset()


def _usable_key() -> tuple[bool, str]:
    """Whether development has a key; the key's source, or why there is none (if unusual)."""
    from mistral_nbenv.workspace import get_api_key

    try:
        resolved = get_api_key(DEMO_ENV)
    except MissingAPIKeyError:
        return False, ""
    except MistralEnvError as exc:  # e.g. a secret store that cannot be reached
        return False, f"Your development key could not be read: {one_line(exc)}"
    return True, f"{resolved.masked} from {resolved.source}"


def _write_local_settings(directory: Path, server_url: str) -> Path:
    lines = [
        "# written by `mistral-nbenv demo` for its local run",
        "[default]",
        f'server_url = "{server_url}"',
        "[default.cache]",
        f'directory = "{(directory / "cache").as_posix()}"',
    ]
    for env, key in _LOCAL_KEYS.items():
        lines += [f"[{env}]", f'api_key = "{key}"']
    path = directory / "settings.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _ask(client: Any, cache: bool | str) -> ChatAnswer:
    return ask(client, messages=[{"role": "user", "content": PROMPT}], max_tokens=60, cache=cache)


def _flow(say: Any) -> None:
    from mistral_nbenv.workspace import (
        current_environment,
        get_client,
        get_settings,
        require_production,
        use_environment,
    )

    say("1. The active environment")
    say(_indent(status_text(collect_status(DEMO_ENV, with_cache=True))))

    client = get_client(DEMO_ENV)
    _ = client.raw  # build the SDK now, so the timings below are the calls alone
    say("\n2. A chat call (sent to the server)")
    first = _ask(client, "refresh")
    say(f"   > {PROMPT}")
    say(f"   < {first.content}")
    say(f"   model {first.requested_model or '?'}, {first.elapsed_ms:.1f} ms")

    say("\n3. The same call again (served from the cache, not billed)")
    if not get_settings(DEMO_ENV).cache.enabled:
        say("   (development keeps the cache off by default; this call asks with cache=True)")
    second = _ask(client, True)
    origin = "from the cache" if second.cached else "from the server (the cache did not answer)"
    say(f"   < {second.content}")
    say(f"   {origin}, {second.elapsed_ms:.1f} ms (first call {first.elapsed_ms:.1f} ms)")

    say("\n4. A guard: code that must only run in production")
    try:
        require_production("publish the evaluation report")
        say("   allowed (this process is in production)")
    except EnvironmentGuardError as exc:
        say(f"   refused: {one_line(exc)}")

    say("\n5. Switching to production needs an explicit confirmation")
    try:
        use_environment("production")
        say("   switched (production is not protected in these settings)")
    except ProductionConfirmationRequired as exc:
        say(f"   refused: {one_line(exc)}")
        say("   in a notebook: %mistral_env use production --confirm")
    say(f"   still in: {current_environment()}")


def _indent(text: str) -> str:
    return "\n".join("   " + line for line in text.splitlines())


def run_demo(out: TextIO | None = None) -> int:
    """Run the quickstart flow, printing to ``out``; 0 on success, 1 on an error."""
    stream = out if out is not None else sys.stdout

    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)

    from mistral_nbenv.workspace import current_environment, use_environment

    with ExitStack() as stack:
        has_key, detail = _usable_key()
        if has_key:
            from mistral_nbenv.workspace import get_settings

            endpoint = get_settings(DEMO_ENV).server_url or "the Mistral API (api.mistral.ai)"
            say(f"Using {endpoint} with your development key {detail}.")
            say("This sends one small request (about 60 tokens at most).\n")
        else:
            from mistral_nbenv.testing import MistralTestServer

            server = stack.enter_context(MistralTestServer())
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mistral-nbenv-")))
            settings_file = _write_local_settings(tmp, server.url)
            stack.enter_context(
                _environ(
                    {
                        "MISTRAL_NBENV_SETTINGS": str(settings_file),
                        "MISTRAL_NBENV_SERVER_URL": server.url,
                        "MISTRAL_NBENV_CACHE__DIRECTORY": str(tmp / "cache"),
                        "MISTRAL_NBENV_OFFLINE": "false",
                    }
                )
            )
            stack.callback(_reset_core)
            _reset_core()
            say(
                "No MISTRAL_API_KEY (or MISTRAL_API_KEY_DEV) is available, so this demo uses "
                f"the built-in local server at {server.url} — nothing leaves this machine."
            )
            if detail:
                say(f"   ({detail})")
            say("   The local server answers by echoing the prompt.")
            say(f"   Its settings and cache live in a temporary directory: {tmp}\n")
        previous = current_environment()
        try:
            use_environment(DEMO_ENV)
            _flow(say)
        except MistralEnvError as exc:
            say(f"\nerror: {one_line(exc)}")
            return 1
        finally:
            with suppress(MistralEnvError):
                use_environment(previous, confirm=True)
        say("\nDone. In a notebook: %load_ext mistral_nbenv, then %mistral_env.")
    return 0
