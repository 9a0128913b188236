"""Records on disk: per pause, `records/step_XXXXXX.parquet` (one row per node and teacher) and
`rollouts/step_XXXXXX.parquet` (one row per diagnosed rollout, with its tokens for the HTML report); jsonl when
pyarrow is missing.

A node record carries everything needed to recompute every aggregate that is logged, with its uncertainty: the
alignments and their intervals, the pooling terms, the success estimates with their counts, and where the node sits.
Its fields are defined once, by [`NodeRecord`]; the parquet schema is derived from that dataclass and written
explicitly, so a column that happens to be all NaN or all `None` in one pause keeps its type (pyarrow would infer
`null` and the files of two pauses would no longer concatenate). Files written before a field existed are still
read: the field is filled with the dataclass default (NaN for numbers), with one warning.

Step files are written atomically and read all-or-nothing: a file that cannot be read is skipped with a warning, and
a reader never sees a half-written one.
"""

import dataclasses
import json
import logging
import math
import re
import types
import typing
from pathlib import Path

from ..diagnosis.results import NodeRecord
from .files import atomic_write, atomic_write_text, is_temp_file


logger = logging.getLogger(__name__)

NODE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(NodeRecord))
_FLOAT_FIELDS = tuple(name for name, t in typing.get_type_hints(NodeRecord).items() if t is float)
_STEP = re.compile(r"step_(\d+)")

# One row per diagnosed rollout (written by `diagnose_rollouts`), read by the HTML report.
ROLLOUT_FIELDS: dict[str, type] = {
    "step": int,
    "rollout_id": str,
    "question_id": int | None,
    "prompt_text": str,
    "completion_tokens": list[str],
    "reward": float,
    "correct": bool,
}


def _arrow_type(annotation):
    """The pyarrow type of a dataclass annotation (`int`, `float`, `str`, `bool`, `X | None`, `list[X]`)."""
    import pyarrow as pa

    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        # `X | None`: a nullable X (every arrow column is nullable).
        return _arrow_type(next(a for a in args if a is not type(None)))
    if typing.get_origin(annotation) is list:
        return pa.list_(_arrow_type(args[0]))
    simple = {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}
    if annotation not in simple:
        raise TypeError(f"No arrow type for record field annotation {annotation!r}.")
    return simple[annotation]


def arrow_schema(fields: dict[str, type]):
    """A `pyarrow.Schema` from field names and Python annotations, in that order."""
    import pyarrow as pa

    return pa.schema([pa.field(name, _arrow_type(annotation)) for name, annotation in fields.items()])


def node_schema():
    """The parquet schema of node records, derived from [`NodeRecord`]."""
    return arrow_schema(typing.get_type_hints(NodeRecord))


def _schema_for(rows: list[dict]):
    """The explicit schema of `rows` if they are node or rollout rows; `None` (inferred) for anything else."""
    keys = set(rows[0]) if rows else set()
    if keys == set(NODE_FIELDS):
        return node_schema()
    if keys == set(ROLLOUT_FIELDS):
        return arrow_schema(ROLLOUT_FIELDS)
    return None


