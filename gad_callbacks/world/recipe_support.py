"""What the recipes share: their dataset arguments (a dataclass for `TrlParser`) and the student's set-up."""

from dataclasses import dataclass, field

from .checkpoints import resolve_model
from .datasets import load_questions


def prepare_student(model_args, training_args):
    """
    Resolve the student (`default:<name>` or a path / Hub id), pass TRL's `ModelConfig` loading options to the
    trainer through `model_init_kwargs`, and load the tokenizer. Returns `(student path, tokenizer)`.
    """
    from transformers import AutoTokenizer

    student = resolve_model(model_args.model_name_or_path)
    training_args.model_init_kwargs = {
        "dtype": model_args.dtype,
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
    }
    return student, AutoTokenizer.from_pretrained(student, revision=model_args.model_revision)


@dataclass
class DataArguments:
    """
    Parameters:
        dataset_name (`str`, *optional*, defaults to `"default:arithmetic"`):
            `default:arithmetic` (embedded, no download), a json/jsonl/parquet/csv file, or a Hub dataset id, with a
            `prompt` column (text or messages) or a `messages` column (its final assistant message is the answer, not
            part of the prompt), and the columns the verifiers (`alignment_reward_funcs`) read.
        dataset_config (`str`, *optional*):
            Hub dataset configuration (e.g. `main` for `openai/gsm8k`).
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split to train on.
        prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Column with the question (text in another column becomes a one-message conversation).
        num_train_questions (`int`, *optional*, defaults to `512`):
            Questions to train on (the first ones; the embedded world generates this many).
    """

    dataset_name: str = field(
        default="default:arithmetic", metadata={"help": "default:arithmetic, a file, or a Hub id."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column with the question."})
    num_train_questions: int | None = field(default=512, metadata={"help": "Questions to train on."})

    def load(self, seed: int = 0):
        return load_questions(
            self.dataset_name,
            self.num_train_questions,
            config=self.dataset_config,
            split=self.dataset_train_split,
            prompt_column=self.prompt_column,
            seed=seed,
        )
