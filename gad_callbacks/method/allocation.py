"""Where a node's targeted rollouts go: a first `n_min` per candidate, then the rest where they buy the most.

Neyman allocation: to estimate a function `f(S_hat)` of the candidates' success rates with the least variance for a
fixed total, `n_k ∝ sigma_k |df/dS_k|` (delta method: `Var f ≈ sum_k (df/dS_k)^2 sigma_k^2 / n_k`). What the node
reports are the teachers' cosines, so `|df/dS_k|` is the norm over teachers of `d cos_T / d S_k`, computed exactly
from the node's Gram matrix at the current estimate. It is small for a candidate the student almost never picks
(METHOD.md's `p_k sqrt(S_k (1 - S_k))` is the logit-space, teacher-blind version of the same idea), and `sigma_k` is
small for a candidate whose outcome is nearly certain: rollouts spent there buy little. When no teacher has a cosine
at the node the ideal itself is the target: `|df/dS_k| = sqrt(Q_kk)`, `Q = A^T G_KK A`, the weight of candidate `k`
in the ideal's noise `tr(G A Cov(S_hat) A^T)`. `sigma_k` is estimated with one pseudo-success and one pseudo-failure,
so a candidate that happened to score all 0 or all 1 in a few rollouts is not starved for good.

Measured (benchmarks/README.md, real rollouts): at the same cap, cosine-sensitivity weights gave narrower intervals
for fewer rollouts than the ideal's own Neyman weights (`sqrt(Q_kk) sigma_k`).
"""

import torch

from .alignment import ideal_cosines, ideal_map
from .success import SuccessEstimate


def _sensitivities(gram: torch.Tensor, p_k: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """`||d cos_T / d S_k||` over the teachers with a defined cosine at success rates `s`; `sqrt(Q_kk)` if none."""
    amap = ideal_map(p_k)
    s = s.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        cos = ideal_cosines(gram, (s @ amap.T)[None])[0]
        cos = cos[~torch.isnan(cos)]
        if cos.numel():
            rows = [torch.autograd.grad(c, s, retain_graph=True)[0] for c in cos]
            return torch.stack(rows).pow(2).sum(0).sqrt()
    k = p_k.numel()
    return (amap.T @ gram.to(torch.float64)[:k, :k] @ amap).diagonal().clamp_min(0.0).sqrt()


def neyman_counts(gram: torch.Tensor, p_k: torch.Tensor, estimate: SuccessEstimate, budget: int) -> torch.Tensor:
    """
    How many more continuations each candidate gets in the next round, `[K]` summing to `budget`.

    Args:
        gram (`torch.Tensor`):
            Node Gram (candidates first, then teachers).
        p_k (`torch.Tensor`):
            Student probabilities of the candidates, `[K]`.
        estimate ([`SuccessEstimate`]):
            What has been observed so far.
        budget (`int`):
            Continuations to hand out in this round.
    """
    k = p_k.numel()
    if budget <= 0:
        return torch.zeros(k, dtype=torch.long)
    count = estimate.count.to(torch.float64)
    shrunk = (estimate.mean.to(torch.float64) * count + 1) / (count + 2)
    if estimate.binary:
        sigma = (shrunk * (1 - shrunk)).sqrt()
    else:
        sigma = torch.nan_to_num(estimate.variance(), nan=1.0).clamp_min(1e-12).sqrt()
    weight = _sensitivities(gram.to(torch.float64), p_k.to(torch.float64), shrunk) * sigma
    weight = torch.nan_to_num(weight, nan=0.0, posinf=0.0)
    if float(weight.sum()) <= 0:
        weight = torch.ones(k, dtype=torch.float64)
    # Target totals for everything spent after this round, then what is missing from each (largest remainders).
    total = count.sum() + budget
    missing = (weight / weight.sum() * total - count).clamp_min(0.0)
    if float(missing.sum()) <= 0:
        missing = weight.clone()
    share = missing / missing.sum() * budget
    out = share.floor().long()
    rest = budget - int(out.sum())
    if rest > 0:
        out[(share - out).topk(rest).indices] += 1
    return out
