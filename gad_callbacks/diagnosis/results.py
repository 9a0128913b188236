"""What a diagnostic pass returns: plain dataclasses, one per node and one per rollout."""

from dataclasses import dataclass, field

import torch

from ..method.success import SuccessEstimate


@dataclass
class TeacherAlignment:
    """Alignment of one teacher with the ideal at one node. NaN means undefined (see `NodeDiagnosis.undefined`)."""

    param_cos: float
    param_ci: tuple[float, float]
    logit_cos: float
    logit_ci: tuple[float, float]
    restricted_cos: float
    outside_share: float
    advantage: float
    direction_norm: float


@dataclass
class NodeDiagnosis:
    """Everything measured at one node; `undefined` maps a teacher to why its cosine is undefined, if it is."""

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
