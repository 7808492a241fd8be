"""Find Mistral API keys in files about to be shared: the engine of ``mistral-nbenv scan``.

Two kinds of finding:

- a configured key value (``known_keys``) anywhere in a scanned file;
- a Mistral-looking key — 32 mixed-case letters and digits, standing alone (not a piece of
  a longer base64 run, a path or an identifier) — after ``Bearer`` anywhere; on a line
  that mentions "mistral", within two lines of one, or in a notebook cell whose source
  mentions it; assigned to a credential-like name (``api_key``, ``token``, ``secret``,
  ``password``, ``auth``, ...); or printed as a literal (``print("…")``) or next to such a
  name.  Hex digests, word-like identifiers and placeholders (containing FAKE, DUMMY,
  EXAMPLE, PLACEHOLDER, REDACTED or XXXX) are not reported by the pattern; configured keys
  always are.

Notebooks are read cell by cell, outputs included (stream text, ``text/*`` and JSON data of
results and displays, error tracebacks).  Directories are recursed, skipping ``.git``,
virtual environments, ``node_modules``, caches and ``.ipynb_checkpoints``; files that git
ignores are skipped (that is where keys belong).  Keys are never printed: a finding holds
only the masked form ``…abcd``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from mistral_nbenv.secrets import key_token, looks_like_key, mask

__all__ = [
    "MAX_FILE_BYTES",
    "SCANNED_SUFFIXES",
    "SKIPPED_DIRECTORIES",
    "Finding",
    "ScanResult",
    "is_scanned_name",
    "mask",
    "run_scan",
    "scan",
    "scan_paths",
]

#: File name endings scanned when a directory is walked (``.env`` files are matched by name).
SCANNED_SUFFIXES = (".ipynb", ".py", ".toml", ".json", ".yaml", ".yml", ".env")
#: Directory names never entered (any directory holding ``pyvenv.cfg`` is skipped too).
SKIPPED_DIRECTORIES = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        "node_modules",
        "__pycache__",
        ".ipynb_checkpoints",
        ".tox",
        ".nox",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
    }
)
#: Larger files are skipped.
MAX_FILE_BYTES = 20 * 1024 * 1024
#: Configured keys shorter than this are not searched for (too many false matches).
MIN_KNOWN_KEY_LENGTH = 8
#: Lines either side of a "mistral" mention that count as near it.
CONTEXT_LINES = 2

_MISTRAL_RE = re.compile(r"mistral", re.IGNORECASE)
_CREDENTIAL = (
    r"(?:mistral|api[_\-.]?key|apikey|secret|token|passw(?:or)?d|pwd|credential|auth"
    r"|bearer|access[_\-.]?key|private[_\-.]?key)"
)
# ``name = "``, ``"name": "``, ``name=`` (kwargs), ``name: `` (YAML), just before the token.
_KEY_NAME_RE = re.compile(_CREDENTIAL + r"[\w\-.]*[\"']?\s*[:=]\s*(?:f?[\"'])?$", re.IGNORECASE)
_BEARER_RE = re.compile(r"\bbearer\s+$", re.IGNORECASE)
# print("<token>") / print(f"token: <token>") / print("api key", "<token>")
_PRINT_RE = re.compile(r"\bprint\s*\((.*)$")
_PRINT_NAME_RE = re.compile(_CREDENTIAL, re.IGNORECASE)
_LITERAL_START_RE = re.compile(r"^\s*f?[\"']$")
_PLACEHOLDER_RE = re.compile(r"fake|dummy|example|placeholder|redacted|xxxx", re.IGNORECASE)
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


KnownKeys = Mapping[str, str | _Secret] | Iterable[str | _Secret]
"""Key values, or ``{label: value}`` (the label, e.g. an environment, names the finding)."""


@dataclass(frozen=True)
class Finding:
    """A possible key: where it is (never the key itself) and why it was reported."""

    path: Path
    cell: int | None
    line: int
    masked: str
    reason: str
    output: int | None = None

    @property
    def location(self) -> str:
        """``path:cell:line`` in a notebook (cells counted from 1), else ``path:line``."""
        if self.cell is None:
            return f"{self.path}:{self.line}"
        return f"{self.path}:{self.cell}:{self.line}"

    def __str__(self) -> str:
        where = f", in output {self.output} of the cell" if self.output is not None else ""
        return f"{self.location}: {self.masked} ({self.reason}{where})"


@dataclass
class ScanResult:
    """Findings plus what was scanned and skipped."""

    findings: list[Finding] = field(default_factory=list)
    files_scanned: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    missing: list[Path] = field(default_factory=list)
    #: Files that could not be read whole (a malformed notebook): (path, why).
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    def _skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


def is_scanned_name(name: str) -> bool:
    """Whether a file name is one the directory walk scans."""
    lower = name.lower()
    return lower.endswith(SCANNED_SUFFIXES) or lower == ".env" or lower.startswith(".env.")


def _known(known_keys: KnownKeys) -> list[tuple[str, str]]:
    pairs: list[tuple[str, Any]] = (
        [(str(label), value) for label, value in known_keys.items()]
        if isinstance(known_keys, Mapping)
        else [("", value) for value in known_keys]
    )
    result = []
    for label, value in pairs:
        text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
        text = text.strip()
        if len(text) >= MIN_KNOWN_KEY_LENGTH:
            reason = f"configured key for {label}" if label else "configured key"
            result.append((text, reason))
    return result


def _looks_like_key(token: str) -> bool:
    """Mixed case (so no hex digest), not a CamelCase run of words, not a placeholder."""
    return looks_like_key(token) and not _PLACEHOLDER_RE.search(token)


def _reason(before: str, near_mistral: bool) -> str | None:
    """Why a key-shaped token is reported, from the text before it on its line (or None)."""
    if _BEARER_RE.search(before):
        return "looks like a Mistral key after 'Bearer'"
    if near_mistral:
        return "looks like a Mistral key near 'mistral'"
    if _KEY_NAME_RE.search(before):
        return "looks like a Mistral key assigned to a credential-like name"
    printed = _PRINT_RE.search(before)
    if printed is not None:
        args = printed.group(1)
        if _LITERAL_START_RE.match(args) or _PRINT_NAME_RE.search(args):
            return "looks like a Mistral key printed by print()"
    return None


class _TextScanner:
    def __init__(self, known: list[tuple[str, str]]) -> None:
        self.known = known

    def scan(self, text: str, *, context: bool = False) -> Iterator[tuple[int, str, str]]:
        """Yield (line number, masked key, reason); ``context``: the text is near "mistral"."""
        lines = _ANSI_RE.sub("", text).splitlines()
        mentions = [bool(_MISTRAL_RE.search(line)) for line in lines]
        for index, line in enumerate(lines):
            seen: set[str] = set()
            for value, reason in self.known:
                if value in line and value not in seen:
                    seen.add(value)
                    yield index + 1, mask(value), reason
            for match in key_token().finditer(line):
                token = match.group()
                if token in seen or not _looks_like_key(token):
                    continue
                low, high = max(0, index - CONTEXT_LINES), index + CONTEXT_LINES + 1
                why = _reason(line[: match.start()], context or any(mentions[low:high]))
                if why is None:
                    continue
                seen.add(token)
                yield index + 1, mask(token), why


def _text(value: object) -> str:
    if isinstance(value, list):
        return "".join(str(part) for part in value)
    return value if isinstance(value, str) else ""


def _output_texts(output: Mapping[str, Any]) -> list[str]:
    kind = output.get("output_type")
    if kind == "stream":
        return [_text(output.get("text"))]
    if kind == "error":
        traceback = _ANSI_RE.sub("", "\n".join(_text(line) for line in output.get("traceback", [])))
        evalue = _text(output.get("evalue"))
        # The value usually ends the traceback too: scan it once.
        return [traceback] if evalue in traceback else [traceback, evalue]
    texts = []
    for mime, data in (output.get("data") or {}).items():
        if mime.startswith("text/"):
            texts.append(_text(data))
        elif mime.endswith("json"):
            texts.append(json.dumps(data, indent=1))
    return texts


def _attachment_texts(attachments: Any) -> list[str]:
    """The text of a cell's attachments (``text/*`` bundles are base64 in the file)."""
    import base64
    import binascii

    texts: list[str] = []
    if not isinstance(attachments, dict):
        return texts
    for bundle in attachments.values():
        if not isinstance(bundle, dict):
            continue
        for mime, data in bundle.items():
            if not (isinstance(mime, str) and mime.startswith("text/")):
                continue
            raw = _text(data)
            try:
                texts.append(base64.b64decode(raw, validate=False).decode("utf-8", "replace"))
            except (binascii.Error, ValueError):
                texts.append(raw)
    return texts


