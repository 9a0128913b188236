"""Datasets by name for recipes and the CLI: the embedded arithmetic world, a local file, or a Hub dataset."""

from pathlib import Path


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
            `default:arithmetic` (generated in code, no download), a `.json` / `.jsonl` / `.parquet` file, or a Hub
            dataset id (needs the network).
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
    if path.suffix in (".json", ".jsonl", ".parquet"):
        if not path.is_file():
            raise FileNotFoundError(f"dataset {name!r}: no such file.")
        ds = load_dataset("parquet" if path.suffix == ".parquet" else "json", data_files=str(path), split="train")
    else:
        ds = load_dataset(name, config, split=split)
    if num_questions is not None:
        ds = ds.select(range(min(num_questions, len(ds))))
    if prompt_column not in ds.column_names:
        raise ValueError(f"dataset {name!r} has no column {prompt_column!r} (columns: {ds.column_names}).")
    if prompt_column != "prompt":
        ds = ds.map(lambda row: {"prompt": [{"role": "user", "content": row[prompt_column]}]})
    return ds
