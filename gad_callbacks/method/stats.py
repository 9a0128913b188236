"""Aggregates over nodes: means and pooled alignment with cluster-bootstrap intervals and counts.

Every aggregate reports how many values were defined, how many were undefined (NaN), and how many independent
clusters its interval rests on. Nodes of one rollout (and rollouts of one question) are correlated, so intervals
resample whole clusters; an interval resting on a single cluster is undefined (NaN), never the point `[x, x]`.
"""

import math
from dataclasses import dataclass

import torch


@dataclass
class Summary:
    """
    An aggregate with its interval and counts.

    Args:
        mean (`float`):
            The estimate (a mean of defined values, or a pooled alignment).
        lower (`float`):
            Lower end of the interval; NaN when it cannot be estimated (fewer than two clusters).
        upper (`float`):
            Upper end of the interval; NaN likewise.
        n (`int`):
            Defined values (nodes) the estimate uses.
        n_undefined (`int`):
            Undefined values (NaN) left out, counted.
        clusters (`int`, *optional*):
            Independent units (rollouts or questions) the interval resamples; `n` when values are independent.
        confidence (`float`, *optional*, defaults to `0.95`):
            Level of the interval.
    """

    mean: float
    lower: float
    upper: float
    n: int
    n_undefined: int
    clusters: int | None = None
    confidence: float = 0.95

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.lower) or math.isnan(self.upper))

    def __str__(self) -> str:
        if self.n == 0 or math.isnan(self.mean):
            return f"undefined (n={self.n}, undefined={self.n_undefined})"
        clusters = "" if self.clusters is None else f", clusters={self.clusters}"
        if not self.has_interval:
            return f"{self.mean:+.3f} [no interval{clusters}] (n={self.n}, undefined={self.n_undefined})"
        level = f"{self.confidence:.0%} "
        return (
            f"{self.mean:+.3f} {level}[{self.lower:+.3f}, {self.upper:+.3f}] "
            f"(n={self.n}, undefined={self.n_undefined}{clusters})"
        )


