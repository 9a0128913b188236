"""The output directory of `gad diagnose`: checked before any compute, held by one run at a time, replaced whole.

A directory that holds our files is a run: a new run there is refused unless `--overwrite_output_dir true`, so that
two runs' records never mix. While a run computes, an exclusive lock file (`.gad-lock`, created with `O_EXCL`, holding
the pid) keeps a second `gad diagnose` out of the same directory; a lock left by a process that no longer exists is
taken over. The new run's files are written to a staging directory and moved in only once all of them are written,
so a failure (or a kill) never leaves half a run or removes the previous one.
"""

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from ..outputs.runs import RUN_FILES, clear_run_files


LOCK = ".gad-lock"


def _our_files(out: Path) -> list[str]:
    return [name + "/" * (out / name).is_dir() for name in RUN_FILES if (out / name).exists()]


def _refuse_existing_run(out: Path) -> None:
    existing = _our_files(out)
    if existing:
        raise ValueError(
            f"output_dir {out} already holds a run ({', '.join(existing)}); pass --overwrite_output_dir true to "
            "replace it, or choose another --output_dir."
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _take_lock(out: Path) -> Path:
    lock = out / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                raise ValueError(
                    f"output_dir {out} is in use by another gad diagnose (pid {pid}); wait for it to finish, or "
                    "choose another --output_dir."
                ) from None
            lock.unlink(missing_ok=True)  # left by a process that died: take it over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return lock
    raise ValueError(f"output_dir {out}: could not take its lock {lock}; remove it if no gad diagnose is running.")


@contextmanager
def claimed_output_dir(out: Path, overwrite: bool):
    """
    Check that `out` holds no run (unless `overwrite`) and is writable, then hold it for the block. When the block
    raises, the directories created here are removed again if they are still empty.
    """
    if not overwrite:
        _refuse_existing_run(out)
    missing = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".gad-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OSError(
            f"output_dir {out} is not writable ({err.strerror or err}); choose another --output_dir."
        ) from err
    try:
        lock = _take_lock(out)
    except BaseException:
        _remove_if_empty(out, missing)
        raise
    try:
        yield out
    except BaseException:
        lock.unlink(missing_ok=True)
        _remove_if_empty(out, missing)
        raise
    lock.unlink(missing_ok=True)


def _remove_if_empty(out: Path, created: list[Path]) -> None:
    """Nothing of a failed run is left: nor are the empty directories it created."""
    for directory in (out, *out.parents) if created else ():
        if not directory.is_dir() or any(directory.iterdir()):
            break
        directory.rmdir()
        if directory == created[-1]:
            break


@contextmanager
def staged_run(out: Path, overwrite: bool):
    """
    A staging directory inside `out` for the new run's files. When the block completes, the old run's files are
    removed from `out` ([`clear_run_files`]) and the staged ones moved in; when it raises, the staging directory is
    removed and `out` is left as it was.
    """
    stage = out / f".gad-staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)  # left by a killed process that had this pid
    stage.mkdir()
    try:
        yield stage
        if not overwrite:
            _refuse_existing_run(out)  # something else wrote a run here meanwhile: never replace it silently
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    clear_run_files(out)
    for entry in stage.iterdir():
        os.replace(entry, out / entry.name)
    stage.rmdir()
