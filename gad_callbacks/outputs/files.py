"""Atomic file writes: a reader sees the previous file or the new one, never a torn one.

Every file gad writes (step records, `run.json`, `report.html`) is written to a temporary file in the same directory
and renamed onto its target. A rename within one file system is atomic, so a process killed mid-write, a full disk
or a size limit leaves the previous file whole; the temporary file is removed on failure. Its name,
`.<name>.tmp-<pid>-<random>`, starts with a dot so that no reader pattern (`step_*`, `run.json`) ever matches it, and
the pid and random part keep two processes writing the same target from sharing one.
"""

import os
import secrets
from collections.abc import Callable
from pathlib import Path


TEMP_MARKER = ".tmp-"


def temp_path_for(path: str | Path) -> Path:
    """A fresh temporary path next to `path`: `.<name>.tmp-<pid>-<random>` in the same directory."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")


def is_temp_file(path: str | Path) -> bool:
    """Whether `path` is one of [`atomic_write`]'s temporary files (left behind only by a killed process)."""
    name = Path(path).name
    return name.startswith(".") and TEMP_MARKER in name


def _fsync(path: Path) -> None:
    # Flush the new content before the rename: otherwise a power loss right after it can leave an empty file under
    # the target's name on file systems that delay allocation.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """
    Write `path` atomically: `write(tmp_path)` writes the whole content to a temporary file in the same directory,
    which then replaces `path` with `os.replace`. Returns `path`.

    On any failure (in `write`, a full disk, a size limit, an interrupt) the temporary file is removed and the error
    re-raised; an existing `path` is left untouched.

    Args:
        path (`str` or `Path`):
            The target. Its directory must exist.
        write (`Callable[[Path], Any]`):
            Writes the content to the path it is given (e.g. `lambda tmp: pq.write_table(table, tmp)`).
    """
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """[`atomic_write`] of a text file. Returns `path`."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding=encoding))
