"""Records on disk: per pause, `records/step_XXXXXX.parquet` (one row per node and teacher) and
`rollouts/step_XXXXXX.parquet` (one row per diagnosed rollout, with its tokens for the HTML report); jsonl when
pyarrow is missing.

A node record carries everything needed to recompute every aggregate that is logged, with its uncertainty: the
alignments and their intervals, the success estimates with their counts, and where the node sits.
"""

import json
from pathlib import Path


def write_records(rows: list[dict], directory: str | Path, step: int) -> Path:
    """Write `rows` to `directory/step_XXXXXX.parquet` (or `.jsonl` when pyarrow is missing); returns the path."""
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
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def read_records(directory: str | Path) -> list[dict]:
    """All rows of every `step_*.parquet` / `step_*.jsonl` file under `directory`, in step order."""
    rows = []
    for path in sorted(Path(directory).glob("step_*")):
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows.extend(pq.read_table(path).to_pylist())
        elif path.suffix == ".jsonl":
            with open(path) as f:
                rows.extend(json.loads(line) for line in f if line.strip())
    return rows
