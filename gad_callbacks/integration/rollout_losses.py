"""Adapters of trainers whose loss at a position is not a function of the two distributions there alone.

GOLD with a cross-tokenizer teacher aligns the two sequences by their text (ULD); IW-OPD weighs each token by the
teacher-student gap accumulated over the rest of the rollout; SDPO adds a reward (policy-gradient) term to its
self-distillation. For these the direction at a node is `-dL/dz`, `z` the student's logits at that position and `L`
the trainer's own loss over the rollout, by autograd through the trainer's own loss functions (`TrainerDirection`).
Every teacher of such a run (the trainer's, extra models, self-distillation contexts) is scored under that loss with
its own logits in the trainer teacher's place: what this trainer would do with this teacher.

The loss is taken on the rollout alone (a batch of one): the trainer's normalisation by the batch's token count is a
positive factor per rollout, which no cosine sees. Where the trainer mixes terms normalised differently (SDPO's policy
and distillation terms, ULD's cross-entropy and distillation terms), each term keeps the factor the trainer gives it
in the rollout's own micro-batch.
"""

import contextlib
import copy
import inspect
import weakref

import torch

from ..diagnosis import Rollout, TeacherLoss, TeacherSource, TrainerDirection
from ..engine.model_io import eval_mode, logits_at, model_device
from .adapters import TrainerAdapter, _unpadded


@contextlib.contextmanager
def metrics_untouched(trainer):
    """Some TRL loss functions append to the trainer's `_metrics` (which its next `log` averages): work on a copy."""
    saved = getattr(trainer, "_metrics", None)
    if saved is not None:
        trainer._metrics = copy.deepcopy(saved)
    try:
        yield
    finally:
        if saved is not None:
            trainer._metrics = saved


def negative_gradient(loss_of, logits: torch.Tensor) -> torch.Tensor | None:
    """`-dL/dz` for `L = loss_of(z)` at `z = logits` (a fresh leaf: nothing else's `.grad` is touched); None when
    `loss_of` returns None (no loss on this rollout)."""
    with torch.enable_grad():
        z = logits.detach().requires_grad_(True)
        loss = loss_of(z)
        if loss is None:
            return None
        (grad,) = torch.autograd.grad(loss, z)
    return -grad


def completion_logits(model, rollout: Rollout) -> torch.Tensor:
    """The student's logits that predict each completion token, `[L, V]` (float32, CPU)."""
    p, length = len(rollout.prompt_ids), len(rollout.completion_ids)
    return logits_at(model, torch.tensor(rollout.prompt_ids + rollout.completion_ids), range(p - 1, p + length - 1))


class StudentLogits:
    """
    The student's completion logits ([`completion_logits`]) of the rollout asked about last. Every teacher of a
    whole-rollout loss needs them, and a pass asks all its teachers about one rollout in a row, at the same weights:
    one forward per rollout instead of one per teacher. Held no longer than the rollout itself (a pause's), so no
    `[L, V]` tensor outlives the pause.
    """

    def __init__(self, student):
        self.student, self._rollout, self._logits = student, None, None

    def __call__(self, rollout: Rollout) -> torch.Tensor:
        if self._rollout is None or self._rollout() is not rollout:
            self._logits = completion_logits(self.student, rollout)
            self._rollout = weakref.ref(rollout, self._drop)
        return self._logits

    def _drop(self, ref) -> None:
        if self._rollout is ref:  # the rollout held now died (not an earlier one, whose reference was replaced)
            self._rollout, self._logits = None, None


def rollout_loss_teacher(source: TeacherSource, student_logits, rollout_loss, temperature: float) -> TeacherSource:
    """
    `source` scored under a whole-rollout loss: `rollout_loss(z [L, V], teacher_logits [L, V], rollout)` -> scalar
    (or None: no signal on this rollout). The teacher's logits come from `source` as they would for a per-position
    loss (its prompt, weights and context); the student's from `student_logits(rollout)` ([`StudentLogits`]), at
    its current weights.
    """

    def directions(rollout: Rollout, positions: list[int]):
        length = len(rollout.completion_ids)
        teacher = source.logits(rollout, list(range(length))) if length else []
        if not teacher or any(t is None for t in teacher):
            return [None] * len(positions)
        teacher = torch.stack(teacher)
        if not bool(torch.isfinite(teacher).all()):  # counted as non_finite_teacher at the node, never raised
            nan = torch.full_like(teacher[0], float("nan"))
            return [TrainerDirection(nan, nan) for _ in positions]
        b = negative_gradient(lambda z: rollout_loss(z, teacher, rollout), student_logits(rollout))
        if b is None:
            return [None] * len(positions)
        return [TrainerDirection(b[t], teacher[t]) for t in positions]

    loss = TeacherLoss("trainer", temperature=temperature)
    return TeacherSource(source.name, loss, source.model, source.prompt, directions=directions)


