"""What a diagnostic pass takes: each teacher's loss definition, the knobs, and the nodes."""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..method.alignment import total_variation
from ..method.directions import LOSSES, _restrict_top_k, distillation_direction
from ..method.success import SuccessEstimate


@dataclass
class TeacherLoss:
    """
    How a teacher's per-token distillation loss is defined (read off the host trainer's arguments).

    Args:
        loss (`str`, *optional*, defaults to `"reverse_kl"`):
            `"reverse_kl"`, `"forward_kl"`, `"jsd"`, `"sampled_token"`, or `"trainer"`: the direction at each node is
            given whole, as a [`TrainerDirection`] in the node's teacher signal (the host trainer's own loss over the
            rollout, differentiated by autograd; for losses whose gradient at a position depends on more than the two
            distributions there).
        beta (`float`, *optional*):
            TRL's `beta` for `"jsd"` (0 forward KL, 1 reverse KL).
        temperature (`float`, *optional*, defaults to `1.0`):
            Temperature of the loss (divides both logit vectors).
        top_k (`int`, *optional*):
            Student top-k support (SDFT `topk_logits`).
        add_tail (`bool`, *optional*, defaults to `False`):
            Tail bucket with `top_k`.
    """

    loss: str = "reverse_kl"
    beta: float | None = None
    temperature: float = 1.0
    top_k: int | None = None
    add_tail: bool = False

    def __post_init__(self):
        if self.loss not in (*LOSSES, "trainer"):
            raise ValueError(f"Unknown loss {self.loss!r}; expected one of {(*LOSSES, 'trainer')}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")

    def distance(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
        """
        Total-variation distance of the teacher's and the student's distributions as this loss sees them: float64, at
        the loss temperature, on the loss's support (the student's top-k, with the tail bucket, under `top_k`).
        """
        log_p = torch.log_softmax(student_logits.reshape(-1).double() / self.temperature, dim=-1)
        log_q = torch.log_softmax(teacher_logits.reshape(-1).double() / self.temperature, dim=-1)
        if self.top_k is not None and self.loss != "sampled_token":
            log_p, log_q = _restrict_top_k(log_p, log_q, min(self.top_k, log_p.numel()), self.add_tail)
        return total_variation(log_p, log_q)

    def direction(self, student_logits, teacher_logits, sampled_token=None) -> torch.Tensor:
        if self.loss == "trainer":
            raise ValueError("A 'trainer' loss has no per-node formula: its direction comes with the node.")
        return distillation_direction(
            student_logits,
            teacher_logits,
            self.loss,
            beta=self.beta,
            temperature=self.temperature,
            sampled_token=sampled_token,
            top_k=self.top_k,
            add_tail=self.add_tail,
        )


@dataclass
class TrainerDirection:
    """
    A teacher's signal at a node, given whole (a teacher whose loss is `TeacherLoss("trainer")`).

    Some trainers' losses are not a function of the two distributions at one position: a cross-tokenizer sequence
    alignment (GOLD's ULD), per-token weights computed over the whole rollout (IW-OPD), a reward term beside the
    distillation (SDPO). Their direction at a node is `-dL/dz` there, `L` the trainer's own loss over the rollout,
    computed by autograd by whoever builds the node (the trainer's adapter).

    Args:
        direction (`torch.Tensor`): `-dL/dz` at the node, `[V]` over the student's vocabulary.
        teacher_logits (`torch.Tensor`, *optional*): The teacher's logits at the node over the student's vocabulary,
            when it has them (for the teacher advantage, the candidate set and the distance); None for a teacher
            with another tokenizer.
    """

    direction: torch.Tensor
    teacher_logits: torch.Tensor | None = None


ALLOCATIONS = ("adaptive", "uniform")


@dataclass
class DiagnosisConfig:
    """
    Knobs of one diagnostic pass.

    Args:
        num_rollouts (`int`, *optional*, defaults to `8`):
            Targeted rollouts per candidate token (uniform allocation); under adaptive allocation a node's budget is
            `num_rollouts` times its number of candidates, spent only as far as needed.
        max_new_tokens (`int`, *optional*, defaults to `256`):
            Tokens sampled after a forced candidate, at most (a node's own `max_new_tokens` can lower it).
        temperature (`float`, *optional*, defaults to `1.0`):
            Student sampling temperature (of the rollouts, of `p`, and of `q` in the teacher advantage).
        mass (`float`, *optional*, defaults to `0.95`):
            Student probability mass the candidate set covers.
        max_candidates (`int`, *optional*, defaults to `8`):
            Cap on the student's own candidates.
        teacher_top (`int`, *optional*, defaults to `1`):
            Top tokens of each teacher added to the candidates.
        params (`str`, *optional*, defaults to `"trainable"`):
            Parameter space: `"trainable"`, `"all"`, or a regular expression over parameter names.
        max_vectors (`int`, *optional*, defaults to `64`):
            Most parameter-space vectors per backward pass (memory bound: this many copies of one block's parameters).
        sketch_dim (`int`, *optional*):
            CountSketch dimension replacing exact inner products (very large parameter sets).
        num_bootstrap (`int`, *optional*, defaults to `200`):
            Points of the likelihood boundary searched for each per-node interval (profile likelihood, see
            `method/intervals.py`; the name is kept from the bootstrap it replaced). `0` turns per-node intervals off
            (they are then NaN).
        confidence (`float`, *optional*, defaults to `0.95`):
            Interval level.
        zero_tol (`float`, *optional*, defaults to `1e-4`):
            A teacher whose next-token distribution is within this total-variation distance of the student's (float64,
            at the loss temperature, on the loss's support) *is* the student at that node: its cosines are undefined
            (`teacher_matches_student`). Decided on the distributions, not on the size of `b` (which scales with
            `1 - p_max`). Measured on SmolLM2-135M (49,152 tokens, float32): two forwards of the same weights with
            other shapes (shorter sequence, left padding) differ by at most 3.4e-6, while the same model under another
            prompt prefix differs by 0.087 or more. Calibrated for float32 logits; half-precision forwards round far
            more coarsely, raise it there.
        max_batch_rows (`int`, *optional*, defaults to `512`):
            Most continuations decoded in one batch.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the pass; each purpose (targeted rollouts, interval search) draws from its own stream derived
            from it (the global RNG is never used).
        allocation (`str`, *optional*, defaults to `"uniform"`):
            `"uniform"`: `num_rollouts` per candidate. `"adaptive"`: `min_rollouts` per candidate, then rounds spent
            where they shrink the noise of the teachers' cosines most (Neyman allocation), stopping a node once every
            teacher's interval is narrower than `target_width`, or once all its continuations so far ended the same
            way. Adaptive spends 0.64-0.92x the rollouts for the same interval width and its per-node intervals keep
            their coverage, but counts that depend on the data make the success means, hence pooled alignment, no
            longer exactly unbiased (measured: off by up to 0.09 where uniform allocation was within its interval),
            which is why it is not the default.
        min_rollouts (`int`, *optional*, defaults to `4`):
            First-round rollouts per candidate under adaptive allocation (at least 2: the pooled estimator needs a
            variance per candidate).
        target_width (`float`, *optional*, defaults to `0.5`):
            Adaptive allocation stops a node once all its parameter-space intervals are at most this wide.
        allocation_rounds (`int`, *optional*, defaults to `3`):
            Rounds after the first under adaptive allocation.
        screen_rollouts (`int`, *optional*, defaults to `1`):
            Uniform allocation: targeted rollouts per candidate spent first, to screen the node. A node whose screening
            continuations all end the same way (all right or all wrong: most often a node whose outcome is already
            settled) is stopped there, except with probability `screen_keep`, when it gets its remaining rollouts and
            weight `1 / screen_keep` in pooled alignment and in means (Russian roulette: the pooled sums keep their
            exact unbiasedness, see `_screen` in `diagnosis/diagnose.py`). A stopped node is flat (its pooled terms
            are 0, it still counts), has no parameter-space interval and costs no parameter-space backward. `0`
            turns screening off.
        screen_keep (`float`, *optional*, defaults to `0.25`):
            Probability that a node whose screening rollouts all ended the same way is finished anyway.
        reuse_observed (`bool`, *optional*, defaults to `False`):
            Count the rollout's own verified outcome as one more sample of its sampled token. Off by default: node
            selection looks at the rollout's continuation (its length, and its entropies under `"entropy"`), so that
            outcome is not an unbiased draw of `S` for the sampled token.
        eos_token_id (`list[int]`, *optional*):
            Tokens that end a targeted continuation; TRL's set (generation config + tokenizer) when omitted, see
            [`~gad_callbacks.engine.model_io.eos_token_ids`].
    """

    num_rollouts: int = 8
    max_new_tokens: int = 256
    temperature: float = 1.0
    mass: float = 0.95
    max_candidates: int = 8
    teacher_top: int = 1
    params: str = "trainable"
    max_vectors: int = 64
    sketch_dim: int | None = None
    num_bootstrap: int = 200
    confidence: float = 0.95
    zero_tol: float = 1e-4
    max_batch_rows: int = 512
    seed: int = 0
    allocation: str = "uniform"
    min_rollouts: int = 4
    target_width: float = 0.5
    allocation_rounds: int = 3
    screen_rollouts: int = 1
    screen_keep: float = 0.25
    reuse_observed: bool = False
    eos_token_id: list[int] | None = None

    def __post_init__(self):
        checks = {
            "num_rollouts": self.num_rollouts >= 1,
            "max_new_tokens": self.max_new_tokens >= 0,
            "temperature": self.temperature > 0,
            "mass": 0 < self.mass <= 1,
            "max_candidates": self.max_candidates >= 1,
            "teacher_top": self.teacher_top >= 0,
            "max_vectors": self.max_vectors >= 1,
            "sketch_dim": self.sketch_dim is None or self.sketch_dim >= 1,
            "num_bootstrap": self.num_bootstrap >= 0,
            "confidence": 0 < self.confidence < 1,
            "zero_tol": self.zero_tol >= 0,
            "max_batch_rows": self.max_batch_rows >= 1,
            "allocation": self.allocation in ALLOCATIONS,
            "min_rollouts": self.min_rollouts >= 2,
            "target_width": 0 <= self.target_width <= 2,
            "allocation_rounds": self.allocation_rounds >= 0,
            "screen_rollouts": self.screen_rollouts >= 0,
            "screen_keep": 0 < self.screen_keep <= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"Invalid DiagnosisConfig value(s): {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}."
            )

    @property
    def first_round(self) -> int:
        """Targeted continuations per candidate in the first round: the screen, adaptive's first round, or all."""
        if self.allocation == "adaptive":
            return min(self.min_rollouts, self.num_rollouts)
        return self.screen_rollouts if 0 < self.screen_rollouts < self.num_rollouts else self.num_rollouts


@dataclass
class Node:
    """
    A node to diagnose: the first `prefix_len` tokens of `sequences[sequence]` precede it.

    Args:
        sequence (`int`):
            Index of the rollout (prompt + completion token ids) in the `sequences` passed alongside.
        prefix_len (`int`):
            Tokens before the node; the student's logits at position `prefix_len - 1` are its next-token logits.
        teacher_logits (`dict[str, torch.Tensor | None]`):
            Each teacher's logits at the node, `[V]`, already re-mapped to this student position (a
            [`TrainerDirection`] for a teacher whose loss is `"trainer"`); `None` when the teacher's loss gives no
            signal at this node (recorded as undefined, `"no_signal"`).
        score (`Callable`):
            Verifier of continuations (see [`estimate_success`]).
        sampled_token (`int`, *optional*):
            The token the student emitted at the node; read from the sequence when it is long enough.
        success (`SuccessEstimate`, *optional*):
            Known success estimates (skip the rollouts; its candidates are used as `K(u)`).
        max_new_tokens (`int`, *optional*):
            This node's own cap on targeted continuations (e.g. the trainer's remaining completion budget).
        observed_score (`float`, *optional*):
            The verified outcome of the rollout the node was taken from (used with `DiagnosisConfig.reuse_observed`).
        seed (`int`, *optional*):
            Seed of every random choice at this node (its targeted continuations, screening coin, interval search).
            When omitted, derived from `DiagnosisConfig.seed` and the node's index in the call. Give each node a seed
            of its own rollout to keep its numbers independent of which other nodes share the call.
    """

    sequence: int
    prefix_len: int
    teacher_logits: dict[str, "torch.Tensor | TrainerDirection | None"]
    score: Callable | None = None
    sampled_token: int | None = None
    success: SuccessEstimate | None = None
    max_new_tokens: int | None = None
    observed_score: float | None = None
    seed: int | None = None

    def sampled(self, sequence: torch.Tensor) -> int | None:
        """The sampled token: given, or read from the rollout when it reaches past the node."""
        if self.sampled_token is None and self.prefix_len < sequence.numel():
            return int(sequence[self.prefix_len])
        return self.sampled_token

    def teacher_signal(self, name: str, vocab: int) -> tuple["torch.Tensor | TrainerDirection | None", str]:
        """
        Teacher `name`'s logits here as a float32 CPU vector (or its [`TrainerDirection`], likewise), or `None` with
        why it gives no usable signal: `"no_signal"` (none) or `"non_finite_teacher"` (NaN / inf: that teacher is
        undefined at this node only).
        """
        signal = self.teacher_logits[name]
        if signal is None:
            return None, "no_signal"
        if isinstance(signal, TrainerDirection):
            direction = _vocabulary_vector(name, signal.direction, vocab)
            logits = None if signal.teacher_logits is None else _vocabulary_vector(name, signal.teacher_logits, vocab)
            if not bool(torch.isfinite(direction).all()) or (
                logits is not None and not bool(torch.isfinite(logits).all())
            ):
                return None, "non_finite_teacher"
            return TrainerDirection(direction, logits), ""
        logits = _vocabulary_vector(name, signal, vocab)
        if not bool(torch.isfinite(logits).all()):
            return None, "non_finite_teacher"
        return logits, ""


def _vocabulary_vector(name: str, vector: torch.Tensor, vocab: int) -> torch.Tensor:
    vector = vector.reshape(-1).float().cpu()
    if vector.numel() != vocab:
        raise ValueError(
            f"Teacher {name!r} has {vector.numel()} logits, the student {vocab}: teachers must share the "
            "student's vocabulary (same tokenizer)."
        )
    return vector
