"""Leak guards and hygiene checks on the project's files, used by ``check`` (CLI and magic).

These complement what key resolution already refuses (a key shared by two environments):
a ``.secrets.toml`` tracked by git or readable by others, a literal key in the committed
``settings.toml``, settings keys nobody reads (typos), ignored variables.
"""

from __future__ import annotations

import difflib
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from mistral_nbenv.config import SCHEMA, Project, Settings
from mistral_nbenv.secrets.backends import is_reference

__all__ = ["Finding", "project_findings"]


@dataclass(frozen=True)
class Finding:
    """One problem about the project: ``"error"`` fails ``check``, ``"warning"`` fails
    ``check --strict``, ``"note"`` (an expected difference, said so in the settings) never."""

    message: str
    severity: str = "warning"
    environments: tuple[str, ...] = field(default=())

    @property
    def is_error(self) -> bool:
        """True when this finding must fail ``mistral-nbenv check``."""
        return self.severity == "error"

    def fails(self, *, strict: bool) -> bool:
        """True when this finding fails ``check`` (``strict``: warnings too)."""
        return self.is_error or (strict and self.severity == "warning")


def _tracked_by_git(path: Path) -> bool:
    git = shutil.which("git")
    if git is None:
        return False
    try:
        done = subprocess.run(
            [git, "ls-files", "--error-unmatch", path.name],
            cwd=path.parent,
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _file_findings(secrets_file: Path | None) -> list[Finding]:
    findings: list[Finding] = []
    if secrets_file is None:
        return findings
    if _tracked_by_git(secrets_file):
        findings.append(
            Finding(
                f"{secrets_file} is tracked by git: keys in it are (or will be) in the "
                f"repository history. Run `git rm --cached {secrets_file.name}`, add it to "
                f".gitignore, and rotate every key it held.",
                severity="error",
            )
        )
    if os.name == "posix":
        mode = stat.S_IMODE(secrets_file.stat().st_mode)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            findings.append(
                Finding(
                    f"{secrets_file} is readable by other users (mode {mode:o}). "
                    f"Run `chmod 600 {secrets_file}`."
                )
            )
    return findings


def _settings_findings(settings: Settings) -> list[Finding]:
    findings: list[Finding] = []
    env = settings.environment
    origin = settings.source_of("api_key")
    if (
        settings.api_key is not None
        and not is_reference(settings.api_key.get_secret_value())
        and origin.startswith("settings.toml")
    ):
        findings.append(
            Finding(
                f"A literal api_key for '{env}' is in settings.toml ({origin}), a file that is "
                f"normally committed. Move it to .secrets.toml or use a reference "
                f"(env:, vault:, aws-sm:, gcp-sm:).",
                environments=(env,),
            )
        )
    for key in settings.unknown_keys:
        guess = difflib.get_close_matches(key, SCHEMA, n=1)
        hint = f" Did you mean `{guess[0]}`?" if guess else ""
        findings.append(
            Finding(
                f"Unknown setting `{key}` for '{env}' (from {settings.source_of(key)}) "
                f"is not used.{hint}",
                environments=(env,),
            )
        )
    return findings


def _section_typos(project: Project) -> list[Finding]:
    """A section like ``[stagging]`` silently makes a further environment: said, with the
    environment it probably meant."""
    from mistral_nbenv.config.names import ALIASES, CANONICAL

    known = [*CANONICAL, *ALIASES]
    found = []
    for name in project.environments:
        if name in CANONICAL:
            continue
        guess = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        if guess:
            meant = ALIASES.get(guess[0], guess[0])
            found.append(
                Finding(
                    f"[{name}] is a further environment of its own; did you mean [{meant}]? "
                    f"Rename the section if so (values under [{name}] do not reach {meant}).",
                    environments=(name,),
                )
            )
    return found


def project_findings(project: Project, settings_list: list[Settings]) -> list[Finding]:
    """Findings about the project's files and the given environments' settings."""
    findings = _file_findings(project.secrets_file)
    for variable in project.ignored_variables:
        findings.append(
            Finding(
                f"{variable} is ignored: keys are per environment. Use MISTRAL_API_KEY_DEV / "
                f"_STAGING / _PROD or api_key in .secrets.toml."
            )
        )
    findings += _section_typos(project)
    seen: set[str] = set()
    for settings in settings_list:
        for finding in _settings_findings(settings):
            if finding.message not in seen:
                seen.add(finding.message)
                findings.append(finding)
    return findings
