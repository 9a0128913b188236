"""Success estimates of candidate tokens from targeted rollouts, with their uncertainty.

A targeted rollout forces candidate `k` at a node, lets the student finish and scores the result; `S_hat_k` is the
mean score over the `n` rollouts of `k`. Every estimate keeps its raw scores so that intervals and bootstrap
replicates of anything derived from it (the ideal direction, the alignments) can be computed later.
"""

from dataclasses import dataclass
from statistics import NormalDist

import torch


def normal_quantile(confidence: float) -> float:
    """Two-sided standard-normal quantile for a `confidence` interval (1.96 for 0.95)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(mean: torch.Tensor, count: torch.Tensor, confidence: float = 0.95):
    """
    Wilson score interval for success rates `mean` observed over `count` trials (elementwise).

    Preferred over the normal interval because targeted-rollout success rates sit at 0 or 1 often, where the normal
    interval collapses to a point. For scores in `[0, 1]` that are not binary it is conservative (the variance of such
    a score is at most `mean (1 - mean)`).
    """
    z = normal_quantile(confidence)
    n = count.to(torch.float64).clamp_min(1.0)
    m = mean.to(torch.float64)
    denom = 1.0 + z * z / n
    centre = (m + z * z / (2.0 * n)) / denom
    half = z / denom * torch.sqrt((m * (1.0 - m)).clamp_min(0.0) / n + z * z / (4.0 * n * n))
    return centre - half, centre + half


@dataclass
class SuccessEstimate:
    """
    Targeted-rollout success estimates of the candidate tokens at one node.

    Args:
        candidates (`torch.Tensor`):
            Candidate token ids, shape `[K]`.
        scores (`torch.Tensor`):
            Verifier score of every continuation, shape `[K, n]` (float64), row `k` for candidate `k`.
        truncated (`torch.Tensor`):
            Per candidate, how many continuations hit `max_new_tokens` without an end-of-sequence token (they were
            scored as they stand: the verifier saw them), shape `[K]`.
        generated_tokens (`int`):
            Tokens decoded for these estimates (forced candidates excluded), the cost of the estimate.
        confidence (`float`, *optional*, defaults to `0.95`):
            Level of the intervals `lower` / `upper`.
    """

    candidates: torch.Tensor
    scores: torch.Tensor
    truncated: torch.Tensor
    generated_tokens: int = 0
    confidence: float = 0.95

    @property
    def mean(self) -> torch.Tensor:
        """`S_hat_k`, shape `[K]`."""
        return self.scores.mean(dim=1)

    @property
    def count(self) -> torch.Tensor:
        """Scored continuations per candidate, shape `[K]`."""
        return torch.full((self.scores.shape[0],), self.scores.shape[1], dtype=torch.long)

    def interval(self, confidence: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Per-candidate interval on `S_k`: Wilson when every score lies in `[0, 1]`, otherwise the normal interval
        from the sample standard deviation (real-valued verifiers).
        """
        confidence = self.confidence if confidence is None else confidence
        if bool(((self.scores >= 0) & (self.scores <= 1)).all()):
            return wilson_interval(self.mean, self.count, confidence)
        z = normal_quantile(confidence)
        n = self.scores.shape[1]
        std = self.scores.std(dim=1, correction=1) if n > 1 else torch.full_like(self.mean, float("inf"))
        half = z * std / n**0.5
        return self.mean - half, self.mean + half

    @property
    def lower(self) -> torch.Tensor:
        return self.interval()[0]

    @property
    def upper(self) -> torch.Tensor:
        return self.interval()[1]

    def resample_means(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Bootstrap replicates of `S_hat`: rollouts resampled with replacement within each candidate, `[B, K]`."""
        k, n = self.scores.shape
        idx = torch.randint(0, n, (num_samples, k, n), generator=generator)
        return self.scores.unsqueeze(0).expand(num_samples, k, n).gather(2, idx).mean(dim=2)
