"""Datasets by name for recipes and the CLI (the embedded arithmetic world, a local file, or a Hub dataset), and their
prompts as token ids, exactly as TRL's on-policy distillation trainers make them.

Prompts come in TRL's formats: standard (`prompt` holds text) or conversational (`prompt` holds a list of messages,
or a `messages` column holds the conversation, whose final assistant message is the answer and not part of the prompt,
as GKD reads it).
"""

from contextlib import contextmanager
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


@contextmanager
def _no_progress_bars():
    """`datasets` draws progress bars on stderr while it converts a local file or maps it: noise for a local file,
    and a start-up error after it would no longer be the one line on stderr that `gad` promises."""
    import datasets

    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not quiet:
            datasets.enable_progress_bars()


def _load_file(path: Path):
    from datasets import load_dataset

    _check_file(path)
    try:
        with _no_progress_bars():
            ds = load_dataset(FILE_BUILDERS[path.suffix], data_files=str(path), split="train")
    except Exception as err:
        if "corresponds to no data" in str(err):  # e.g. `[]`, or a CSV header alone
            raise ValueError(f"dataset {str(path)!r}: the file has no rows.") from err
        reason = _reason(err)
        raise ValueError(f"dataset {str(path)!r}: cannot be read as {path.suffix[1:]} ({reason}).") from err
    if len(ds) == 0:
        raise ValueError(f"dataset {str(path)!r}: the file has no rows.")
    return ds


def prompt_from_messages(messages: list[dict]) -> list[dict]:
    """A `messages` conversation as a prompt: without its last message when that is the assistant's answer (GKD's
    convention: the rest is what the student answers), whole otherwise."""
    return messages[:-1] if messages and messages[-1].get("role") == "assistant" else messages


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
    A `datasets.Dataset` with a `prompt` column (text or a list of messages) and the file's other columns.

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
            Column holding the question. Another column's text becomes a one-message conversation and its messages a
            conversational prompt (see [`prompt_from_messages`]); a dataset without `prompt` but with `messages`
            takes its prompt from `messages`.
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
    if prompt_column == "prompt" and "prompt" not in ds.column_names and "messages" in ds.column_names:
        prompt_column = "messages"
    if prompt_column not in ds.column_names:
        also = " or 'messages'" if prompt_column == "prompt" else ""
        raise ValueError(f"dataset {name!r} has no column {prompt_column!r}{also} (columns: {ds.column_names}).")
    if prompt_column != "prompt":
        # Another column's conversation loses its final answer; its text becomes a one-message conversation.
        with _no_progress_bars():
            ds = ds.map(
                lambda row: {
                    "prompt": prompt_from_messages(row[prompt_column])
                    if isinstance(row[prompt_column], list)
                    else [{"role": "user", "content": row[prompt_column]}]
                }
            )
    return ds