def percentile_interval(replicates: torch.Tensor, confidence: float = 0.95, bounds=(-math.inf, math.inf)):
    """
    Percentile interval of bootstrap replicates along dim 0. Undefined (NaN) replicates are not dropped: each counts
    at the far end of both tails (`bounds`), so a statistic that is often undefined gets a wide interval, and an
    endpoint that lands on an infinite bound is NaN (no interval) rather than a number.
    """
    lo_q, hi_q = (1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0
    reps = replicates.to(torch.float64)
    undefined = torch.isnan(reps)
    lo = torch.quantile(torch.where(undefined, torch.full_like(reps, bounds[0]), reps), lo_q, dim=0)
    hi = torch.quantile(torch.where(undefined, torch.full_like(reps, bounds[1]), reps), hi_q, dim=0)
    lo = torch.where(torch.isinf(lo), torch.full_like(lo, float("nan")), lo)
    hi = torch.where(torch.isinf(hi), torch.full_like(hi, float("nan")), hi)
    return lo, hi


def _cluster_ids(clusters, keep: torch.Tensor) -> torch.Tensor:
    """Dense integer ids of the kept values' clusters (each value its own cluster when `clusters` is None)."""
    if clusters is None:
        return torch.arange(int(keep.sum()))
    labels = [c for c, k in zip(clusters, keep.tolist(), strict=True) if k]
    index: dict = {}
    return torch.tensor([index.setdefault(c, len(index)) for c in labels], dtype=torch.long)


def _resample_counts(n_clusters: int, num_bootstrap: int, generator: torch.Generator | None) -> torch.Tensor:
    """`[num_bootstrap, n_clusters]`: how often each cluster is drawn in each replicate (draws with replacement)."""
    if generator is None:  # never the global RNG: a training run's streams must not move, and results repeat
        generator = torch.Generator().manual_seed(0)
    pick = torch.randint(0, n_clusters, (num_bootstrap, n_clusters), generator=generator)
    counts = torch.zeros(num_bootstrap, n_clusters, dtype=torch.float64)
    return counts.scatter_add_(1, pick, torch.ones_like(pick, dtype=torch.float64))


def _cluster_bootstrap(columns, ids, statistic, num_bootstrap, generator):
    """
    Replicates of `statistic(*column_sums, weights)` with whole clusters resampled: each column is summed per
    cluster once, then every replicate is a weighted sum over clusters (weights = how often each was drawn).
    """
    n_clusters = int(ids.max()) + 1
    sums = [torch.zeros(n_clusters, dtype=torch.float64).index_add_(0, ids, c) for c in columns]
    weights = _resample_counts(n_clusters, num_bootstrap, generator)
    return statistic(*[weights @ s for s in sums])


def _clustered(columns, defined, clusters, statistic, confidence, num_bootstrap, generator) -> Summary:
    """
    `statistic` of the per-value `columns` summed over the defined values, with a cluster-bootstrap percentile
    interval (the statistic recomputed from resampled clusters); NaN interval below two clusters.
    """
    n, n_undefined = int(defined.sum()), int((~defined).sum())
    nan = float("nan")
    if n == 0:
        return Summary(nan, nan, nan, 0, n_undefined, 0, confidence)
    columns = [c[defined] for c in columns]
    ids = _cluster_ids(clusters, defined)
    n_clusters = int(ids.max()) + 1
    point = float(statistic(*[c.sum() for c in columns]))
    if n_clusters < 2:
        return Summary(point, nan, nan, n, n_undefined, n_clusters, confidence)
    reps = _cluster_bootstrap(columns, ids, statistic, num_bootstrap, generator)
    lo, hi = percentile_interval(reps, confidence)
    return Summary(point, float(lo), float(hi), n, n_undefined, n_clusters, confidence)


def summarize(
    values,
    *,
    confidence: float = 0.95,
    num_bootstrap: int = 1000,
    generator: torch.Generator | None = None,
    clusters=None,
    weights=None,
) -> Summary:
    """
    Mean over the defined (non-NaN) `values` with a percentile bootstrap interval; a weighted mean when `weights` are
    given (a node finished after a flat screen stands for `1 / screen_keep` nodes like it).

    Args:
        values (`torch.Tensor` or sequence of `float`):
            Per-node values; NaN marks an undefined node.
        confidence (`float`, *optional*, defaults to `0.95`):
            Interval level.
        num_bootstrap (`int`, *optional*, defaults to `1000`):
            Bootstrap replicates.
        generator (`torch.Generator`, *optional*):
            Source of randomness.
        clusters (sequence, *optional*):
            A cluster label per value (the rollout id, or the question id when questions have several rollouts).
            Nodes of one rollout are not independent, so when given the bootstrap resamples whole clusters. With
            fewer than two clusters the interval is undefined.
        weights (sequence of `float`, *optional*):
            A weight per value (the records' `pool_weight`); equal weights when omitted.
    """
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    w = _weights(weights, values)
    x = torch.nan_to_num(values)
    return _clustered(
        [x * w, w],
        ~torch.isnan(values),
        clusters,
        lambda s, c: s / c,
        confidence,
        num_bootstrap,
        generator,
    )


def _weights(weights, values: torch.Tensor) -> torch.Tensor:
    if weights is None:
        return torch.ones_like(values)
    w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    if w.shape != values.shape or bool((~torch.isfinite(w) | (w < 0)).any()):
        raise ValueError(f"weights must be {values.numel()} finite non-negative numbers, one per value.")
    return w


def paired_difference(x, y, **kwargs) -> Summary:
    """
    `x - y` over the nodes where both are defined (teachers compared on the same nodes and the same ideal estimate);
    nodes where either is undefined count as undefined. Keyword arguments go to [`summarize`] (pass `clusters` so
    the interval resamples rollouts or questions, not nodes).
    """
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"Paired values must have the same length, got {x.numel()} and {y.numel()}.")
    return summarize(x - y, **kwargs)


def _pooled(proj, norm2, count, scale):
    # rho = sum <g_ideal, g_T/|g_T|> / sqrt(N sum |g_ideal|^2). The unbiased |g_ideal|^2 terms can sum to <= 0 (or to
    # a sliver of the size of the terms themselves) when the ideal is indistinguishable from zero over the pool: the
    # ratio is then undefined, not clipped and not a ratio of rounding errors. `scale` is the sum of |terms|.
    den = count * norm2
    ok = norm2 > 1e-9 * scale
    return torch.where(ok, proj / den.clamp_min(1e-300).sqrt(), torch.full_like(proj, float("nan")))


