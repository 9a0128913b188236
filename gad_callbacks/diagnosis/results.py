"""What a diagnostic pass returns: plain dataclasses, one per node and one per rollout, and their record rows."""

import math
from dataclasses import asdict, dataclass, field

import torch

from ..method.success import SuccessEstimate


@dataclass
class TeacherAlignment:
    """
    Alignment of one teacher with the ideal at one node. NaN means undefined (see `NodeDiagnosis.undefined`).

    `param_cos` / `logit_cos` are the plain cosines of the estimated ideal (attenuated toward 0 by rollout noise: read
    them through pooled alignment, see [`pooled_alignment`]); `param_ci` / `logit_ci` their profile-likelihood
    intervals (calibrated); `param_proj` / `logit_proj` the unbiased numerator terms `<g_ideal_hat, g_T / ||g_T||>`
    of pooled alignment; `distance` the teacher-student total-variation distance under the loss; `proxies` the cheap
    statistics of the two distributions at the sampling temperature ([`cheap_statistics`], NaN where undefined).
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
    proxies: dict = field(default_factory=dict)


@dataclass
class NodeDiagnosis:
    """
    Everything measured at one node; `undefined` maps a teacher to why its cosine is undefined, if it is.

    `gram` is the node's parameter-space Gram matrix of `[J^T e_k for k in candidates] + [J^T b_T per teacher]` (the
    teachers in `directions` order): with `success` it determines every parameter-space number of the node for any
    value of the success rates. `ideal_norm2` holds the unbiased `||g_ideal||^2` per space (`"param"`, `"logit"`),
    the denominator terms of pooled alignment. `rollouts_spent` counts the targeted continuations decoded here;
    `region_flat` says whether the likelihood region of the success rates holds a flat ideal (all candidates equally
    good), i.e. whether the data leave every direction of the ideal possible. `pool_weight` is the node's weight in
    pooled sums (`1 / screen_keep` when it was finished after a flat screen, see `DiagnosisConfig.screen_rollouts`);
    `screened_out` says it was stopped after its screening rollouts (flat; no parameter-space Gram of its candidates).
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
    pool_weight: float = 1.0
    screened_out: bool = False


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


def undefined_alignment() -> TeacherAlignment:
    """A teacher that was not measured at a node: every number NaN, no direction."""
    nan = float("nan")
    return TeacherAlignment(nan, (nan, nan), nan, (nan, nan), nan, nan, nan, 0.0)


def unmeasured_node(node, sampled_token, vocab, names, reason) -> NodeDiagnosis:
    """
    A [`Node`] where nothing could be measured (e.g. the student's logits are non-finite there): kept, with every
    teacher undefined for `reason` and NaN numbers, so that it is counted rather than silently missing.
    """
    empty = torch.zeros(0, dtype=torch.long)
    success = node.success or SuccessEstimate(empty, torch.zeros(0, 0, dtype=torch.float64), empty)
    nan = float("nan")
    return NodeDiagnosis(
        sequence=node.sequence,
        prefix_len=node.prefix_len,
        sampled_token=sampled_token,
        candidates=success.candidates,
        success=success,
        value=nan,
        student_probs=torch.full((success.candidates.numel(),), nan),
        ideal=torch.full((vocab,), nan),
        directions={n: torch.zeros(vocab) for n in names},
        teachers={n: undefined_alignment() for n in names},
        undefined=dict.fromkeys(names, reason),
        ideal_norm2={"param": nan, "logit": nan},
    )


def embed_gram(sub: torch.Tensor, k: int, teachers: list[int], num_teachers: int) -> torch.Tensor:
    """
    The node Gram over the `k` candidates and all `num_teachers` teachers, from `sub`, the Gram over the candidates
    and the teachers `teachers` only. The other teachers' vectors are zero, so their products are exactly 0;
    computing without them keeps everyone else's products independent of them, to the last bit.
    """
    keep = torch.tensor(list(range(k)) + [k + t for t in teachers], dtype=torch.long)
    gram = torch.zeros(k + num_teachers, k + num_teachers, dtype=sub.dtype)
    gram[keep[:, None], keep[None, :]] = sub
    return gram


