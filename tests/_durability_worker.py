"""A user's batch script, run in its own process by ``tests/test_durability.py``.

``python -c "from tests._durability_worker import main; main()" MODE ...`` with
``MISTRAL_NBENV_SETTINGS`` pointing at a loopback project. Modes:

* ``pool CONTEXT COUNT``: ``with multiprocessing.get_context(CONTEXT).Pool(4) as pool:
  pool.map(ask, prompts)`` (``Pool.__exit__`` terminates the workers: no ``atexit`` runs);
* ``fork-after-use COUNT``: one call in the parent first, then the same with ``fork``;
* ``again COUNT``: the same prompts, one after another, in this process;
* ``kill``: one call, then ``returned`` on stdout, then wait to be killed.

Prints the answers as JSON (``kill``: the one line).
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time


def ask(prompt: str) -> str:
    """One call as a user's script makes it (staging: cache on)."""
    from mistral_nbenv import get_client

    answer = get_client("staging").chat.complete(messages=[{"role": "user", "content": prompt}])
    return str(answer.choices[0].message.content)


def prompts(count: int) -> list[str]:
    """The batch's prompts."""
    return [f"batch prompt {i}" for i in range(count)]


def main() -> None:
    """Run one mode (see the module docstring)."""
    mode, *args = sys.argv[1:]
    if mode == "pool":
        context, count = args[0], int(args[1])
        with multiprocessing.get_context(context).Pool(4) as pool:
            answers = pool.map(ask, prompts(count))
    elif mode == "fork-after-use":
        ask("the parent's own question")  # a keep-alive connection the children inherit
        with multiprocessing.get_context("fork").Pool(4) as pool:
            answers = pool.map(ask, prompts(int(args[0])))
    elif mode == "again":
        answers = [ask(prompt) for prompt in prompts(int(args[0]))]
    elif mode == "kill":
        ask("asked just before the end")
        print("returned", flush=True)
        time.sleep(120)
        return
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(answers))


if __name__ == "__main__":
    main()