def pooled_ratio(
    projections,
    ideal_norms2,
    *,
    clusters=None,
    confidence: float = 0.95,
    num_bootstrap: int = 1000,
    generator: torch.Generator | None = None,
    weights=None,
) -> Summary:
    """
    Pooled alignment `sum_i w_i proj_i / sqrt(N sum_i w_i norm2_i)` from per-node terms (see [`pooled_alignment`]),
    with a cluster-bootstrap interval that recomputes the ratio in every replicate. `N` counts nodes, unweighted.

    Args:
        projections (sequence of `float`):
            Per node `<g_ideal_hat(i), g_T(i) / ||g_T(i)||>` (unbiased); NaN where the teacher is undefined.
        ideal_norms2 (sequence of `float`):
            Per node an unbiased estimate of `||g_ideal(i)||^2` (it can be negative at a single node).
        clusters (sequence, *optional*):
            Cluster label per node (rollout or question).
        confidence (`float`, *optional*, defaults to `0.95`):
            Interval level.
        num_bootstrap (`int`, *optional*, defaults to `1000`):
            Bootstrap replicates.
        generator (`torch.Generator`, *optional*):
            Source of randomness.
        weights (sequence of `float`, *optional*):
            Per node, the weight of its terms (the records' `pool_weight`: `1 / screen_keep` for a node finished after
            a flat screen, which keeps the sums unbiased); 1 when omitted.
    """
    proj = torch.as_tensor(projections, dtype=torch.float64).reshape(-1)
    norm2 = torch.as_tensor(ideal_norms2, dtype=torch.float64).reshape(-1)
    if proj.shape != norm2.shape:
        raise ValueError(f"Got {proj.numel()} projections but {norm2.numel()} ideal norms.")
    w = _weights(weights, proj)
    defined = ~(torch.isnan(proj) | torch.isnan(norm2))
    proj, norm2 = torch.nan_to_num(proj) * w, torch.nan_to_num(norm2) * w
    columns = [proj, norm2, torch.ones_like(proj), norm2.abs()]
    return _clustered(columns, defined, clusters, _pooled, confidence, num_bootstrap, generator)


def joint_pooled(
    projections,
    ideal_norms2,
    *,
    clusters=None,
    weights=None,
    num_bootstrap: int = 1000,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Pooled alignments of several teachers on the same nodes, and their bootstrap replicates drawn *jointly*: every
    replicate resamples the same clusters for all teachers, so differences and rankings keep the pairing (two teachers
    scored on the same nodes share that sample's luck; independent intervals would overstate their difference's
    noise).

    Args:
        projections (`[T, N]` array):
            Per teacher and node, the projection term of [`pooled_ratio`]; NaN where that teacher is undefined (each
            teacher pools its own defined nodes).
        ideal_norms2 (`[N]` array):
            Per node, the unbiased squared norm of the ideal.
        clusters, weights, num_bootstrap, generator: as for [`pooled_ratio`].

    Returns:
        `(points, replicates)`: `points[t]` the pooled alignment of teacher `t` (as [`pooled_ratio`] gives it), and
        `replicates[b, t]` its value in replicate `b` (`[num_bootstrap, T]`; empty `[0, T]` below two clusters). NaN
        where the pool is undefined.
    """
    proj = torch.as_tensor(projections, dtype=torch.float64)
    proj = proj.reshape(1, -1) if proj.dim() == 1 else proj
    norm2 = torch.as_tensor(ideal_norms2, dtype=torch.float64).reshape(-1)
    if proj.shape[1] != norm2.numel():
        raise ValueError(f"Got {proj.shape[1]} projections per teacher but {norm2.numel()} ideal norms.")
    w = _weights(weights, norm2)
    defined = ~(torch.isnan(proj) | torch.isnan(norm2)[None])  # [T, N]
    keep = defined.any(0)
    n_teachers = proj.shape[0]
    nan = torch.full((n_teachers,), float("nan"), dtype=torch.float64)
    if not bool(keep.any()):
        return nan, torch.empty(0, n_teachers, dtype=torch.float64)
    d = defined[:, keep].to(torch.float64)
    wn = torch.nan_to_num(norm2[keep]) * w[keep]
    # Per teacher the four columns of `_pooled`, zero on its undefined nodes.
    columns = [torch.nan_to_num(proj[:, keep]) * w[keep] * d, wn * d, d, wn.abs() * d]
    points = _pooled(*[c.sum(1) for c in columns])
    ids = _cluster_ids(clusters, keep)
    n_clusters = int(ids.max()) + 1
    if n_clusters < 2:
        return points, torch.empty(0, n_teachers, dtype=torch.float64)
    drawn = _resample_counts(n_clusters, num_bootstrap, generator)
    sums = [torch.zeros(n_teachers, n_clusters, dtype=torch.float64).index_add_(1, ids, c) for c in columns]
    return points, _pooled(*[drawn @ s.T for s in sums])


def best_probabilities(replicates: torch.Tensor) -> torch.Tensor:
    """
    Per teacher, the share of joint bootstrap replicates ([`joint_pooled`]) in which its pooled alignment is the
    highest: the bootstrap's stand-in for the posterior probability of being best. Ties share the replicate (two
    identical teachers get half each, not all to the first listed); a teacher undefined in a replicate is not best
    there; replicates where every teacher is undefined are left out (all NaN when none is left).
    """
    reps = torch.as_tensor(replicates, dtype=torch.float64)
    usable = ~torch.isnan(reps).all(1)
    if not bool(usable.any()):
        return torch.full((reps.shape[1],), float("nan"), dtype=torch.float64)
    reps = torch.nan_to_num(reps[usable], nan=-math.inf)
    best = (reps == reps.max(1, keepdim=True).values).to(torch.float64)
    return (best / best.sum(1, keepdim=True)).mean(0)


def _midranks(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based, ties share their mean rank) of `values` `[n]` in each weighted sample `weights` `[B, n]`,
    a value of weight k standing for k tied copies: the ranks of the expanded sample, without expanding it."""
    order = torch.argsort(values)
    v, w = values[order], weights[:, order]
    starts = torch.ones_like(v, dtype=torch.bool)
    starts[1:] = v[1:] != v[:-1]
    group = torch.cumsum(starts.long(), 0) - 1
    group_weight = torch.zeros(w.shape[0], int(group[-1]) + 1, dtype=w.dtype).index_add_(1, group, w)
    rank = (torch.cumsum(group_weight, 1) - group_weight + (group_weight + 1) / 2)[:, group]
    out = torch.empty_like(rank)
    out[:, order] = rank
    return out


