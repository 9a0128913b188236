"""Records on disk: per pause, `records/step_XXXXXX.parquet` (one row per node and teacher) and
`rollouts/step_XXXXXX.parquet` (one row per diagnosed rollout, with its tokens for the HTML report); jsonl when
pyarrow is missing.

A node record carries everything needed to recompute every aggregate that is logged, with its uncertainty: the
alignments and their intervals, the pooling terms, the success estimates with their counts, and where the node sits.
Its fields are defined once, by [`NodeRecord`]; the parquet schema is derived from that dataclass and written
explicitly, so a column that happens to be all NaN or all `None` in one pause keeps its type (pyarrow would infer
`null` and the files of two pauses would no longer concatenate). Files written before a field existed are still
read: the field is filled with the dataclass default (NaN for numbers), with one warning.
"""

import dataclasses
import json
import logging
import math
import types
import typing
from pathlib import Path

from ..diagnosis.results import NodeRecord


logger = logging.getLogger(__name__)

NODE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(NodeRecord))
_FLOAT_FIELDS = tuple(name for name, t in typing.get_type_hints(NodeRecord).items() if t is float)

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
    rows ([`NodeRecord`] dicts) and rollout rows are written with their explicit schema.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path = directory / f"step_{step:06d}.jsonl"
        with open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        return path
    path = directory / f"step_{step:06d}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=_schema_for(rows)), path)
    return path


def read_records(directory: str | Path) -> list[dict]:
    """All rows of every `step_*.parquet` / `step_*.jsonl` file under `directory`, in step order, as stored."""
    rows = []
    for path in sorted(Path(directory).glob("step_*")):
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows.extend(pq.read_table(path).to_pylist())
        elif path.suffix == ".jsonl":
            with open(path) as f:
                rows.extend(json.loads(line) for line in f if line.strip())
    return rows


def _default(name: str):
    """The dataclass default of a [`NodeRecord`] field (a fresh one: list defaults must not be shared)."""
    f = NodeRecord.__dataclass_fields__[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise KeyError(f"node records lack the required field {name!r}")


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
        missing.update(absent)
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