def write_records(rows: list[dict], directory: str | Path, step: int) -> Path:
    """
    Write `rows` to `directory/step_XXXXXX.parquet` (or `.jsonl` when pyarrow is missing); returns the path. Node
    rows ([`NodeRecord`] dicts) and rollout rows are written with their explicit schema. The file is written
    atomically ([`atomic_write`]): a failure leaves the previous file of that step, if any, whole.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return atomic_write_text(directory / f"step_{step:06d}.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    table = pa.Table.from_pylist(rows, schema=_schema_for(rows))
    return atomic_write(directory / f"step_{step:06d}.parquet", lambda tmp: pq.write_table(table, tmp))


def step_files(directory: str | Path) -> list[Path]:
    """
    The `step_*.parquet` / `step_*.jsonl` files under `directory`, in step order (numeric, so step 1000000 comes
    after step 999999); temporary files of unfinished writes are never included.
    """
    files = [
        p
        for p in Path(directory).glob("step_*")
        if p.suffix in (".parquet", ".jsonl") and _STEP.fullmatch(p.stem) and not is_temp_file(p)
    ]
    return sorted(files, key=lambda p: (int(_STEP.fullmatch(p.stem).group(1)), p.name))


@dataclasses.dataclass
class RecordFiles:
    """What [`read_record_files`] found: the rows, the step files, and the files it skipped with the reason."""

    rows: list[dict]
    files: list[Path]
    unreadable: dict[str, str]


def _read_file(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_record_files(directory: str | Path) -> RecordFiles:
    """
    Every step file under `directory` (see [`step_files`]) with its rows. A file that cannot be read (torn or corrupt
    parquet, a bad jsonl line: written by a process killed before files were written atomically, or damaged since)
    is skipped as a whole, so a step is never half counted; one warning names the skipped files.
    """
    rows, unreadable = [], {}
    files = step_files(directory)
    for path in files:
        try:
            rows.extend(_read_file(path))
        except Exception as err:  # pyarrow raises ArrowInvalid / OSError, json ValueError: any means unreadable
            unreadable[path.name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if unreadable:
        logger.warning(
            "gad: skipped %d unreadable record file(s) under %s: %s.",
            len(unreadable),
            directory,
            "; ".join(f"{name} ({why})" for name, why in unreadable.items()),
        )
    return RecordFiles(rows, files, unreadable)


def read_records(directory: str | Path) -> list[dict]:
    """
    All rows of every `step_*.parquet` / `step_*.jsonl` file under `directory`, in step order, as stored; unreadable
    files are skipped with a warning (see [`read_record_files`]).
    """
    return read_record_files(directory).rows


def drop_steps_after(directory: str | Path, step: int) -> int:
    """
    Remove the step files under `directory` whose step is after `step`; returns how many were removed. A run that
    resumes from the checkpoint of `step` redoes the later steps, which must then be on disk once, not twice.
    """
    removed = 0
    for path in step_files(directory) if Path(directory).is_dir() else []:
        if int(_STEP.fullmatch(path.stem).group(1)) > step:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _default(name: str):
    """The dataclass default of a [`NodeRecord`] field (a fresh one: list defaults must not be shared)."""
    f = NodeRecord.__dataclass_fields__[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise KeyError(f"node records lack the required field {name!r}")


# Fields whose default is what a file written before them meant (no screening then: weight 1, nothing stopped).
_EXACT_FOR_OLD_FILES = {"pool_weight", "screened_out"}


def to_node_records(rows: list) -> list[NodeRecord]:
    """
    Rows (dicts as written, or [`NodeRecord`]s) as [`NodeRecord`]s. Fields missing from the rows (files written by
    an older version) take the dataclass defaults, NaN for numbers, so that what they cannot tell is undefined rather
    than zero; one warning names them. Columns the dataclass does not know are ignored.
    """
    records, missing = [], set()
    for row in rows:
        if isinstance(row, NodeRecord):
            records.append(row)
            continue
        absent = [name for name in NODE_FIELDS if name not in row]
        missing.update(name for name in absent if name not in _EXACT_FOR_OLD_FILES)
        values = {name: row[name] if name in row else _default(name) for name in NODE_FIELDS}
        for name in _FLOAT_FIELDS:  # JSON and some writers store NaN as null: read it back as NaN
            if values[name] is None:
                values[name] = math.nan
        records.append(NodeRecord(**values))
    if missing:
        logger.warning(
            "gad: records written by an older gad_callbacks lack %s: filled with NaN / defaults (aggregates that "
            "need them, e.g. pooled alignment, are undefined).",
            ", ".join(name for name in NODE_FIELDS if name in missing),
        )
    return records


def read_node_records(directory: str | Path) -> list[NodeRecord]:
    """The node records under `directory` as [`NodeRecord`]s (see [`to_node_records`] for older files)."""
    return to_node_records(read_records(directory))