class _OnPolicySlices:
    """GOLD and IW-OPD keep one step's micro-batches as full sequences (`input_ids`, `labels`, `prompts`), each
    generated by the student or taken from the dataset (flags): rollouts are the generated ones."""

    flags_attribute = ""

    def __init__(self, trainer, rollouts_per_pause: int = 4):
        super().__init__(trainer)
        self.rollouts_per_pause = rollouts_per_pause

    def rollouts(self, student, generator):
        buffers = getattr(self.trainer, "_buffered_inputs", None) or []
        flags = getattr(self.trainer, self.flags_attribute, None) or [True] * len(buffers)
        slices = [batch for batch, on_policy in zip(buffers, flags) if batch is not None and on_policy]
        # A step trained off-policy only (`lmbda` < 1) left no student rollout: sample fresh ones at the trainer's
        # settings. The flags are the same on every process, so all of them take the same branch; decided before
        # anything can fail, so that the callback's gathering stays in step across processes.
        self.rollouts_are_local = bool(slices)
        rollouts = []
        for batch in slices:
            shifted = batch["labels"][:, 1:].cpu() != -100
            for b in range(batch["input_ids"].shape[0]):
                prompt = _unpadded(batch["prompts"][b].cpu(), batch["prompt_attention_mask"][b].cpu())
                labels = batch["labels"][b].cpu()
                completion = batch["input_ids"][b].cpu()[labels != -100].tolist()
                # The slice's shape, for a loss whose terms the trainer normalises over the micro-batch (GOLD's ULD).
                extras = {"slice_rows": int(shifted.shape[0]), "slice_tokens": int(shifted.sum())}
                if batch.get("rollout_logprobs") is not None:  # IW-OPD under vLLM: the sampler's log-probabilities
                    extras["rollout_logprobs"] = batch["rollout_logprobs"][b].cpu()[labels != -100].float()
                for key in ("original_prompt_text", "original_completion_text"):  # what GOLD's teacher re-tokenizes
                    if isinstance(batch.get(key), list):
                        extras[key] = batch[key][b]
                index = self.index.lookup(prompt)
                row = self.row(index)
                prompt_obj = None if row is None else self.prompt_of(row)
                rollouts.append(Rollout(prompt_obj, prompt, completion, row, index, extras))
        return rollouts if slices else self.fresh_rollouts(student, generator, self.rollouts_per_pause)


