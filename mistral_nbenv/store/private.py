"""Private files for the embedded stores: directories 0700, files 0600, made that way.

:mod:`~mistral_nbenv.store.local` (the diskcache directories) and
:mod:`~mistral_nbenv.store.budgetfile` (the rate limit's SQLite file) create everything
under :func:`private_umask` and tighten what an earlier, looser process left behind.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from mistral_nbenv._forksafe import RLock

__all__ = ["make_private_dir", "private_umask", "tighten"]

_umask_lock = RLock()


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Create files 0600 and directories 0700 inside the block (process-wide umask)."""
    with _umask_lock:
        old = os.umask(0o077)
        try:
            yield
        finally:
            os.umask(old)


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) and make it 0700."""
    with private_umask():
        path.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)


def tighten(directory: Path) -> None:
    """Make the files in ``directory`` 0600 and its directories 0700 (symlinks left alone)."""
    for child in directory.iterdir():
        with contextlib.suppress(OSError):
            if child.is_symlink():
                continue
            want = 0o700 if child.is_dir() else 0o600
            if stat.S_IMODE(child.lstat().st_mode) != want:
                child.chmod(want)
