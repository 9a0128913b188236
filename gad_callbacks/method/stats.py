"""Aggregates over nodes: means with bootstrap intervals and counts, and paired teacher differences.

Every aggregate reports how many values were defined and how many were undefined (NaN), because an average over the
nodes where a cosine happened to exist is only meaningful next to how many did not.
"""

from dataclasses import dataclass

import torch

from .alignment import percentile_interval


@dataclass
class Summary:
    """Mean of the defined values with a bootstrap percentile interval; `n` defined values, `n_undefined` NaNs."""

    mean: float
    lower: float
    upper: float
    n: int
    n_undefined: int

    def __str__(self) -> str:
        if self.n == 0:
            return f"undefined (0 nodes, {self.n_undefined} undefined)"
        return f"{self.mean:+.3f} [{self.lower:+.3f}, {self.upper:+.3f}] (n={self.n}, undefined={self.n_undefined})"


def summarize(
    values,
    *,
    confidence: float = 0.95,
    num_bootstrap: int = 1000,
    generator: torch.Generator | None = None,
    clusters=None,
) -> Summary:
    """
    Mean over the defined (non-NaN) `values` with a percentile bootstrap interval.

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
            A cluster label per value (e.g. the rollout id). Nodes of one rollout are not independent, so when given
            the bootstrap resamples whole clusters.
    """
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    defined = ~torch.isnan(values)
    n, n_undefined = int(defined.sum()), int((~defined).sum())
    if n == 0:
        nan = float("nan")
        return Summary(nan, nan, nan, 0, n_undefined)
    x = values[defined]
    mean = float(x.mean())
    if n == 1:
        return Summary(mean, float("nan"), float("nan"), 1, n_undefined)
    if clusters is None:
        idx = torch.randint(0, n, (num_bootstrap, n), generator=generator)
        reps = x[idx].mean(1)
    else:
        labels = [c for c, d in zip(clusters, defined.tolist(), strict=True) if d]
        uniq = sorted(set(labels), key=str)
        ids = torch.tensor([uniq.index(c) for c in labels])
        sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, ids, x)
        counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, ids, torch.ones_like(x))
        pick = torch.randint(0, len(uniq), (num_bootstrap, len(uniq)), generator=generator)
        reps = sums[pick].sum(1) / counts[pick].sum(1)
    lo, hi = percentile_interval(reps, confidence)
    return Summary(mean, float(lo), float(hi), n, n_undefined)


def paired_difference(x, y, **kwargs) -> Summary:
    """
    `x - y` over the nodes where both are defined (teachers compared on the same nodes and the same ideal estimate);
    nodes where either is undefined count as undefined. Keyword arguments go to [`summarize`].
    """
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"Paired values must have the same length, got {x.numel()} and {y.numel()}.")
    return summarize(x - y, **kwargs)
