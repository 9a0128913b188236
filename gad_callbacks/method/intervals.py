"""Per-node intervals on the alignment cosine: profile likelihood over the candidates' success rates.

Why not a bootstrap: the cosine is a ratio whose denominator is inflated by rollout noise, so its sampling
distribution is centred toward 0 (attenuation) and a percentile interval around it misses the truth far more often
than its nominal rate (METHOD.md measured 0.84 for a nominal 0.95). Why not a box of per-candidate intervals: its
range of cosines is almost always the trivial [-1, 1].

The profile-likelihood interval is the range of the cosine over the success rates `S` the data cannot reject:

    R = { S in [0, 1]^K : sum_k D_k(S_k) <= chi2_1(confidence) },   D_k = 2 n_k KL(S_hat_k || S_k)

(`D_k` is candidate `k`'s binomial deviance; for scores outside [0, 1] a normal deviance `n_k (S_k - S_hat_k)^2 /
s_k^2`). `chi2_1`, not `chi2_K`: the interval is for one scalar function of `S`, which is what makes it narrower
than a joint box while keeping its coverage (Wilks).

The range is found on the boundary of `R`: the ideal `a = A S` is linear in `S` and the cosine is constant along rays
`{t a}`, so every value the cosine takes inside `R` it also takes on the boundary; and `R` is convex (the deviance is
convex), so each ray from `S_hat` meets the boundary once, found by bisection. Random rays, then a few rounds of
local refinement around the most extreme ones, give the range. If `R` holds a flat `S` (all candidates equally
good: the ideal is zero there and the cosine undefined) this is recorded, since then no direction of the ideal is
excluded by the data.
"""

import torch

from .alignment import ideal_cosines, ideal_map, ideal_on_candidates
from .success import SuccessEstimate, normal_quantile


_EPS = 1e-12


def _deviance(mean, count, variance, binary):
    """The summed deviance of the estimate, as a function of success rates `s` `[P, K]` -> `[P]`."""
    if not binary:
        weight = count / variance
        return lambda s: ((s - mean) ** 2 * weight).sum(-1)
    m = mean.clamp(0.0, 1.0)
    # D(s) = 2 sum_k n_k [m log m + (1-m) log(1-m) - m log s - (1-m) log(1-s)], with 0 log 0 = 0: the constant is
    # taken out once, so each evaluation is two logs and two products.
    ones, zeros = count * m, count * (1 - m)
    const = 2 * (torch.xlogy(ones, m) + torch.xlogy(zeros, 1 - m)).sum()

    def deviance(s):
        s = s.clamp(_EPS, 1 - _EPS)
        return const - 2 * (torch.log(s) @ ones + torch.log1p(-s) @ zeros)

    return deviance


def _boundary(deviance, mean, binary, crit, directions, iterations=30):
    """The point where each ray `S_hat + t d` leaves the region (or the box `[0, 1]^K`), `[P, K]`."""
    if binary:
        with torch.no_grad():
            up = torch.where(directions > 0, (1 - mean) / directions, torch.full_like(directions, float("inf")))
            down = torch.where(directions < 0, -mean / directions, torch.full_like(directions, float("inf")))
            t_max = torch.minimum(up, down).amin(-1)
    else:
        t_max = torch.full(directions.shape[:1], 1e6, dtype=directions.dtype)
    t_max = t_max.clamp(max=1e6)
    lo, hi = torch.zeros_like(t_max), t_max.clone()
    inside_at_max = deviance(mean + t_max[:, None] * directions) <= crit
    for _ in range(iterations):
        mid = (lo + hi) / 2
        inside = deviance(mean + mid[:, None] * directions) <= crit
        lo, hi = torch.where(inside, mid, lo), torch.where(inside, hi, mid)
    t = torch.where(inside_at_max, t_max, lo)
    return mean + t[:, None] * directions


def _statistics(estimate: SuccessEstimate):
    mean = estimate.mean.to(torch.float64)
    count = estimate.count.to(torch.float64)
    binary = estimate.binary
    if binary:
        # Ray scales: the binomial standard error with one pseudo-success and one pseudo-failure, never zero.
        shrunk = (mean * count + 1) / (count + 2)
        scale = (shrunk * (1 - shrunk) / count).sqrt()
        variance = shrunk * (1 - shrunk)
    else:
        # A candidate whose variance is unknown (one score) or looks like 0 (identical real scores) gets the node's
        # pooled variance: treating its rate as known exactly would make the interval too narrow.
        var = estimate.variance()
        scores = estimate.scores[~torch.isnan(estimate.scores)]
        pooled = float(scores.var()) if scores.numel() > 1 else float("nan")
        if not pooled > 0:
            pooled = max(float(scores.abs().max()) ** 2 if scores.numel() else 1.0, 1e-12)
        variance = torch.where(torch.isnan(var) | (var <= 0), torch.full_like(var, pooled), var)
        scale = (variance / count).sqrt()
    return mean, count, variance, binary, scale


