"""Runs on disk: one directory per run, found and picked the same way by every reader.

A *run directory* holds `run.json` or `records/`. The layouts written over time, all of which are found:

- a training run: `output_dir/gad/<run_id>/{run.json, records/, rollouts/, tensorboard/}`, one directory per
  `trainer.train()`, so runs sharing an `output_dir` never mix;
- `gad diagnose`: one run directly in its `output_dir`;
- older versions of the callback: `output_dir/gad/records/` (the run directory is `output_dir/gad`, no `run.json`).

Directories whose name starts with a dot (e.g. `gad diagnose`'s staging directory) are never runs.
"""

import json
import logging
import os
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path

from .files import atomic_write_text


logger = logging.getLogger(__name__)

# Everything a run writes into its directory; `clear_run_files` removes exactly these.
RUN_FILES: tuple[str, ...] = ("records", "rollouts", "tensorboard", "run.json", "report.html")


def new_run_id() -> str:
    """
    A new run id such as `20261129-093012-a1b2c3`: the UTC creation time to the second (ids sort by creation time,
    across time zones and daylight-saving changes) and 24 random bits, so that processes started in the same second
    get different ids.
    """
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def read_run_info(run_dir: str | Path, *, quiet: bool = False) -> dict:
    """
    The content of `run_dir/run.json`; `{}` when there is none, or when it cannot be read (with a warning, unless
    `quiet`: the helpers that only sort or name runs read it quietly, so a report warns once).
    """
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        if not quiet:
            logger.warning("gad: cannot read %s (%s): the run's settings and skip counts are unknown.", path, err)
        return {}
    return info if isinstance(info, dict) else {}


def write_run_info(run_dir: str | Path, info: dict) -> Path:
    """
    Write `run_dir/run.json` atomically; returns its path. `"run_id"` (the directory's name) and `"created"` (now, as
    an ISO time, or the one of an existing `run.json`: rewriting a run's info keeps its creation time) are added when
    `info` lacks them. `info` itself is not modified.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    created = (
        info.get("created")
        or read_run_info(run_dir, quiet=True).get("created")
        or datetime.now().astimezone().isoformat()
    )
    content = {"run_id": info.get("run_id") or run_dir.name, "created": created}
    content.update({k: v for k, v in info.items() if k not in content})
    return atomic_write_text(run_dir / "run.json", json.dumps(content, indent=2, default=str))


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` is a run directory: it holds `run.json` or `records/`, and its name does not start with a dot."""
    path = Path(path)
    return (
        path.is_dir()
        and not path.name.startswith(".")
        and ((path / "run.json").is_file() or (path / "records").is_dir())
    )


def run_id_of(run_dir: str | Path) -> str:
    """The run's id: `run_id` in its `run.json`, else the directory's name."""
    return str(read_run_info(run_dir, quiet=True).get("run_id") or Path(run_dir).name)


def _created(run_dir: Path) -> float:
    """When the run was created: `created` in `run.json`, else the modification time of its oldest marker."""
    created = read_run_info(run_dir, quiet=True).get("created")
    if created:
        try:
            return datetime.fromisoformat(str(created)).timestamp()
        except ValueError:
            pass
    marker = run_dir / "run.json" if (run_dir / "run.json").exists() else run_dir / "records"
    return marker.stat().st_mtime


def _children(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def find_runs(path: str | Path) -> list[Path]:
    """
    The run directories at `path`, `path/*`, `path/gad` and `path/gad/*` (so a `gad diagnose` output directory, a
    training run's `output_dir` and one of its runs all work), oldest first: by `created` in `run.json`, else by
    modification time; ties by name.
    """
    path = Path(path)
    candidates = [path, *_children(path), path / "gad", *_children(path / "gad")]
    runs, seen = [], set()
    for candidate in candidates:
        key = os.path.realpath(candidate)
        if key not in seen and is_run_dir(candidate):
            seen.add(key)
            runs.append(candidate)
    return sorted(runs, key=lambda run: (_created(run), run.name))


def resolve_run(path: str | Path, run: str | None = None) -> tuple[Path, str]:
    """
    The one run to read under `path`, and a one-line message saying which run was picked and why.

    Args:
        path (`str` or `Path`):
            A run directory, or a directory holding runs (see [`find_runs`]).
        run (`str`, *optional*):
            The run's id (or its directory's name); the latest run when omitted.

    Raises:
        `FileNotFoundError`: no run under `path`.
        `ValueError`: no run `run` under `path` (the message lists the ids there).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no records under {path}: {'not a' if path.exists() else 'no such'} directory.")
    runs = find_runs(path)
    if not runs:
        raise FileNotFoundError(
            f"no records under {path}: no run directory (run.json or records/) in it, in a subdirectory or under gad/."
        )
    ids = [run_id_of(r) for r in runs]
    if run is not None:
        matches = [r for r, run_id in zip(runs, ids, strict=True) if run in (run_id, r.name)]
        if not matches:
            raise ValueError(f"no run {run!r} under {path}; runs there (oldest first): {', '.join(ids)}.")
        chosen, why = matches[-1], f"selected with --run; {len(runs)} under {path}"
    else:
        chosen = runs[-1]
        why = (
            f"the only run under {path}"
            if len(runs) == 1
            else f"latest of {len(runs)} under {path}; pick another with --run ID"
        )
    return chosen, f"run {run_id_of(chosen)} at {chosen} ({why})"


def clear_run_files(directory: str | Path) -> list[Path]:
    """
    Remove the files a run writes (`records/`, `rollouts/`, `tensorboard/`, `run.json`, `report.html`) from
    `directory`, and nothing else; returns what was removed.
    """
    removed = []
    for name in RUN_FILES:
        path = Path(directory) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(path)
    return removed