def _scan_notebook(path: Path, raw: str, scanner: _TextScanner) -> list[Finding] | None:
    try:
        notebook = json.loads(raw)
    except ValueError:
        return None
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    if not isinstance(cells, list):
        return None
    findings: list[Finding] = []
    for number, cell in enumerate(cells, start=1):
        if not isinstance(cell, dict):
            continue
        source = _text(cell.get("source"))
        for line, masked, reason in scanner.scan(source):
            findings.append(Finding(path, number, line, masked, reason))
        # An output printed by a cell that mentions mistral or an API key is near it.
        near = bool(_MISTRAL_RE.search(source) or re.search(r"api[_\-.]?key", source, re.I))
        for out_number, output in enumerate(cell.get("outputs") or [], start=1):
            if not isinstance(output, dict):
                continue
            for text in _output_texts(output):
                for line, masked, reason in scanner.scan(text, context=near):
                    findings.append(Finding(path, number, line, masked, reason, out_number))
        # metadata (the cell's own) and attachments: the key shape near "mistral" too
        extra = [json.dumps(cell.get("metadata") or {}, indent=1)]
        extra += _attachment_texts(cell.get("attachments"))
        for text in extra:
            for line, masked, reason in scanner.scan(text):
                findings.append(Finding(path, number, line, masked, reason + " (metadata)"))
    for line, masked, reason in scanner.scan(json.dumps(notebook.get("metadata") or {}, indent=1)):
        findings.append(Finding(path, None, line, masked, reason + " in notebook metadata"))
    # A configured key elsewhere in the file (widget state, anything else).
    found = {f.masked for f in findings}
    for line, masked, reason in _TextScanner(scanner.known).scan(raw):
        if masked not in found and reason.startswith("configured"):
            found.add(masked)
            findings.append(Finding(path, None, line, masked, reason + " in notebook metadata"))
    return findings


