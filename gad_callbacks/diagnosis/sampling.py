"""Student rollouts for a training-free pass: prompts tokenized as TRL's trainers tokenize them, completions sampled
from the student at its temperature, each paired with its dataset row (the verifier and the contexts read it).

`gad diagnose` samples its rollouts here; a Python user does the same, then calls [`diagnose_rollouts`]. During
training the callback takes the trainer's own rollouts instead.
"""

import torch

from ..engine.model_io import eos_token_ids, model_device
from ..engine.rollouts import sample_completions
from .teachers import Rollout


def tokenize_prompts(tokenizer, prompts: list) -> list[list[int]]:
    """
    Prompt token ids as TRL's `DistillationTrainer._tokenize_prompts` makes them (also used by SDFT): conversational
    prompts through the chat template with the generation prompt, text prompts through the tokenizer's own call, so
    with its special tokens (a BOS where the tokenizer adds one). The first prompt decides the format, as in TRL.
    """
    from trl.data_utils import is_conversational

    if not prompts:
        return []
    if is_conversational({"prompt": prompts[0]}):
        ids = tokenizer.apply_chat_template(
            conversation=prompts, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
    else:
        ids = tokenizer(text=prompts)["input_ids"]
    return [[int(t) for t in row] for row in ids]


def sample_rollouts(
    student,
    tokenizer,
    rows,
    *,
    rollouts_per_question: int = 1,
    max_completion_length: int = 32,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[Rollout]:
    """
    Sample the student's own rollouts on dataset rows.

    Args:
        student (`PreTrainedModel`): The student (plain or PEFT), on the device to sample on.
        tokenizer: Its tokenizer (chat template for conversational prompts; EOS ids).
        rows (`datasets.Dataset` or `list[dict]`): Rows with a `prompt` column (text or messages) and whatever the
            verifier and the contexts read (e.g. `answer`).
        rollouts_per_question (`int`, *optional*, defaults to `1`): Rollouts sampled per row.
        max_completion_length (`int`, *optional*, defaults to `32`): Completion budget (TRL's name).
        temperature (`float`, *optional*, defaults to `1.0`): Sampling temperature (use the trainer's).
        seed (`int`, *optional*, defaults to `0`): Seed of the sampling generator.

    Returns:
        `list[Rollout]`: `rollouts_per_question` per row, in row order, each with its row and row index.
    """
    rows = [rows[i] for i in range(len(rows))]
    prompt_ids = tokenize_prompts(tokenizer, [r["prompt"] for r in rows])
    order = [i for i in range(len(rows)) for _ in range(rollouts_per_question)]
    generator = torch.Generator(device=model_device(student)).manual_seed(seed)
    completions = sample_completions(
        student,
        [prompt_ids[i] for i in order],
        max_completion_length,
        temperature=temperature,
        eos_token_id=eos_token_ids(student, tokenizer),
        generator=generator,
    )
    return [Rollout(rows[i]["prompt"], prompt_ids[i], c, rows[i], i) for i, c in zip(order, completions, strict=True)]
