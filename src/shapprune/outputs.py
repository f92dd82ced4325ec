"""Output locations, checked before any work starts, so that a long run never ends in an
error about where its results should go."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["check_output"]


def check_output(
    path: str | Path, *, folder: bool = False, force: bool = False, resumes: str | None = None
) -> Path:
    """Raise a one-line error now if ``path`` could not be written later.

    A file output (``folder=False``) must not be a folder, and an existing file is replaced
    only with ``force``. A folder output must not be a file; with ``resumes`` (the file an
    earlier run leaves there), a non-empty folder without it holds someone else's files and
    is refused (otherwise whether a non-empty folder may be written into is the caller's
    rule). Either way the nearest existing folder on the way must accept a new file: one is
    created and removed there to make sure.
    """
    path = Path(path)
    if folder:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"{path} is a file, not a folder; choose another --out")
        if resumes and path.is_dir() and any(path.iterdir()) and not (path / resumes).exists():
            raise FileExistsError(
                f"{path} holds other files and no earlier run to resume; choose another --out"
            )
        where = path
    else:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; --out names a file here")
        if path.exists() and not force:
            raise FileExistsError(
                f"{path} exists; choose another --out or pass --force to replace it"
            )
        where = path.parent
    existing = where
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".shapprune-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise type(err)(err.errno, f"cannot write {path}: {reason} in {existing}") from None
    return path
