"""The embedded default world: a verifiable arithmetic task and a tokenizer, both generated in code (no downloads)."""

from .arithmetic import ArithmeticTask, make_dataset
from .tokenizer import build_tokenizer


__all__ = ["ArithmeticTask", "build_tokenizer", "make_dataset"]