class GOLDAdapter(_OnPolicySlices, TrainerAdapter):
    """
    `trl.experimental.gold.GOLDTrainer`: rollouts from the step's on-policy slices (`_buffered_inputs`), fresh ones
    at a step that had none. Same tokenizer: generalized JSD(`beta`) at `temperature`. Cross-tokenizer teacher
    (`use_uld_loss` with a `teacher_tokenizer_name_or_path`): the trainer's ULD loss, whose sequence alignment
    decides which student positions get a gradient; a node where it gives none is undefined (`zero_direction`).
    Extra teachers and contexts share the student's tokenizer, so they get GOLD's same-tokenizer loss.
    """

    rollout_source = "the trainer's on-policy slices (`_buffered_inputs`), or fresh rollouts at a step that had none"
    flags_attribute = "_buffered_on_policy"

    def __init__(self, trainer, rollouts_per_pause: int = 4):
        super().__init__(trainer, rollouts_per_pause)
        self.cross_tokenizer_teacher = bool(trainer.use_uld_loss and trainer.teacher_tokenizer is not None)

    def teacher_loss(self) -> TeacherLoss:
        return TeacherLoss("jsd", beta=float(self.args.beta), temperature=float(self.args.temperature))

    def prompt_of(self, row):
        return self._chat_prompt_of(row)

    def tokenize_prompts(self, prompts):
        return self._chat_tokenize(prompts)

    def trainer_teacher(self, name: str) -> TeacherSource:
        if not self.cross_tokenizer_teacher:
            return super().trainer_teacher(name)
        model = self.trainer.accelerator.unwrap_model(self.trainer.teacher_model)
        loss = TeacherLoss("trainer", temperature=float(self.args.uld_student_temperature))
        return TeacherSource(name, loss, model, lambda rollout: None, directions=self._uld_directions)

    def _uld_directions(self, rollout: Rollout, positions: list[int]):
        """ULD over the rollout as GOLD's `compute_loss` builds it: the teacher re-tokenizes the decoded texts."""
        from trl.experimental.gold.gold_trainer import build_teacher_inputs_from_texts

        trainer, p = self.trainer, len(rollout.prompt_ids)
        ids = torch.tensor([rollout.prompt_ids + rollout.completion_ids])
        labels = ids.clone()
        labels[:, :p] = -100
        batch = {"input_ids": ids, "labels": labels}
        trainer._maybe_add_completion_byte_offsets(batch)  # the student's completion byte offsets (extended ULD)

        def text(key, token_ids):  # the slice's own texts; for a fresh rollout, decoded as GOLD decodes its own
            if key in rollout.extras:
                return rollout.extras[key]
            return self.tokenizer.decode(token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

        # As this TRL's `compute_loss` calls it (TRL 1.13's takes no `use_extended_uld`).
        extra = {}
        if "use_extended_uld" in inspect.signature(build_teacher_inputs_from_texts).parameters:
            extra["use_extended_uld"] = trainer.uld_loss_fn.use_extended_uld
        t_ids, t_labels, t_mask, t_offsets = build_teacher_inputs_from_texts(
            trainer.teacher_tokenizer,
            [text("original_prompt_text", rollout.prompt_ids)],
            [text("original_completion_text", rollout.completion_ids)],
            **extra,
        )
        teacher = self.trainer.accelerator.unwrap_model(trainer.teacher_model)
        device = model_device(teacher)  # ULD keeps its vocabulary mapping on the trainer's device
        with torch.no_grad(), eval_mode(teacher):
            t_logits = teacher(input_ids=t_ids.to(device), attention_mask=t_mask.to(device)).logits.float()
        z = logits_at(self._student(), ids[0], range(ids.shape[1]))[None]  # all positions: ULD reads them unshifted
        uld = trainer.uld_loss_fn
        # ULD = its cross-entropy term (a mean over the micro-batch's tokens) + its distillation term (a mean over
        # rows): on one row their ratio is not the trainer's. Take them apart and weigh each as in the rollout's
        # micro-batch (a fresh rollout is a micro-batch of its own).
        rows = rollout.extras.get("slice_rows", 1)
        row_tokens = int((labels[:, 1:] != -100).sum())
        tokens = rollout.extras.get("slice_tokens", row_tokens)

        def loss(zz, with_cross_entropy=False):
            saved = {k: v for k, v in vars(uld).items() if k.startswith("last_") or k == "crossentropy_weight"}
            try:
                if not with_cross_entropy:
                    uld.crossentropy_weight = 0.0
                total = uld(
                    student_logits=zz.to(device),
                    teacher_logits=t_logits,
                    student_labels=labels.to(device),
                    teacher_labels=t_labels.to(device),
                    student_input_ids=ids.to(device),
                    teacher_input_ids=t_ids.to(device),
                    student_byte_offsets=batch.get("byte_offsets"),
                    teacher_byte_offsets=t_offsets,
                )
            finally:
                vars(uld).update(saved)  # the trainer logs `last_*` after its own call; keep them its own
            return total

        b = negative_gradient(lambda zz: loss(zz) / rows, z)[0]
        if uld.crossentropy_weight > 0:
            # (distillation + cross-entropy) - distillation: the cross-entropy term alone, a mean over this row.
            both = negative_gradient(lambda zz: loss(zz, with_cross_entropy=True), z)[0] - b * rows
            b = b + both * row_tokens / max(tokens, 1)
        b = b.cpu()
        # The logits that predict completion token t sit at row p + t - 1.
        return [TrainerDirection(b[p + t - 1]) for t in positions]

    def _student(self):
        return self.trainer.accelerator.unwrap_model(self.trainer.model)


class IWOPDAdapter(_OnPolicySlices, TrainerAdapter):
    """
    `trl.experimental.iw_opd.IWOPDTrainer`: rollouts from the step's on-policy slices (`_buffered_inputs`). Its loss
    (`distillation_objective`): IW-OPD's sampled-token gap weighted by the prefix weights of the whole rollout, or
    its JSD variants (sparse top-1 with `loss_top_k=1`, top-k or full generalized JSD), through the trainer's own
    functions. The gap uses the sampler's log-probabilities where the trainer has them (vLLM generation), else the
    student's current ones, as the trainer does.
    """

    rollout_source = "the trainer's on-policy slices (`_buffered_inputs`), or fresh rollouts at a step that had none"
    flags_attribute = "_buffered_on_policy_flags"

    def __init__(self, trainer, rollouts_per_pause: int = 4):
        super().__init__(trainer, rollouts_per_pause)
        self.student = trainer.accelerator.unwrap_model(trainer.model)
        self.student_logits = StudentLogits(self.student)

    def teacher_loss(self) -> TeacherLoss:
        return TeacherLoss("trainer", temperature=float(self.args.temperature))

    def prompt_of(self, row):
        # IW-OPD's collator: the prompt is everything before a final assistant turn (the whole conversation if none).
        messages = row["messages"]
        return messages[:-1] if len(messages) > 1 and messages[-1].get("role") == "assistant" else messages

    def tokenize_prompts(self, prompts):
        return self._chat_tokenize(prompts)

    def trainer_teacher(self, name: str) -> TeacherSource:
        return self.wrap(super().trainer_teacher(name))

    def wrap(self, source: TeacherSource) -> TeacherSource:
        return rollout_loss_teacher(source, self.student_logits, self.rollout_loss, float(self.args.temperature))

    def rollout_loss(self, z: torch.Tensor, teacher: torch.Tensor, rollout: Rollout) -> torch.Tensor:
        """IWOPDTrainer.compute_loss (local teacher) on a batch of one rollout, every completion token valid."""
        import torch.nn.functional as F

        trainer = self.trainer
        tokens = torch.tensor([rollout.completion_ids])
        s, t = z[None], teacher[None]
        with metrics_untouched(trainer):
            if trainer.distillation_objective == "iw_opd":
                lq = F.log_softmax(t / trainer.temperature, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
                sampled = rollout.extras.get("rollout_logprobs")
                return trainer._compute_iw_opd_loss(
                    student_logits=s,
                    completion_tokens=tokens,
                    labels=tokens,
                    teacher_actual_logprobs=lq,
                    rollout_logprobs=None if sampled is None else sampled[None],
                )
            if trainer.beta > 0 and trainer.loss_top_k == 1:
                return trainer._compute_local_sparse_top_1_divergence_loss(
                    student_logits=s, teacher_logits=t, completion_tokens=tokens, labels=tokens
                )
            return trainer.generalized_jsd_loss(
                student_logits=s,
                teacher_logits=t,
                labels=tokens,
                beta=trainer.beta,
                temperature=trainer.temperature,
                top_k=trainer.loss_top_k,
                add_tail=trainer.loss_add_tail,
            )


class SDPOAdapter(TrainerAdapter):
    """
    `trl.experimental.sdpo.SDPOTrainer`: rollouts, their advantages and their teacher prompts (the question re-asked
    with a successful sibling rollout as demonstration) from `_buffered_inputs`. Loss: `(1 - w) * policy + w *
    distillation` (`w = distillation_weight`), the distillation per `distillation_mode` on logits divided by
    `temperature`, the policy term GRPO-style on the rollout's advantage; each term normalised as the trainer does in
    the rollout's micro-batch. A rollout without a demonstration gives the trainer's own teacher no distillation
    signal. Importance ratios (`num_iterations` > 1) are those the trainer would take now: current log-probabilities
    against the ones at generation time (1 when it keeps none).
    """

    rollout_source = "the trainer's buffered rollouts with their advantages and teacher prompts (`_buffered_inputs`)"

    def __init__(self, trainer):
        super().__init__(trainer)
        self.student = trainer.accelerator.unwrap_model(trainer.model)
        self.student_logits = StudentLogits(self.student)

    def teacher_loss(self) -> TeacherLoss:
        return TeacherLoss("trainer", temperature=float(self.args.temperature))

    def tokenize_prompts(self, prompts):
        return [list(ids) for ids in self.trainer._tokenize_prompts(prompts)]

    def tokenize_teacher_prompts(self, prompts):
        """As SDPO tokenizes its re-prompts: untruncated, then the last `max_reprompt_len` tokens."""
        keep = self.args.max_reprompt_len
        return [
            list(ids)[-keep:] if keep else list(ids) for ids in self.trainer._tokenize_prompts_untruncated(prompts)
        ]

    def rollouts(self, student, generator):
        return self._buffered()

    def _row_extras(self, batch: dict, b: int) -> dict:
        extras = super()._row_extras(batch, b)
        rows, mask = batch["completion_mask"].shape[0], batch["completion_mask"].cpu().float()
        length = float(mask[b].sum())
        policy_norm = {
            "grpo": 1.0 / (max(length, 1.0) * rows),
            "dr_grpo": 1.0 / (rows * self.trainer.max_completion_length),
        }.get(self.trainer.loss_type, 1.0 / max(float(mask.sum()), 1.0))  # dapo, bnpo: the micro-batch's tokens
        demonstrated = batch.get("self_distillation_mask")
        old = batch.get("old_per_token_logps")  # num_iterations > 1: the log-probabilities at generation time
        if old is not None:
            extras["old_logps"] = old[b].cpu()[batch["completion_mask"][b].cpu().bool()].float()
        extras.update(
            advantage=float(batch["advantages"][b]),
            demonstrated=True if demonstrated is None else bool(demonstrated[b] > 0),
            distillation_norm=1.0 / (max(length, 1.0) * rows),
            policy_norm=policy_norm,
        )
        return extras

    def trainer_teacher(self, name: str) -> TeacherSource:
        """The student re-prompted with a successful sibling's completion, under SDPO's teacher weights."""
        source = TeacherSource(
            name,
            self.teacher_loss(),
            self.trainer.accelerator.unwrap_model(self.trainer.teacher_model),
            lambda rollout: rollout.extras.get("trainer_teacher_prompt_ids"),
            self.trainer._get_teacher_context_for_self_distillation,
        )
        return self.wrap(source, own=True)

    def wrap(self, source: TeacherSource, own: bool = False) -> TeacherSource:
        def loss(z, teacher, rollout):
            return self.rollout_loss(z, teacher, rollout, own)

        return rollout_loss_teacher(source, self.student_logits, loss, float(self.args.temperature))

    def rollout_loss(self, z: torch.Tensor, teacher: torch.Tensor, rollout: Rollout, own: bool = False):
        """SDPOTrainer.compute_loss's terms for one rollout, with its micro-batch's normalisation (`own`: the trainer's
        teacher, masked where the rollout had no demonstration)."""
        from trl.experimental.sdpo.loss_utils import (
            apply_importance_sampling_clipping,
            compute_full_logit_self_distillation_loss,
            compute_sampled_token_self_distillation_loss,
            compute_topk_self_distillation_loss,
        )
        from trl.trainer.utils import selective_log_softmax

        a, trainer, extras = self.args, self.trainer, rollout.extras
        if "advantage" not in extras:
            return None  # not one of the trainer's rollouts: no advantage, no normalisation to read
        w = float(a.distillation_weight)
        distilled = w > 0 and (extras["demonstrated"] or not own)
        if not distilled and w == 1.0:
            return None
        s, t = (z / a.temperature)[None], (teacher / a.temperature)[None]
        tokens = torch.tensor([rollout.completion_ids])
        logps = selective_log_softmax(s, tokens)
        old = extras.get("old_logps")
        old = logps.detach() if old is None else old[None]
        total = s.sum() * 0.0
        if distilled:
            if a.distillation_mode == "topk_logits":
                per_token = compute_topk_self_distillation_loss(
                    s,
                    t,
                    distillation_topk=a.distillation_topk,
                    distillation_alpha=a.distillation_alpha,
                    distillation_add_tail=a.distillation_add_tail,
                )
            elif a.distillation_mode == "full_logits":
                per_token = compute_full_logit_self_distillation_loss(s, t, distillation_alpha=a.distillation_alpha)
            else:
                per_token = compute_sampled_token_self_distillation_loss(
                    s, t, tokens, distillation_alpha=a.distillation_alpha
                )
            if a.distillation_is_clip is not None and "old_logps" in extras:
                per_token = apply_importance_sampling_clipping(per_token, logps, old, a.distillation_is_clip)
            total = total + w * per_token.sum() * extras["distillation_norm"]
        if w < 1.0:
            log_ratio = logps - old
            if trainer.importance_sampling_level == "sequence":
                log_ratio = log_ratio.sum(-1, keepdim=True) / max(tokens.shape[1], 1)
            ratio = torch.exp(log_ratio)
            clipped = torch.clamp(ratio, 1 - trainer.epsilon_low, 1 + trainer.epsilon_high)
            advantage = extras["advantage"]
            per_token = -torch.min(ratio * advantage, clipped * advantage) * torch.ones_like(logps)
            total = total + (1 - w) * per_token.sum() * extras["policy_norm"]
        return total