def add_absent_teachers(diagnosis: Diagnosis, names: list[str], reasons: list[dict[str, str]]) -> None:
    """
    Put back, in place and in `names` order, teachers that were left out of the computation (no usable logits at any
    node): undefined at node `i` for `reasons[i][teacher]`, zero directions (zero rows of the Gram matrices, exactly
    what `J^T 0` would have given), NaN numbers.
    """
    absent = set(reasons[0]) if reasons else set()
    if not absent:
        return
    for node, why in zip(diagnosis.nodes, reasons, strict=True):
        vocab = node.ideal.numel()
        node.teachers = {n: node.teachers.get(n) or undefined_alignment() for n in names}
        node.directions = {n: node.directions.get(n, torch.zeros(vocab)) for n in names}
        undefined = {n: why[n] for n in absent} | node.undefined
        node.undefined = {n: undefined[n] for n in names if n in undefined}
        if node.gram is not None:
            present = [t for t, n in enumerate(names) if n not in absent]
            node.gram = embed_gram(node.gram, node.candidates.numel(), present, len(names))
    for rollout in diagnosis.rollouts:
        rollout.param_cos = {n: rollout.param_cos.get(n, float("nan")) for n in names}


@dataclass(kw_only=True)
class NodeRecord:
    """
    One row of the records: one (node, teacher) pair, flat, with everything needed to recompute every logged
    aggregate with its uncertainty. This dataclass is the one definition of the row: the parquet schema is derived
    from it (`outputs/records.py`), readers fill fields missing from older files with its defaults, and every aggregate
    reads rows through its field names.

    Where the node sits: `step` (training step or pass index), `rollout_id` (unique within a step), `question_id`
    (the dataset row, shared by every rollout of one question; `None` when unknown), `reward` / `correct` (the
    rollout's verdict), `position` (index in the completion), `completion_length`, `rel_position`
    (`position / (completion_length - 1)`), `token` / `token_text` (the sampled token there).

    Per teacher: `param_cos` / `logit_cos` (node cosine with the estimated ideal, NaN when undefined; attenuated toward
    0 by rollout noise), their profile-likelihood intervals `*_ci_low` / `*_ci_high` (NaN when disabled),
    `restricted_cos`, `outside_share`, `advantage`, `undefined` (why the teacher is undefined here, `""` if it is not:
    from the teacher, `no_signal` (its loss skips this position), `non_finite_teacher` (NaN / inf logits),
    `teacher_matches_student`; from the node, for every teacher, `non_finite_student` (NaN / inf student logits:
    nothing measured, no candidates), `unscorable_continuations` (a candidate without any scored continuation),
    `flat_success`), `rollout_param_cos` (rollout-level cosine of the node's rollout), `param_proj` / `logit_proj`
    (unbiased numerator terms of pooled alignment; NaN where the teacher is undefined, 0 at a flat-success node),
    `distance` (teacher-student total variation under the loss); the cheap statistics a user could compute without
    rollouts, at the sampling temperature: `kl_student_teacher`, `kl_teacher_student`, `js_divergence`,
    `total_variation`, `prob_cosine`, `student_entropy`, `teacher_entropy` (NaN where the teacher has no distribution
    over the student's tokens, and in records written without them).

    Per node (the same in every teacher's row): `value` (V(node)), `candidates` / `success` / `success_low` /
    `success_high` / `success_counts` (per candidate: token id, success estimate, its interval, continuations scored),
    `targeted_per_candidate` (the most continuations any candidate got), `rollouts_spent` (targeted continuations
    decoded here, unscorable ones included: those are not in `success_counts`), `truncated` (continuations that hit the
    length budget), `ideal_norm2_param` / `ideal_norm2_logit` (unbiased `||g_ideal||^2`, the denominator terms of
    pooled alignment; may be negative at one node), `region_flat` (whether the success rates' likelihood region holds a
    flat ideal), `pool_weight` (the node's weight in pooled alignment and in means: `1 / screen_keep` for a node
    finished after its screening rollouts all ended the same way, 1 otherwise, see `DiagnosisConfig.screen_rollouts`;
    1 in records written before it existed, which had no screening), `screened_out` (the node stopped after
    screening: flat, no parameter-space interval).
    """

    step: int
    rollout_id: str
    question_id: int | None = None
    reward: float = math.nan
    correct: bool = False
    position: int
    completion_length: int = 0
    rel_position: float = math.nan
    token_text: str = ""
    teacher: str
    param_cos: float = math.nan
    param_ci_low: float = math.nan
    param_ci_high: float = math.nan
    logit_cos: float = math.nan
    logit_ci_low: float = math.nan
    logit_ci_high: float = math.nan
    restricted_cos: float = math.nan
    outside_share: float = math.nan
    advantage: float = math.nan
    undefined: str = ""
    value: float = math.nan
    token: int | None = None
    candidates: list[int] = field(default_factory=list)
    success: list[float] = field(default_factory=list)
    success_low: list[float] = field(default_factory=list)
    success_high: list[float] = field(default_factory=list)
    success_counts: list[int] = field(default_factory=list)
    targeted_per_candidate: int = 0
    rollouts_spent: int = 0
    truncated: int = 0
    rollout_param_cos: float = math.nan
    param_proj: float = math.nan
    logit_proj: float = math.nan
    ideal_norm2_param: float = math.nan
    ideal_norm2_logit: float = math.nan
    distance: float = math.nan
    kl_student_teacher: float = math.nan
    kl_teacher_student: float = math.nan
    js_divergence: float = math.nan
    total_variation: float = math.nan
    prob_cosine: float = math.nan
    student_entropy: float = math.nan
    teacher_entropy: float = math.nan
    region_flat: bool = False
    pool_weight: float = 1.0
    screened_out: bool = False

    @property
    def node(self) -> tuple:
        """The node's identity, shared by every teacher's row at it."""
        return (self.step, self.rollout_id, self.position)


