"""Where the shipped checkpoints live, and how configs name them (`default:student`, `default:teacher`)."""

from pathlib import Path


CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"

#: The privileged contexts the default student was trained to use (and the default self-distillation templates).
CONTEXT_TEMPLATES = {
    "solution": "{prompt} Reference solution: {solution}",
    "answer": "{prompt} The answer is {answer}.",
    "hint": "{prompt} Hint: {hint}",
}


def resolve_model(name: str) -> str:
    """`default:<checkpoint>` -> the shipped checkpoint's directory; anything else is returned as is."""
    if not name.startswith("default:"):
        return name
    path = CHECKPOINT_DIR / name.split(":", 1)[1]
    if not (path / "config.json").is_file():
        available = sorted(p.name for p in CHECKPOINT_DIR.iterdir() if p.is_dir()) if CHECKPOINT_DIR.is_dir() else []
        raise FileNotFoundError(
            f"No shipped checkpoint {name!r} (available: {available}); retrain with scripts/train_default_world.py."
        )
    return str(path)