# Wilks' chi2_1 is the large-sample law of the likelihood-ratio statistic; at the handful of rollouts per candidate a
# node gets, it is stochastically larger (measured: a chi2_1(0.95) region covered the exact cosine 0.86-0.88 of the
# time at 8 rollouts per candidate, 0.94 at 64). A Bartlett-type correction scales the cutoff by (1 + b / n); b was
# fitted on the exact-enumeration worlds of `benchmarks/bench_calibration.py` and `tests/method/test_calibration.py`
# (coverage 0.95 at n = 8), and the correction fades as n grows, as Bartlett's does.
_BARTLETT = 3.3


def cutoff(confidence: float, count: torch.Tensor) -> float:
    """
    Deviance cutoff of the likelihood region: `chi2_1(confidence) * (1 + b / n)`, `n` the harmonic mean of the
    candidates' rollout counts (the candidates with fewest rollouts are the least Gaussian).
    """
    n = float(count.numel() / (1.0 / count.to(torch.float64).clamp_min(1.0)).sum())
    return normal_quantile(confidence) ** 2 * (1.0 + _BARTLETT / n)


def region_has_flat(estimate: SuccessEstimate, confidence: float) -> bool:
    """Whether the likelihood region holds success rates that are all equal (an ideal of zero)."""
    mean, count, variance, binary, _ = _statistics(estimate)
    crit = cutoff(confidence, count)
    # The deviance of a common rate c is minimised at the pooled (inverse-variance weighted) mean.
    weights = count if binary else count / variance
    c = (weights * mean).sum() / weights.sum()
    return bool(_deviance(mean, count, variance, binary)(c.expand(1, mean.numel())) <= crit)


def cosine_intervals(
    gram: torch.Tensor,
    p_k: torch.Tensor,
    estimate: SuccessEstimate,
    confidence: float = 0.95,
    *,
    num_points: int = 256,
    rounds: int = 4,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Profile-likelihood interval of the ideal's cosine with every teacher at one node.

    Args:
        gram (`torch.Tensor`):
            Node Gram `[K + M, K + M]` (candidates first, then teachers), parameter or logit space.
        p_k (`torch.Tensor`):
            Student probabilities of the candidates, `[K]`.
        estimate ([`SuccessEstimate`]):
            The targeted-rollout scores.
        confidence (`float`, *optional*, defaults to `0.95`):
            Interval level.
        num_points (`int`, *optional*, defaults to `256`):
            Random boundary points of the first search (each refinement round uses as many).
        rounds (`int`, *optional*, defaults to `4`):
            Local refinement rounds around the most extreme points.
        generator (`torch.Generator`, *optional*):
            Randomness of the search.

    Returns:
        `(lower, upper)`, each `[M]`; NaN for a teacher whose vector is zero.
    """
    mean, count, variance, binary, scale = _statistics(estimate)
    if bool((count == 0).any()):
        raise ValueError("Every candidate needs at least one scored continuation for an interval.")
    k = mean.numel()
    m = gram.shape[0] - k
    if m == 0:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    crit = cutoff(confidence, count)
    amap = ideal_map(p_k)
    deviance = _deviance(mean, count, variance, binary)

    def cosines(u):
        s = _boundary(deviance, mean, binary, crit, u * scale)
        return ideal_cosines(gram, s @ amap.T)  # [P, M]

    axes = torch.cat([torch.eye(k), -torch.eye(k)]).to(torch.float64)
    u = torch.cat([axes, torch.randn(num_points, k, generator=generator, dtype=torch.float64)])
    u = u / u.norm(dim=1, keepdim=True)
    cos = cosines(u)
    lower = torch.full((m,), float("nan"), dtype=torch.float64)
    upper = torch.full((m,), float("nan"), dtype=torch.float64)
    top = 8
    seeds = []  # per (teacher, side): the best rays so far
    for t in range(m):
        for sign in (1.0, -1.0):
            key = torch.nan_to_num(sign * cos[:, t], nan=-float("inf"))
            seeds.append(u[key.topk(min(top, key.numel())).indices])
    per = max(num_points // max(len(seeds) * top, 1), 4)
    for r in range(rounds):
        width = 0.5 * 0.35**r
        batch = torch.cat([s.repeat_interleave(per, 0) for s in seeds])
        batch = batch + width * torch.randn(batch.shape, generator=generator, dtype=torch.float64)
        batch = torch.cat([torch.cat(seeds), batch])
        batch = batch / batch.norm(dim=1, keepdim=True)
        cos_b = cosines(batch)
        for i in range(len(seeds)):
            t, sign = divmod(i, 2)[0], (1.0, -1.0)[i % 2]
            key = torch.nan_to_num(sign * cos_b[:, t], nan=-float("inf"))
            seeds[i] = batch[key.topk(min(top, key.numel())).indices]
        u, cos = torch.cat([u, batch]), torch.cat([cos, cos_b])
    # The estimate itself is in the region (its cosine is on the boundary along its own ray): keep it inside the
    # interval even where the search fell short.
    cos = torch.cat([cos, ideal_cosines(gram, ideal_on_candidates(p_k, mean)[None, :])])
    for t in range(m):
        col = cos[:, t]
        if bool(torch.isnan(col).all()):
            continue
        lower[t], upper[t] = torch.nanquantile(col, 0.0), torch.nanquantile(col, 1.0)
    return lower, upper