def node_records(diagnosis: Diagnosis, node_meta: list[dict], step: int) -> list[dict]:
    """
    One row per (node, teacher), a [`NodeRecord`] as a dict; `node_meta[i]` (where node `i` sits: `NodeRecord`
    field names) is copied into each of its rows.
    """
    rollout_cos = {r.sequence: r.param_cos for r in diagnosis.rollouts}
    rows = []
    for node, meta in zip(diagnosis.nodes, node_meta, strict=True):
        for teacher, a in node.teachers.items():
            record = NodeRecord(
                step=step,
                **meta,
                teacher=teacher,
                param_cos=a.param_cos,
                param_ci_low=a.param_ci[0],
                param_ci_high=a.param_ci[1],
                logit_cos=a.logit_cos,
                logit_ci_low=a.logit_ci[0],
                logit_ci_high=a.logit_ci[1],
                restricted_cos=a.restricted_cos,
                outside_share=a.outside_share,
                advantage=a.advantage,
                undefined=node.undefined.get(teacher, ""),
                value=node.value,
                token=node.sampled_token,
                candidates=node.candidates.tolist(),
                success=node.success.mean.tolist(),
                success_low=node.success.lower.tolist(),
                success_high=node.success.upper.tolist(),
                success_counts=node.success.count.tolist(),
                targeted_per_candidate=int(node.success.count.max()) if node.candidates.numel() else 0,
                rollouts_spent=node.rollouts_spent,
                truncated=int(node.success.truncated.sum()),
                rollout_param_cos=rollout_cos.get(node.sequence, {}).get(teacher, math.nan),
                param_proj=a.param_proj,
                logit_proj=a.logit_proj,
                ideal_norm2_param=node.ideal_norm2.get("param", math.nan),
                ideal_norm2_logit=node.ideal_norm2.get("logit", math.nan),
                distance=a.distance,
                **a.proxies,
                region_flat=node.region_flat,
                pool_weight=node.pool_weight,
                screened_out=node.screened_out,
            )
            rows.append(asdict(record))
    return rows
