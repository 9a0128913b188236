"""Teachers of the training-time diagnostic: where each one's logits at a rollout's nodes come from.

A teacher is a model, a prompt for it, and the weights it runs with; its logits at completion position `t` are
read at `len(teacher_prompt) + t - 1`, which re-maps a longer (privileged) teacher prompt onto student positions.
Kinds: the trainer's own teacher, extra teacher models, and the student under a self-distillation context.
"""

import contextlib
import copy
import string
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..diagnosis import TeacherLoss
from ..engine.model_io import logits_at
from .adapters import Rollout, TrainerAdapter
from .config import SelfContext


@dataclass
class TeacherSource:
    """
    One teacher as the callback sees it.

    Args:
        name (`str`): Short name used in metrics and records.
        loss ([`TeacherLoss`]): The per-token loss whose gradient is this teacher's direction.
        model (`torch.nn.Module`): The model run for this teacher.
        prompt (`Callable[[Rollout], list[int] | None]`): The teacher's prompt ids for a rollout (None: unavailable).
        context (`Callable`): Context manager factory the forward runs under (e.g. adapters disabled).
        skip_positions (`int`): Completion positions before this carry no loss for this teacher.
    """

    name: str
    loss: TeacherLoss
    model: torch.nn.Module
    prompt: Callable[[Rollout], list[int] | None]
    context: Callable = contextlib.nullcontext
    skip_positions: int = 0

    def logits(self, rollout: Rollout, positions: list[int]) -> list[torch.Tensor | None]:
        prompt = self.prompt(rollout)
        if prompt is None:
            return [None] * len(positions)
        ids = torch.tensor(list(prompt) + list(rollout.completion_ids))
        rows = [len(prompt) + t - 1 for t in positions]
        with self.context():
            logits = logits_at(self.model, ids, rows)
        return [None if t < self.skip_positions else logits[i] for i, t in enumerate(positions)]


def template_fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


def compose_prompt(prompt, template: str, row: dict):
    """SDFT's semantics: the template fills the last user message (conversational) or the whole text prompt."""
    columns = {k: v for k, v in row.items() if k != "prompt"}
    if isinstance(prompt, list):
        if not prompt or prompt[-1].get("role") != "user":
            raise ValueError(
                "A conversational prompt must end with a user message to carry a self-distillation context."
            )
        last = prompt[-1]["content"]
        text = last if isinstance(last, str) else " ".join(p.get("text", "") for p in last if p.get("type") == "text")
        return prompt[:-1] + [{"role": "user", "content": template.format(prompt=text, **columns)}]
    return template.format(prompt=prompt, **columns)


def check_vocabulary(name: str, teacher, student) -> None:
    t_vocab = teacher.get_output_embeddings().weight.shape[0]
    s_vocab = student.get_output_embeddings().weight.shape[0]
    if t_vocab != s_vocab:
        raise ValueError(
            f"Teacher {name!r} has a vocabulary of {t_vocab} tokens, the student {s_vocab}: gradient alignment needs "
            "a teacher that shares the student's tokenizer. Use a teacher of the same model family."
        )


def context_teacher(context: SelfContext, student, adapter: TrainerAdapter, loss: TeacherLoss) -> TeacherSource:
    """The student under a privileged prompt, with its initial (`base`) or current (`live`) weights."""
    missing = template_fields(context.template) - {"prompt"} - set(adapter.dataset.column_names)
    if missing:
        raise ValueError(
            f"Self-distillation context {context.name!r} uses column(s) {sorted(missing)} that the training dataset "
            f"does not have (columns: {adapter.dataset.column_names}). Fix the template or add the column."
        )
    model, ctx = student, contextlib.nullcontext
    if context.weights == "base":
        if hasattr(student, "disable_adapter"):
            ctx = student.disable_adapter  # PEFT: the base weights are the model with adapters off
        else:
            # Full fine-tuning: keep a frozen copy of the weights as they are at attach time (memory: one model).
            model = copy.deepcopy(student).requires_grad_(False).eval()

    def prompt(rollout: Rollout):
        if rollout.row is None:
            return None
        composed = compose_prompt(adapter.prompt_of(rollout.row), context.template, rollout.row)
        return adapter.tokenize_prompts([composed])[0]

    return TeacherSource(context.name, loss, model, prompt, ctx)
