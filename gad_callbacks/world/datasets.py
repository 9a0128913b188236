"""Datasets by name for recipes and the CLI: the embedded arithmetic world, a local file, or a Hub dataset."""

from pathlib import Path


# Local files by suffix, and the `datasets` builder that reads each.
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def _reason(err: BaseException) -> str:
    """The first line of what went wrong; `datasets` wraps the reader's error in a generic one."""
    err = err.__cause__ or err
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _check_file(path: Path) -> None:
    """Fail on an empty or corrupt file before `datasets` does (a bare `StopIteration`, a generic message)."""
    if not path.is_file():
        raise FileNotFoundError(f"dataset {str(path)!r}: no such file.")
    size = path.stat().st_size
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_metadata(path).num_rows
        except Exception as err:
            raise ValueError(f"dataset {str(path)!r}: not a readable parquet file ({_reason(err)}).") from err
        if rows == 0:
            raise ValueError(f"dataset {str(path)!r}: the parquet file has no rows.")
    elif size == 0 or (size < 1 << 16 and not path.read_bytes().strip()):
        raise ValueError(f"dataset {str(path)!r}: the file is empty.")


def _load_file(path: Path):
    from datasets import load_dataset

    _check_file(path)
    try:
        ds = load_dataset(FILE_BUILDERS[path.suffix], data_files=str(path), split="train")
    except Exception as err:
        if "corresponds to no data" in str(err):  # e.g. `[]`, or a CSV header alone
            raise ValueError(f"dataset {str(path)!r}: the file has no rows.") from err
        reason = _reason(err)
        raise ValueError(f"dataset {str(path)!r}: cannot be read as {path.suffix[1:]} ({reason}).") from err
    if len(ds) == 0:
        raise ValueError(f"dataset {str(path)!r}: the file has no rows.")
    return ds


def load_questions(
    name: str,
    num_questions: int | None = None,
    *,
    config: str | None = None,
    split: str = "train",
    prompt_column: str = "prompt",
    seed: int = 0,
):
    """
    A `datasets.Dataset` with a `prompt` column.

    Args:
        name (`str`):
            `default:arithmetic` (generated in code, no download), a `.json` / `.jsonl` / `.parquet` / `.csv` file,
            or a Hub dataset id (needs the network). An empty or unreadable file is a `ValueError` naming it.
        num_questions (`int`, *optional*):
            Keep the first this many rows (all when omitted; the generated world needs it).
        config (`str`, *optional*):
            Hub dataset configuration (e.g. `"main"` for `openai/gsm8k`).
        split (`str`, *optional*, defaults to `"train"`):
            Split to load.
        prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Column holding the question; text in another column is turned into a one-message conversation.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the generated world.
    """
    from datasets import load_dataset

    if name == "default:arithmetic":
        from .arithmetic import make_dataset

        return make_dataset(num_questions or 256, seed=seed)
    path = Path(name)
    if path.suffix in FILE_BUILDERS:
        ds = _load_file(path)
    else:
        ds = load_dataset(name, config, split=split)
    if num_questions is not None:
        ds = ds.select(range(min(num_questions, len(ds))))
    if prompt_column not in ds.column_names:
        raise ValueError(f"dataset {name!r} has no column {prompt_column!r} (columns: {ds.column_names}).")
    if prompt_column != "prompt":
        ds = ds.map(lambda row: {"prompt": [{"role": "user", "content": row[prompt_column]}]})
    return ds
