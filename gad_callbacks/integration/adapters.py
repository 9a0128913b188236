"""Per-trainer adapters: where each TRL trainer keeps its rollouts and how its loss is defined.

Everything trainer-specific lives here, one small class per trainer; the callback talks to an adapter only. Loss
settings are read off the trainer's own arguments, because the defaults differ between trainers (TRL's `beta`:
0 forward KL, 1 reverse KL; GKD samples at `temperature` but computes its loss at temperature 1; SDFT divides both
logits by `temperature` and may restrict the loss to the student's top-k).
"""

import dataclasses
import warnings

import torch

from ..diagnosis import Rollout, TeacherLoss, TeacherSource
from ..engine.model_io import eos_token_ids
from ..engine.rollouts import sample_completions


def _unpadded(ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    return ids[mask.bool()].tolist()


class PromptIndex:
    """
    Maps a prompt, as the trainer tokenizes it, back to its dataset row. TRL's buffers keep token ids but not the row
    (and shuffle them), while the verifier needs the row's reference answer. Built on first use, in batches.
    """

    def __init__(self, dataset, prompt_of, tokenize, batch_size: int = 256):
        self.dataset, self.prompt_of, self.tokenize, self.batch_size = dataset, prompt_of, tokenize, batch_size
        self._index: dict[tuple, int] | None = None

    def lookup(self, prompt_ids) -> int | None:
        if self._index is None:
            self._index = {}
            for start in range(0, len(self.dataset), self.batch_size):
                rows = self.dataset[start : start + self.batch_size]
                prompts = [
                    self.prompt_of({k: v[i] for k, v in rows.items()}) for i in range(len(next(iter(rows.values()))))
                ]
                for offset, ids in enumerate(self.tokenize(prompts)):
                    self._index.setdefault(tuple(ids), start + offset)
        return self._index.get(tuple(prompt_ids))


class TrainerAdapter:
    """What the callback needs from a trainer. Subclasses fill in the trainer-specific parts."""

    #: where rollouts come from, for the README and error messages
    rollout_source = ""
    #: True when each process holds its own rollouts (to be gathered); False when every process builds the same ones
    rollouts_are_local = True

    def __init__(self, trainer):
        self.trainer = trainer
        self.args = trainer.args
        self.tokenizer = getattr(trainer, "_tokenizer", None) or trainer.processing_class
        self.dataset = trainer.train_dataset
        self.index = PromptIndex(self.dataset, self.prompt_of, self.tokenize_prompts)

    # -- settings ---------------------------------------------------------------------------------------------------
    def teacher_loss(self) -> TeacherLoss:
        raise NotImplementedError

    def temperature(self) -> float:
        return float(self.args.temperature)

    def max_completion_length(self) -> int:
        return int(self.args.max_completion_length)

    def sampling_warnings(self) -> list[str]:
        warnings = []
        if getattr(self.args, "top_p", 1.0) not in (None, 1.0) or getattr(self.args, "top_k", 0) not in (None, 0):
            warnings.append(
                f"the trainer samples with top_p={getattr(self.args, 'top_p', None)}, top_k="
                f"{getattr(self.args, 'top_k', None)}; targeted rollouts sample at temperature "
                f"{self.temperature()} without truncation, so the ideal refers to the untruncated policy"
            )
        return warnings

    # -- prompts ----------------------------------------------------------------------------------------------------
    def prompt_of(self, row: dict):
        return row["prompt"]

    def tokenize_prompts(self, prompts: list) -> list[list[int]]:
        raise NotImplementedError

    def row(self, index: int | None) -> dict | None:
        return None if index is None else self.dataset[int(index)]

    # -- rollouts and the trainer's own teacher ---------------------------------------------------------------------
    def rollouts(self, student, generator: torch.Generator) -> list[Rollout]:
        raise NotImplementedError

    def trainer_teacher(self, name: str) -> TeacherSource:
        """The trainer's own teacher, with the trainer's own loss: it reads the student's prompt."""
        model = self.trainer.accelerator.unwrap_model(self.trainer.teacher_model)
        return TeacherSource(name, self.teacher_loss(), model, lambda rollout: rollout.prompt_ids)

    #: True when the trainer's own teacher may have another tokenizer (its loss aligns the two: GOLD's ULD)
    cross_tokenizer_teacher = False

    def wrap(self, source: TeacherSource) -> TeacherSource:
        """An extra teacher or context as this trainer's loss would use it (identity for per-position losses)."""
        return source

    def tokenize_teacher_prompts(self, prompts: list) -> list[list[int]]:
        """A self-distillation context's prompts, tokenized as this trainer tokenizes its own teacher's."""
        return self.tokenize_prompts(prompts)

    def _chat_prompt_of(self, row: dict):
        """The prompt as `DataCollatorForChatML` takes it: `messages` without the last one; else `prompt`."""
        return row["messages"][:-1] if "messages" in row else row["prompt"]

    def _chat_tokenize(self, prompts: list) -> list[list[int]]:
        out = []
        for prompt in prompts:
            if isinstance(prompt, str):
                out.append(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
            else:
                out.append(
                    list(
                        self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)[
                            "input_ids"
                        ]
                    )
                )
        return out

    def fresh_rollouts(self, student, generator: torch.Generator, n: int) -> list[Rollout]:
        """`n` fresh rollouts from training prompts, sampled at the trainer's temperature and completion length."""
        n = min(n, len(self.dataset))
        indices = torch.randperm(len(self.dataset), generator=generator)[:n].tolist()
        rows = [self.dataset[i] for i in indices]
        prompts = self.tokenize_prompts([self.prompt_of(r) for r in rows])
        device_gen = torch.Generator(device=next(student.parameters()).device).manual_seed(
            int(torch.randint(0, 2**62, (1,), generator=generator))
        )
        completions = sample_completions(
            student,
            prompts,
            self.max_completion_length(),
            temperature=self.temperature(),
            eos_token_id=eos_token_ids(student, self.tokenizer),
            generator=device_gen,
        )
        return [
            Rollout(self.prompt_of(r), p, c, r, i)
            for p, c, r, i in zip(prompts, completions, rows, indices, strict=True)
        ]

    def _row_extras(self, batch: dict, b: int) -> dict:
        """What a teacher needs besides the ids, from row `b` of a buffered batch."""
        extras = {}
        # SDFT / SDPO: the privileged teacher prompt (left-padded), then the completion.
        if "teacher_input_ids" in batch:
            width = batch["completion_ids"].shape[1]
            t_ids = batch["teacher_input_ids"][b, :-width].cpu()
            t_mask = batch["teacher_attention_mask"][b, :-width].cpu()
            extras["trainer_teacher_prompt_ids"] = _unpadded(t_ids, t_mask)
        return extras

    def _buffered(self) -> list[Rollout]:
        buffers = getattr(self.trainer, "_buffered_inputs", None)
        if not buffers:
            return []
        rollouts = []
        for batch in buffers:
            for b in range(batch["prompt_ids"].shape[0]):
                prompt = _unpadded(batch["prompt_ids"][b].cpu(), batch["prompt_mask"][b].cpu())
                completion = _unpadded(batch["completion_ids"][b].cpu(), batch["completion_mask"][b].cpu())
                index = self.index.lookup(prompt)
                row = self.row(index)
                extras = self._row_extras(batch, b)
                prompt_obj = None if row is None else self.prompt_of(row)
                rollouts.append(Rollout(prompt_obj, prompt, completion, row, index, extras))
        return rollouts


class DistillationAdapter(TrainerAdapter):
    """`trl.DistillationTrainer`: rollouts from `_buffered_inputs`; loss = generalized JSD(`beta`) at `temperature`."""

    rollout_source = "the trainer's buffered on-policy rollouts (`_buffered_inputs`)"

    def teacher_loss(self) -> TeacherLoss:
        return TeacherLoss("jsd", beta=float(self.args.beta), temperature=float(self.args.temperature))

    def tokenize_prompts(self, prompts):
        return [list(ids) for ids in self.trainer._tokenize_prompts(prompts)[0]]

    def rollouts(self, student, generator):
        return self._buffered()


class GKDAdapter(TrainerAdapter):
    """
    `trl.experimental.gkd.GKDTrainer`: it keeps no rollouts, so fresh ones are sampled from training prompts at the
    trainer's `temperature` and `max_new_tokens`; loss = generalized JSD(`beta`) at temperature 1 (GKD's
    `compute_loss` does not pass its temperature to the loss).
    """

    rollout_source = "fresh rollouts from training prompts (GKDTrainer keeps none)"
    rollouts_are_local = False  # every process samples the same ones, from the seed they share

    def __init__(self, trainer, rollouts_per_pause: int = 4):
        super().__init__(trainer)
        self.rollouts_per_pause = rollouts_per_pause

    def teacher_loss(self) -> TeacherLoss:
        return TeacherLoss("jsd", beta=float(self.args.beta), temperature=1.0)

    def max_completion_length(self) -> int:
        return int(self.args.max_new_tokens)

    def prompt_of(self, row):
        return self._chat_prompt_of(row)

    def tokenize_prompts(self, prompts):
        return self._chat_tokenize(prompts)

    def rollouts(self, student, generator):
        return self.fresh_rollouts(student, generator, self.rollouts_per_pause)


class SDFTAdapter(TrainerAdapter):
    """
    `trl.experimental.sdft.SDFTTrainer`: rollouts and teacher prompts from `_buffered_inputs`; the trainer's teacher
    is the student under the privileged prompt (`teacher_model_kind` weights); loss per `distillation_mode`, on
    logits divided by `temperature`; the first `num_loss_tokens_to_skip` completion tokens carry no loss.
    """

    rollout_source = "the trainer's buffered rollouts with their privileged teacher prompts (`_buffered_inputs`)"

    def teacher_loss(self) -> TeacherLoss:
        mode, alpha, temperature = (
            self.args.distillation_mode,
            float(self.args.distillation_alpha),
            float(self.args.temperature),
        )
        if mode == "sampled_token":
            return TeacherLoss("sampled_token", temperature=temperature)
        top_k = self.args.distillation_topk if mode == "topk_logits" else None
        return TeacherLoss(
            "jsd", beta=alpha, temperature=temperature, top_k=top_k, add_tail=bool(self.args.distillation_add_tail)
        )

    def tokenize_prompts(self, prompts):
        return [list(ids) for ids in self.trainer._tokenize_prompts(prompts)]

    def rollouts(self, student, generator):
        return self._buffered()

    def wrap(self, source: TeacherSource) -> TeacherSource:
        """An extra teacher or context under SDFT's loss: the first `num_loss_tokens_to_skip` positions carry none."""
        return dataclasses.replace(source, skip_positions=int(getattr(self.args, "num_loss_tokens_to_skip", 0) or 0))

    def trainer_teacher(self, name: str) -> TeacherSource:
        """The student under SDFT's privileged prompt with SDFT's teacher weights; the positions its loss skips carry
        no signal."""
        model = self.trainer.accelerator.unwrap_model(self.trainer.teacher_model)
        return TeacherSource(
            name,
            self.teacher_loss(),
            model,
            lambda rollout: rollout.extras.get("trainer_teacher_prompt_ids"),
            self.trainer._get_teacher_context_for_self_distillation,
            int(getattr(self.args, "num_loss_tokens_to_skip", 0) or 0),
        )


#: Trainers whose rollouts or teacher live outside the training process, by class name: why each is refused.
REMOTE_TRAINERS = {
    "ServerDistillationTrainer": (
        "its teacher runs on a vLLM server that returns only its top-k log-probabilities, so the teacher's logits at a "
        "node, and the gradient of the trainer's sparse loss over the vocabulary, are not in this process"
    ),
    "AsyncDistillationTrainer": (
        "its rollouts come from a background worker process through a queue that training consumes (reading them "
        "would take batches from the run), and its teacher runs on a vLLM server that returns only its top-k "
        "log-probabilities"
    ),
}
CLI_POINTER = (
    "Diagnose the same student, teacher and data without training: `gad diagnose --config "
    "configs/diagnose_default.yaml --student PATH --teachers teacher=PATH --dataset DATA` (see the README, "
    '"Verifiers and datasets"), or train with trl.DistillationTrainer and the teacher loaded in-process.'
)


#: Teacher-server settings (the teacher's logits are not in this process), by trainer attribute: why each is refused.
TEACHER_SERVER = (
    "its teacher runs on a vLLM server (`use_teacher_server=True`) that returns only top-k log-probabilities, so the "
    "teacher's logits at a node, and the gradient of the trainer's loss over the vocabulary, are not in this process"
)
SUPPORTED = (
    "trl.DistillationTrainer, trl.experimental.gkd.GKDTrainer, trl.experimental.sdft.SDFTTrainer, "
    "trl.experimental.gold.GOLDTrainer, trl.experimental.sdpo.SDPOTrainer, trl.experimental.iw_opd.IWOPDTrainer"
)


def adapter_for(trainer, rollouts_per_pause: int = 4) -> TrainerAdapter:
    """The adapter of a supported trainer, or a `ValueError` naming the supported ones."""
    from trl import DistillationTrainer

    from .rollout_losses import GOLDAdapter, IWOPDAdapter, SDPOAdapter

    with warnings.catch_warnings():  # importing trl.experimental warns; the user chose these trainers already
        warnings.simplefilter("ignore")
        from trl.experimental.gkd import GKDTrainer
        from trl.experimental.gold import GOLDTrainer
        from trl.experimental.iw_opd import IWOPDTrainer
        from trl.experimental.sdft import SDFTTrainer
        from trl.experimental.sdpo import SDPOTrainer

    # Before the isinstance checks: ServerDistillationTrainer subclasses DistillationTrainer but has no local teacher.
    for cls in type(trainer).__mro__:
        if cls.__name__ in REMOTE_TRAINERS:
            raise ValueError(
                f"GradientAlignmentCallback does not support {type(trainer).__name__}: {REMOTE_TRAINERS[cls.__name__]}. "
                f"{CLI_POINTER}"
            )
    if getattr(trainer, "use_teacher_server", False):
        raise ValueError(
            f"GradientAlignmentCallback does not support {type(trainer).__name__} with a teacher server: "
            f"{TEACHER_SERVER}. Load the teacher in-process (`use_teacher_server=False`), or: {CLI_POINTER}"
        )
    if isinstance(trainer, SDFTTrainer):
        return SDFTAdapter(trainer)
    if isinstance(trainer, SDPOTrainer):
        return SDPOAdapter(trainer)
    if isinstance(trainer, GKDTrainer):
        return GKDAdapter(trainer, rollouts_per_pause)
    if isinstance(trainer, GOLDTrainer):
        return GOLDAdapter(trainer, rollouts_per_pause)
    if isinstance(trainer, IWOPDTrainer):
        return IWOPDAdapter(trainer, rollouts_per_pause)
    if isinstance(trainer, DistillationTrainer):
        return DistillationAdapter(trainer)
    raise ValueError(
        f"GradientAlignmentCallback does not support {type(trainer).__name__}. Supported trainers: {SUPPORTED}."
    )