def _scan_file(path: Path, scanner: _TextScanner, result: ScanResult) -> None:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            result._skip("too large")
            return
        data = path.read_bytes()
    except OSError:
        result._skip("unreadable")
        return
    if b"\0" in data[:8192]:
        result._skip("binary")
        return
    text = data.decode("utf-8", errors="replace")
    result.files_scanned += 1
    if path.suffix.lower() == ".ipynb":
        try:
            notebook_findings = _scan_notebook(path, text, scanner)
        except (RecursionError, TypeError, AttributeError, ValueError) as exc:
            # a malformed notebook: said, its text still scanned, and the scan goes on
            result.unreadable.append((path, f"not a notebook: {type(exc).__name__}"))
            notebook_findings = None
        if notebook_findings is not None:
            result.findings += notebook_findings
            return
    for line, masked, reason in scanner.scan(text):
        result.findings.append(Finding(path, None, line, masked, reason))


def _git_root(directory: Path, cache: dict[Path, Path | None]) -> Path | None:
    chain = []
    current: Path | None = directory
    root: Path | None = None
    while current is not None:
        if current in cache:
            root = cache[current]
            break
        chain.append(current)
        if (current / ".git").exists():
            root = current
            break
        current = current.parent if current.parent != current else None
    for seen in chain:
        cache[seen] = root
    return root


