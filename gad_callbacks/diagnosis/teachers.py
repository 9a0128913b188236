"""Teachers of a diagnostic pass: where each one's logits at a rollout's nodes come from.

A teacher is a model, a prompt for it, and the weights it runs with; its logits at completion position `t` are read
at `len(teacher_prompt) + t - 1`, which re-maps a longer (privileged) teacher prompt onto student positions. Kinds:
a trainer's own teacher, external teacher models, and the student under a self-distillation context.
"""

import contextlib
import copy
import string
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..engine.model_io import logits_at
from .inputs import TeacherLoss
from .teacher_checks import (
    check_template,
    check_tokenizers,
    check_vocabulary,
    check_weights_loaded,
    vocabulary_size,  # noqa: F401  (importable from here, as before 0.3)
)


@dataclass
class Rollout:
    """
    One student rollout, token ids without padding.

    Args:
        prompt: The question as the dataset holds it (text, or a list of messages).
        prompt_ids (`list[int]`): The prompt as the student saw it.
        completion_ids (`list[int]`): The student's completion (EOS included if produced).
        row (`dict`, *optional*): The dataset row (reference answer and other columns); None when unknown.
        row_index (`int`, *optional*): Its index in the dataset.
        extras (`dict`): Anything a teacher needs besides (e.g. SDFT's privileged prompt ids).
        key (`str`, *optional*): Stable id of the rollout in records (default: `"<step>-<position in the pass>"`).
        seed (`int`, *optional*): Seed of every random choice made on this rollout (nodes, targeted rollouts,
            bootstrap). Set it from the rollout's identity, not from which process diagnoses it, and results do not
            depend on how work is split.
    """

    prompt: object
    prompt_ids: list[int]
    completion_ids: list[int]
    row: dict | None
    row_index: int | None = None
    extras: dict = field(default_factory=dict)
    key: str | None = None
    seed: int | None = None


@dataclass
class TeacherSource:
    """
    One teacher.

    Args:
        name (`str`): Short name used in metrics and records.
        loss ([`TeacherLoss`]): The per-token loss whose gradient is this teacher's direction.
        model (`torch.nn.Module`): The model run for this teacher.
        prompt (`Callable[[Rollout], list[int] | None]`): The teacher's prompt ids for a rollout (None: unavailable).
        context (`Callable`): Context manager factory the forward runs under (e.g. adapters disabled).
        skip_positions (`int`): Completion positions before this carry no loss for this teacher.
        directions (`Callable[[Rollout, list[int]], list[TrainerDirection | None]]`, *optional*): For a teacher whose
            loss is `TeacherLoss("trainer")`: its direction at each completion position, from the trainer's own loss
            over the rollout (run under `context`). `prompt` is then unused.
    """

    name: str
    loss: TeacherLoss
    model: torch.nn.Module
    prompt: Callable[[Rollout], list[int] | None]
    context: Callable = contextlib.nullcontext
    skip_positions: int = 0
    directions: Callable | None = None

    def logits(self, rollout: Rollout, positions: list[int]) -> list:
        if self.directions is not None:
            with self.context():
                given = self.directions(rollout, positions)
            return [None if t < self.skip_positions else d for t, d in zip(positions, given, strict=True)]
        prompt = self.prompt(rollout)
        if prompt is None:
            return [None] * len(positions)
        ids = torch.tensor(list(prompt) + list(rollout.completion_ids))
        rows = [len(prompt) + t - 1 for t in positions]
        with self.context():
            logits = logits_at(self.model, ids, rows)
        return [None if t < self.skip_positions else logits[i] for i, t in enumerate(positions)]


@dataclass
class SelfContext:
    """
    A self-distillation teacher: the student itself, prompted by `template` over the dataset row's columns.

    Args:
        name (`str`):
            Short name used in every metric and record.
        template (`str`):
            Python format string over dataset columns, e.g. `"{prompt}\\n\\nThe answer is {answer}."`. For
            conversational prompts `{prompt}` is the last user message's text and the result replaces that message
            (SDFT's `teacher_prompt_template` semantics).
        weights (`str`, *optional*, defaults to `"base"`):
            `"base"`: the initial weights (adapters disabled under PEFT, a frozen copy taken when the teacher is
            built otherwise); `"live"`: the student's current weights.
    """

    name: str
    template: str
    weights: str = "base"

    def __post_init__(self):
        if self.weights not in ("base", "live"):
            raise ValueError(f"Self-distillation context {self.name!r}: weights must be 'base' or 'live'.")

    @classmethod
    def parse(cls, spec: str) -> "SelfContext":
        """`"name:weights=template"` (YAML / command line form), e.g. `"answer:base={prompt} Answer: {answer}"`."""
        head, sep, template = spec.partition("=")
        name, _, weights = head.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"Self-context spec {spec!r} must look like 'name:weights=template'.")
        return cls(name.strip(), template, weights.strip() or "base")

    def fields(self) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(self.template) if f}


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


def parse_named_models(specs: list[str], what: str = "teacher") -> dict[str, str]:
    """`["name=path_or_hub_id", ...]` (YAML / command-line form) -> `{name: path_or_hub_id}`."""
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"{what} spec {spec!r} must look like 'name=path_or_hub_id'.")
        out[name.strip()] = path.strip()
    return out


def context_teacher(
    context: SelfContext,
    student,
    tokenize_prompts: Callable,
    loss: TeacherLoss,
    columns: list[str],
    base_model=None,
    *,
    example_row: dict | None = None,
) -> TeacherSource:
    """
    The student under a privileged prompt, with its initial (`base`) or current (`live`) weights. `base_model`: a
    frozen copy of the initial weights to use for `base` without PEFT (by default a deep copy of `student`, which is
    wrong where parameters are sharded, e.g. DeepSpeed ZeRO-3: there the caller builds it). `example_row`: a dataset
    row the template is formatted on now (a bad format spec then fails here, not at every pause).
    """
    missing = context.fields() - {"prompt"} - set(columns)
    if missing:
        raise ValueError(
            f"Self-distillation context {context.name!r} uses column(s) {sorted(missing)} that the dataset does not "
            f"have (columns: {list(columns)}). Fix the template or add the column."
        )
    if example_row is not None:
        check_template(context, example_row)
    model, ctx = student, contextlib.nullcontext
    if context.weights == "base":
        if hasattr(student, "disable_adapter"):
            ctx = student.disable_adapter  # PEFT: the base weights are the model with adapters off
        elif base_model is not None:
            model = base_model
        else:
            # Full fine-tuning: keep a frozen copy of the weights as they are now (memory: one model).
            model = copy.deepcopy(student).requires_grad_(False).eval()

    def prompt(rollout: Rollout):
        if rollout.row is None:
            return None
        return tokenize_prompts([compose_prompt(rollout.prompt, context.template, rollout.row)])[0]

    return TeacherSource(context.name, loss, model, prompt, ctx)


def model_teacher(
    name: str, model, student, loss: TeacherLoss, *, tokenizer=None, student_tokenizer=None
) -> TeacherSource:
    """
    An external teacher model that reads the student's own prompt. Its weights must be loaded and its vocabulary the
    student's: sizes always, the tokenizers themselves when both are given (see [`check_tokenizers`]).
    """
    check_weights_loaded(name, model)
    check_vocabulary(name, model, student)
    check_tokenizers(name, tokenizer, student_tokenizer)
    return TeacherSource(name, loss, model, lambda rollout: rollout.prompt_ids)
