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

    Candidates may hold different numbers of scored continuations (adaptive allocation, a rollout's own outcome
    reused as a free sample, continuations the verifier could not score): `scores` is then padded with NaN, which
    every statistic here reads as "no sample". An unscorable continuation is missing data, not a failure: counting it
    as 0 would bias `S_hat_k` toward 0, while leaving it out keeps the mean of the scored ones unbiased (as long as
    being unscorable does not depend on the outcome).

    Args:
        candidates (`torch.Tensor`):
            Candidate token ids, shape `[K]`.
        scores (`torch.Tensor`):
            Verifier score of every continuation, shape `[K, n]` (float64), row `k` for candidate `k`; NaN pads rows
            with fewer than `n` continuations.
        truncated (`torch.Tensor`):
            Per candidate, how many continuations hit `max_new_tokens` without an end-of-sequence token (they were
            scored as they stand: the verifier saw them), shape `[K]`.
        generated_tokens (`int`):
            Tokens decoded for these estimates (forced candidates excluded), the cost of the estimate.
        confidence (`float`, *optional*, defaults to `0.95`):
            Level of the intervals `lower` / `upper`.
        unscorable (`torch.Tensor`, *optional*):
            Per candidate, continuations decoded but left without a score (a NaN / infinite / `None` reward, or a
            student whose logits turned non-finite mid-continuation), shape `[K]`; zeros when omitted. They are
            not in `scores` nor `count`, but they were paid for.
    """

    candidates: torch.Tensor
    scores: torch.Tensor
    truncated: torch.Tensor
    generated_tokens: int = 0
    confidence: float = 0.95
    unscorable: torch.Tensor | None = None

    def __post_init__(self):
        if self.unscorable is None:
            self.unscorable = torch.zeros(self.scores.shape[0], dtype=torch.long)

    @property
    def count(self) -> torch.Tensor:
        """Scored continuations per candidate, shape `[K]`."""
        return (~torch.isnan(self.scores)).sum(dim=1)

    @property
    def decoded(self) -> int:
        """Continuations behind the estimate, unscorable ones included (they were paid for)."""
        return int(self.count.sum() + self.unscorable.sum())

    @property
    def mean(self) -> torch.Tensor:
        """`S_hat_k`, shape `[K]` (NaN for a candidate without any scored continuation)."""
        return torch.nansum(self.scores, dim=1) / self.count.to(self.scores.dtype)

    def variance(self) -> torch.Tensor:
        """Unbiased sample variance of each candidate's scores (`n - 1` denominator), NaN below two samples."""
        count = self.count.to(self.scores.dtype)
        dev = torch.nan_to_num(self.scores - self.mean[:, None], nan=0.0)
        return torch.where(count > 1, (dev * dev).sum(1) / (count - 1).clamp_min(1.0), torch.nan)

    @property
    def binary(self) -> bool:
        """Every score lies in `[0, 1]` (a success probability; otherwise a real-valued verifier)."""
        s = self.scores[~torch.isnan(self.scores)]
        return bool(((s >= 0) & (s <= 1)).all())

    def interval(self, confidence: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Per-candidate interval on `S_k`: Wilson when every score lies in `[0, 1]`, otherwise the normal interval
        from the sample standard deviation (real-valued verifiers).
        """
        confidence = self.confidence if confidence is None else confidence
        if self.binary:
            return wilson_interval(self.mean, self.count, confidence)
        z = normal_quantile(confidence)
        std = torch.nan_to_num(self.variance(), nan=float("inf")).sqrt()
        half = z * std / self.count.clamp_min(1).to(std.dtype).sqrt()
        return self.mean - half, self.mean + half

    @property
    def lower(self) -> torch.Tensor:
        return self.interval()[0]

    @property
    def upper(self) -> torch.Tensor:
        return self.interval()[1]

    def extend(self, other: "SuccessEstimate") -> "SuccessEstimate":
        """This estimate with `other`'s continuations of the same candidates appended (a further allocation round)."""
        if not torch.equal(self.candidates, other.candidates):
            raise ValueError("Cannot merge success estimates of different candidate sets.")
        rows = [torch.cat([a[~torch.isnan(a)], b[~torch.isnan(b)]]) for a, b in zip(self.scores, other.scores)]
        return SuccessEstimate(
            self.candidates,
            pad_rows(rows),
            self.truncated + other.truncated,
            self.generated_tokens + other.generated_tokens,
            self.confidence,
            self.unscorable + other.unscorable,
        )

    def resample_means(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Bootstrap replicates of `S_hat`: rollouts resampled with replacement within each candidate, `[B, K]`."""
        out = torch.empty(num_samples, self.scores.shape[0], dtype=torch.float64)
        for k, row in enumerate(self.scores):
            row = row[~torch.isnan(row)].to(torch.float64)
            idx = torch.randint(0, max(row.numel(), 1), (num_samples, row.numel()), generator=generator)
            out[:, k] = row[idx].mean(dim=1) if row.numel() else float("nan")
        return out


def pad_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack 1-D score rows of different lengths into `[K, max_len]` (float64), NaN-padded."""
    width = max((r.numel() for r in rows), default=0)
    out = torch.full((len(rows), width), float("nan"), dtype=torch.float64)
    for k, r in enumerate(rows):
        out[k, : r.numel()] = r.to(torch.float64)
    return out