def _git_ignored(root: Path, files: Sequence[Path]) -> set[Path]:
    """The subset of ``files`` (inside work tree ``root``) that git ignores; one subprocess."""
    relative = [os.path.relpath(f, root) for f in files]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"}
    }
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "check-ignore", "--stdin", "-z"],
            input="\0".join(relative).encode() + b"\0",
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return set()  # no usable git: scan everything
    if done.returncode not in (0, 1):
        return set()
    ignored = {item.decode() for item in done.stdout.split(b"\0") if item}
    return {f for f, rel in zip(files, relative, strict=True) if rel in ignored}


def _walk(directory: Path) -> Iterator[Path]:
    for current, dirs, names in os.walk(directory):
        base = Path(current)
        dirs[:] = sorted(
            d
            for d in dirs
            if d not in SKIPPED_DIRECTORIES
            and not (base / d).is_symlink()
            and not (base / d / "pyvenv.cfg").exists()
        )
        for name in sorted(names):
            if is_scanned_name(name) and not (base / name).is_symlink():
                yield base / name


def scan(paths: Iterable[str | os.PathLike[str]], known_keys: KnownKeys = ()) -> ScanResult:
    """Scan files and directories; ``known_keys`` are key values (or ``{label: value}``)."""
    result = ScanResult()
    scanner = _TextScanner(_known(known_keys))
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            if (path / "pyvenv.cfg").exists():
                result._skip("virtual environment")
                continue
            files.extend(_walk(path))
        elif path.is_file():
            files.append(path)
        else:
            result.missing.append(path)
    files = list(dict.fromkeys(files))

    roots: dict[Path, Path | None] = {}
    by_repo: dict[Path, list[Path]] = {}
    for file in files:
        root = _git_root(file.resolve().parent, roots)
        if root is not None:
            by_repo.setdefault(root, []).append(file)
    ignored: set[Path] = set()
    for root, members in by_repo.items():
        ignored |= _git_ignored(root, [m.resolve() for m in members])
    for file in files:
        if file.resolve() in ignored:
            result._skip("git-ignored")
            continue
        _scan_file(file, scanner, result)
    return result


def scan_paths(
    paths: Iterable[str | os.PathLike[str]], known_keys: KnownKeys = ()
) -> list[Finding]:
    """The findings of :func:`scan` for ``paths``."""
    return scan(paths, known_keys).findings


def run_scan(paths: Iterable[str | os.PathLike[str]], known_keys: KnownKeys, out: TextIO) -> int:
    """Scan, print masked findings and a summary to ``out``; exit code 1 findings, 2 bad path."""
    result = scan(paths, known_keys)
    for missing in result.missing:
        out.write(f"{missing}: no such file or directory\n")
    for path, why in result.unreadable:
        out.write(f"{path}: could not read ({why}); scanned as plain text\n")
    for finding in result.findings:
        out.write(f"{finding}\n")
    skipped = ", ".join(f"{count} {why}" for why, count in sorted(result.skipped.items()))
    scanned = f"scanned {result.files_scanned} file{'s' if result.files_scanned != 1 else ''}"
    if skipped:
        scanned += f"; skipped {skipped}"
    if result.findings:
        places = len({f.path for f in result.findings})
        out.write(
            f"{len(result.findings)} possible Mistral API key"
            f"{'s' if len(result.findings) != 1 else ''} in {places} "
            f"file{'s' if places != 1 else ''} ({scanned}). Remove them (clear notebook "
            "outputs), rotate any real key that was committed, and keep keys in "
            ".secrets.toml, .env.local or a secret store.\n"
        )
        return 1
    out.write(f"No Mistral API keys found ({scanned}).\n")
    return 2 if result.missing or result.unreadable else 0
