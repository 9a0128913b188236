"""Where a node's targeted rollouts go: a first `n_min` per candidate, then the rest where they buy the most.

The noise of the ideal in the space the cosine is measured in is `tr(G A Cov(S_hat) A^T) = sum_k Q_kk sigma_k^2 /
n_k` with `Q = A^T G_KK A` (see `alignment.py`). For a fixed total, `n_k ∝ sqrt(Q_kk) sigma_k` minimises it (Neyman
allocation). In logit space `Q_kk ≈ p_k^2`, which is METHOD.md's `p_k sqrt(S_k (1 - S_k))`: rollouts spent on a
candidate the student almost never picks, or whose outcome is already certain, buy little. `sigma_k` is estimated
after the first round with one pseudo-success and one pseudo-failure, so a candidate that happened to score all 0 or
all 1 in a few rollouts is not starved for good.
"""

import torch

from .alignment import ideal_map
from .success import SuccessEstimate


def neyman_counts(gram: torch.Tensor, p_k: torch.Tensor, estimate: SuccessEstimate, budget: int) -> torch.Tensor:
    """
    How many more continuations each candidate gets in the next round, `[K]` summing to `budget`.

    Args:
        gram (`torch.Tensor`):
            Node Gram (candidates first); only its candidate block is used.
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
    g_kk = gram.to(torch.float64)[:k, :k]
    amap = ideal_map(p_k)
    q = (amap.T @ g_kk @ amap).diagonal().clamp_min(0.0)
    count = estimate.count.to(torch.float64)
    shrunk = (estimate.mean.to(torch.float64) * count + 1) / (count + 2)
    if estimate.binary:
        sigma = (shrunk * (1 - shrunk)).sqrt()
    else:
        sigma = torch.nan_to_num(estimate.variance(), nan=1.0).clamp_min(1e-12).sqrt()
    weight = q.sqrt() * sigma
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
