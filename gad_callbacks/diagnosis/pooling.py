"""Pooled alignment of a teacher over many diagnosed nodes: the noise-debiased aggregate of METHOD.md.

A single node's cosine is biased toward 0 because rollout noise inflates the ideal's estimated norm; averaging
biased cosines keeps the bias. Pooling divides summed unbiased numerators by the square root of summed unbiased
squared norms (each node carries both terms, see `method/alignment.py`), which is consistent as nodes accumulate:

    rho_T = sum_i <g_ideal(i), g_T(i) / ||g_T(i)||>  /  sqrt(N sum_i ||g_ideal(i)||^2)

Nodes weigh by how much success is at stake there (the norm of their ideal gradient); with equal norms it is the
plain mean cosine. Nodes where the ideal is flat count (their numerator is 0, their norm term is kept): dropping
them would bias the pool upward. Nodes where the teacher is undefined (no signal, equal to the student) are left out
and counted. A node finished after a flat screen carries `pool_weight = 1 / screen_keep` (Russian roulette, see
`DiagnosisConfig.screen_rollouts`), which keeps both sums unbiased.
"""

import torch

from ..method.stats import Summary, pooled_ratio
from .results import NodeDiagnosis


SPACES = ("param", "logit")


def pooled_alignment(
    nodes: list[NodeDiagnosis],
    teacher: str,
    *,
    space: str = "param",
    clusters=None,
    confidence: float = 0.95,
    generator: torch.Generator | None = None,
    num_bootstrap: int = 1000,
) -> Summary:
    """
    Noise-debiased alignment of `teacher` over `nodes`, with a bootstrap interval over clusters.

    Args:
        nodes (`list[NodeDiagnosis]`):
            Diagnosed nodes (from [`diagnose_nodes`] / [`diagnose_node`]); each carries its pooling terms.
        teacher (`str`):
            The teacher's name.
        space (`str`, *optional*, defaults to `"param"`):
            `"param"` (parameter space, the headline) or `"logit"`.
        clusters (sequence, *optional*):
            A label per node for the bootstrap: the rollout (e.g. `[n.sequence for n in nodes]` within one call) or
            the question. Nodes are treated as independent when omitted.
        confidence (`float`, *optional*, defaults to `0.95`):
            Interval level.
        generator (`torch.Generator`, *optional*):
            Randomness of the bootstrap.
        num_bootstrap (`int`, *optional*, defaults to `1000`):
            Bootstrap replicates.

    Returns:
        [`Summary`]: `mean` is the pooled alignment; `n` the nodes pooled; `n_undefined` those where the teacher is
        undefined; the interval is NaN when fewer than two clusters, or when the pooled ideal is indistinguishable
        from zero in too many replicates.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}.")
    missing = [i for i, n in enumerate(nodes) if teacher not in n.teachers]
    if missing:
        raise ValueError(f"Teacher {teacher!r} was not diagnosed at node(s) {missing[:5]}.")
    proj = [getattr(n.teachers[teacher], f"{space}_proj") for n in nodes]
    norm2 = [n.ideal_norm2.get(space, float("nan")) for n in nodes]
    return pooled_ratio(
        proj,
        norm2,
        clusters=clusters,
        confidence=confidence,
        num_bootstrap=num_bootstrap,
        generator=generator,
        weights=[n.pool_weight for n in nodes],
    )