def _weighted_spearman(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Spearman's rho of each weighted sample (Pearson's r of the midranks, weighted); NaN where a rank is constant."""
    rx, ry = _midranks(x, weights), _midranks(y, weights)
    total = weights.sum(1, keepdim=True)
    dx = rx - (weights * rx).sum(1, keepdim=True) / total
    dy = ry - (weights * ry).sum(1, keepdim=True) / total
    cov = (weights * dx * dy).sum(1)
    var = (weights * dx * dx).sum(1) * (weights * dy * dy).sum(1)
    return torch.where(var > 0, cov / var.clamp_min(1e-300).sqrt(), torch.full_like(cov, float("nan")))


def rank_correlation(
    x,
    y,
    *,
    clusters=None,
    weights=None,
    confidence: float = 0.95,
    num_bootstrap: int = 1000,
    generator: torch.Generator | None = None,
) -> Summary:
    """
    Spearman rank correlation of the pairs where both `x` and `y` are defined (not NaN), with a cluster-bootstrap
    percentile interval (whole clusters resampled, as for every aggregate; undefined below two clusters). `weights`:
    a weight per pair (the records' `pool_weight`: a node finished after a flat screen stands for several), as
    repeated copies of it would weigh.
    """
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    w = _weights(weights, x)
    defined = ~(torch.isnan(x) | torch.isnan(y))
    n, nan = int(defined.sum()), float("nan")
    if n == 0:
        return Summary(nan, nan, nan, 0, int((~defined).sum()), 0, confidence)
    x, y, w = x[defined], y[defined], w[defined]
    point = float(_weighted_spearman(x, y, w[None])[0])
    ids = _cluster_ids(clusters, defined)
    n_clusters = int(ids.max()) + 1
    if n_clusters < 2 or math.isnan(point):
        return Summary(point, nan, nan, n, int((~defined).sum()), n_clusters, confidence)
    drawn = _resample_counts(n_clusters, num_bootstrap, generator)
    lo, hi = percentile_interval(_weighted_spearman(x, y, drawn[:, ids] * w), confidence, bounds=(-1.0, 1.0))
    return Summary(point, float(lo), float(hi), n, int((~defined).sum()), n_clusters, confidence)
