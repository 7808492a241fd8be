"""The test matrix: ``nox`` runs what ``bash .ci/run`` runs (``nox -l`` lists the sessions).

* ``lint``: ruff check, ruff format --check, mypy (Python 3.11);
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


def _versions(session: nox.Session) -> None:
    session.run("python", ".ci/versions.py", silent=False)


@nox.session(python=FULL)
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check and mypy, with the pinned tools."""
    session.install(*CONSTRAINTS, "-e", ".[lint]")
    session.run("ruff", "--version")
    session.run("mypy", "--version")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "mistral_nbenv")


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The pytest suite; the browser test only on the full Python."""
    full = session.python == FULL
    session.install(*CONSTRAINTS, "-e", ".[test,browser]" if full else ".[test]")
    _versions(session)
    args = ["-q", "-p", "no:randomly"]
    if not full:
        args += ["-m", "not browser"]
    session.run("python", "-m", "pytest", *args, *session.posargs)
