"""Cheap statistics of a node: what a user could compute from the two next-token distributions, without rollouts.

Teacher-student KL both ways, Jensen-Shannon divergence, total variation, the cosine of the two probability vectors,
and the two entropies, all at the sampling temperature (the distributions the two models act with), in float64. The
method reports them as weak predictors of alignment; the callback logs, at every pause, their rank correlation with
the node cosines per teacher, with an interval, so that users see how weak on their own run.
"""

import math

import torch

from .alignment import total_variation


#: The statistics recorded at every (node, teacher), in records and metrics order.
NODE_PROXIES = (
    "kl_student_teacher",
    "kl_teacher_student",
    "js_divergence",
    "total_variation",
    "prob_cosine",
    "student_entropy",
    "teacher_entropy",
)
#: What the per-pause rank correlations are taken of: the node statistics, and where the node sits in its rollout.
PROXIES = (*NODE_PROXIES, "rel_position")


def _entropy(log_p: torch.Tensor) -> float:
    p = log_p.exp()
    return float(-torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum()) + 0.0  # masked (-inf) tokens add 0


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> float:
    """KL(p || q); terms where p is 0 contribute 0 (and q = 0 where p > 0 gives inf)."""
    p = log_p.exp()
    return float(torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum())


def cheap_statistics(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, temperature: float, *, student_log_probs=None
) -> dict:
    """
    The [`NODE_PROXIES`] of one node and teacher; only `student_entropy` when the teacher has no distribution over the
    student's vocabulary (`teacher_logits=None`: a teacher with another tokenizer), NaN for the rest.
    `student_log_probs`: the student's float64 log-probabilities at `temperature`, when the caller has them already
    (one log-softmax per node, not per teacher, at a 150k vocabulary).
    """
    log_p = student_log_probs
    if log_p is None:
        log_p = torch.log_softmax(student_logits.reshape(-1).double() / temperature, dim=-1)
    out = dict.fromkeys(NODE_PROXIES, math.nan)
    out["student_entropy"] = _entropy(log_p)
    if teacher_logits is None:
        return out
    log_q = torch.log_softmax(teacher_logits.reshape(-1).double() / temperature, dim=-1)
    p, q = log_p.exp(), log_q.exp()
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)  # no underflow to log(0) where p and q are both tiny
    out.update(
        kl_student_teacher=_kl(log_p, log_q),
        kl_teacher_student=_kl(log_q, log_p),
        js_divergence=0.5 * _kl(log_p, log_m) + 0.5 * _kl(log_q, log_m),
        total_variation=total_variation(log_p, log_q),
        prob_cosine=float(p @ q / (p.norm() * q.norm())),
        teacher_entropy=_entropy(log_q),
    )
    return out
