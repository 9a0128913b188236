"""What a diagnostic pass returns: plain dataclasses, one per node and one per rollout."""

from dataclasses import dataclass, field

import torch

from ..method.success import SuccessEstimate


@dataclass
class TeacherAlignment:
    """
    Alignment of one teacher with the ideal at one node. NaN means undefined (see `NodeDiagnosis.undefined`).

    `param_cos` / `logit_cos` are the plain cosines of the estimated ideal (attenuated toward 0 by rollout noise: read
    them through pooled alignment, see [`pooled_alignment`]); `param_ci` / `logit_ci` their profile-likelihood
    intervals (calibrated); `param_proj` / `logit_proj` the unbiased numerator terms `<g_ideal_hat, g_T / ||g_T||>`
    of pooled alignment; `distance` the teacher-student total-variation distance under the loss.
    """

    param_cos: float
    param_ci: tuple[float, float]
    logit_cos: float
    logit_ci: tuple[float, float]
    restricted_cos: float
    outside_share: float
    advantage: float
    direction_norm: float
    param_proj: float = float("nan")
    logit_proj: float = float("nan")
    distance: float = float("nan")


@dataclass
class NodeDiagnosis:
    """
    Everything measured at one node; `undefined` maps a teacher to why its cosine is undefined, if it is.

    `gram` is the node's parameter-space Gram matrix of `[J^T e_k for k in candidates] + [J^T b_T per teacher]` (the
    teachers in `directions` order): with `success` it determines every parameter-space number of the node for any
    value of the success rates. `ideal_norm2` holds the unbiased `||g_ideal||^2` per space (`"param"`, `"logit"`),
    the denominator terms of pooled alignment. `rollouts_spent` counts the targeted continuations decoded here;
    `region_flat` says whether the likelihood region of the success rates holds a flat ideal (all candidates equally
    good), i.e. whether the data leave every direction of the ideal possible.
    """

    sequence: int
    prefix_len: int
    sampled_token: int | None
    candidates: torch.Tensor
    success: SuccessEstimate
    value: float
    student_probs: torch.Tensor
    ideal: torch.Tensor
    directions: dict[str, torch.Tensor]
    teachers: dict[str, TeacherAlignment] = field(default_factory=dict)
    undefined: dict[str, str] = field(default_factory=dict)
    gram: torch.Tensor | None = None
    ideal_norm2: dict[str, float] = field(default_factory=dict)
    rollouts_spent: int = 0
    region_flat: bool = False


@dataclass
class RolloutAlignment:
    """Rollout-level cosine `cos(sum_u g_ideal(u), sum_u g_T(u))` over the diagnosed nodes of one rollout."""

    sequence: int
    num_nodes: int
    param_cos: dict[str, float]


@dataclass
class Diagnosis:
    nodes: list[NodeDiagnosis]
    rollouts: list[RolloutAlignment]
