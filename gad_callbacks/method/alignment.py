"""The per-node math of METHOD.md on the candidate basis: ideal, value, cosines, pooled-alignment terms, companions.

Everything a node reports is a function of four small objects:
- `p_k`: the student's probabilities of the candidates `K(u)` (at the sampling temperature);
- the success estimates `S_hat_k` (with their per-candidate sample variances);
- the Gram matrix `G` of the parameter-space vectors `[J^T e_k for k in K] + [J^T b_T for each teacher T]` (or the
  same products in logit space, where `J = I`);
- each teacher's logit direction `b_T` (for the logit-space companions).

The ideal's logit cotangent lives on the candidate basis: `a = A S` with `A = diag(p) (I - 1 p~^T)` (`p~`: `p`
renormalised on `K`), a *linear* map of the success rates. Hence any cosine of the ideal, for any value of `S`
(estimate, interval search, bootstrap), is exact from `G` without another backward pass, and `<a_hat, b_T>` is
unbiased. The squared norm `a_hat^T G a_hat` is not: it carries `tr(A^T G A Cov(S_hat))` of noise, which is what
pulls single-node cosines toward 0 (attenuation). `ideal_norm2` removes it, which is what makes pooled alignment
consistent.

An undefined cosine (a zero vector on either side) is NaN, never 0: callers count NaNs as undefined nodes.
"""

import torch

from .stats import percentile_interval  # noqa: F401  (moved to stats.py; kept importable from here)


def cosine(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Cosine of two vectors (float64); NaN when either is exactly zero."""
    u, v = u.reshape(-1).to(torch.float64), v.reshape(-1).to(torch.float64)
    nu, nv = u.norm(), v.norm()
    if nu == 0 or nv == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    return (u @ v) / (nu * nv)


def gram_cosines(gram: torch.Tensor) -> torch.Tensor:
    """Cosine matrix from a Gram matrix `[M, M]`; rows and columns of zero-norm vectors are NaN."""
    gram = gram.to(torch.float64)
    norms = gram.diagonal().clamp_min(0.0).sqrt()
    cos = gram / (norms[:, None] * norms[None, :])
    zero = norms == 0
    cos[zero, :] = float("nan")
    cos[:, zero] = float("nan")
    # Rounding can push |cos| a hair above 1 for (anti)parallel vectors.
    return cos.clamp(-1.0, 1.0)


def span_cosines(gram: torch.Tensor, coeffs_a: torch.Tensor, coeffs_b: torch.Tensor) -> torch.Tensor:
    """
    Cosines between combinations of the Gram matrix's vectors: `coeffs_a` `[A, M]`, `coeffs_b` `[B, M]` give `[A, B]`
    (NaN where a combination has zero norm).
    """
    gram = gram.to(torch.float64)
    ca, cb = coeffs_a.to(torch.float64), coeffs_b.to(torch.float64)
    dots = ca @ gram @ cb.T
    na = torch.einsum("am,mn,an->a", ca, gram, ca).clamp_min(0.0).sqrt()
    nb = torch.einsum("bm,mn,bn->b", cb, gram, cb).clamp_min(0.0).sqrt()
    cos = dots / (na[:, None] * nb[None, :])
    cos[na == 0, :] = float("nan")
    cos[:, nb == 0] = float("nan")
    return cos.clamp(-1.0, 1.0)


# -- the ideal on the candidate basis ---------------------------------------------------------------------------------
def ideal_map(p_k: torch.Tensor) -> torch.Tensor:
    """`A` with `a = A S`: `a_j = p_j (S_j - sum_k p~_k S_k)` on the candidates, `[K, K]` (float64)."""
    p_k = p_k.to(torch.float64).reshape(-1)
    tilde = p_k / p_k.sum()
    return p_k[:, None] * (torch.eye(p_k.numel(), dtype=torch.float64) - tilde[None, :])


def node_value(p_k: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
    """`V_hat = sum_K p~_k S_k`, batched over leading dimensions of `success` `[..., K]`."""
    p_k = p_k.to(torch.float64)
    return (success.to(torch.float64) * p_k).sum(-1) / p_k.sum()


def ideal_on_candidates(p_k: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
    """
    `a` restricted to the candidates, batched: `p_k` `[K]`, `success` `[..., K]` -> `[..., K]`. Rows whose successes
    are all equal are exactly zero: every candidate leads to the same outcome, nothing to learn, and exact zeros (not
    rounding noise from `V_hat`) make the node undefined instead of carrying noise into a cosine.
    """
    s = success.to(torch.float64)
    a = s @ ideal_map(p_k).T
    flat = (s == s[..., :1]).all(-1, keepdim=True)
    return torch.where(flat, torch.zeros_like(a), a)


# -- cosines and pooled-alignment terms from the node's Gram matrix ---------------------------------------------------
def ideal_cosines(gram: torch.Tensor, a_k: torch.Tensor) -> torch.Tensor:
    """
    Cosines of ideal coefficient rows `a_k` `[..., K]` with each teacher, from the node Gram `[K + M, K + M]`
    (candidates first): `[..., M]`, NaN where the ideal or the teacher vector is zero.
    """
    gram = gram.to(torch.float64)
    k = a_k.shape[-1]
    g_kk, g_kt, g_tt = gram[:k, :k], gram[:k, k:], gram[k:, k:].diagonal().clamp_min(0.0)
    a = a_k.to(torch.float64)
    dots = a @ g_kt
    na2 = ((a @ g_kk) * a).sum(-1, keepdim=True).clamp_min(0.0)
    cos = dots / (na2 * g_tt).sqrt()
    cos = torch.where((na2 > 0) & (g_tt > 0), cos, torch.full_like(cos, float("nan")))
    return cos.clamp(-1.0, 1.0)


def teacher_projections(gram: torch.Tensor, a_k: torch.Tensor) -> torch.Tensor:
    """
    `<g_ideal, g_T / ||g_T||>` per teacher, `[M]`: linear in `S_hat`, hence unbiased. NaN for a zero teacher vector.
    This is the numerator term of pooled alignment.
    """
    gram = gram.to(torch.float64)
    k = a_k.shape[-1]
    norm_t = gram[k:, k:].diagonal().clamp_min(0.0).sqrt()
    proj = (a_k.to(torch.float64) @ gram[:k, k:]) / norm_t
    return torch.where(norm_t > 0, proj, torch.full_like(proj, float("nan")))


def ideal_norm2(gram: torch.Tensor, p_k: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor, count) -> float:
    """
    Unbiased `||g_ideal||^2` (denominator term of pooled alignment): `a_hat^T G a_hat - sum_k Q_kk s_k^2 / n_k` with
    `Q = A^T G_KK A` and `s_k^2` the unbiased sample variance of candidate `k`'s scores. It is the average, over all
    ways of splitting each candidate's rollouts in two, of the split-half cross-product `<J^T a^(1), J^T a^(2)>`, so
    it has that estimator's unbiasedness with less variance. It can be negative at a single node; only sums over a
    pool of nodes are meant to be read. NaN when a candidate has fewer than two samples (its variance is unknown).
    """
    k = mean.numel()
    g_kk = gram.to(torch.float64)[:k, :k]
    amap = ideal_map(p_k)
    a = ideal_on_candidates(p_k, mean)  # exactly 0 when flat, as in the numerator terms
    q = amap.T @ g_kk @ amap
    per_candidate = q.diagonal() * variance.to(torch.float64) / torch.as_tensor(count, dtype=torch.float64)
    # A candidate that cannot move the ideal (Q_kk = 0) needs no variance estimate.
    noise = torch.where(q.diagonal() == 0, torch.zeros_like(per_candidate), per_candidate).sum()
    signal = a @ g_kk @ a
    # The two terms can cancel exactly in exact arithmetic (one success among one candidate's rollouts, nothing
    # elsewhere: the unbiased estimate is 0); a rounding leftover of 1e-15 would then make a pool of such nodes
    # explode into a ratio of rounding errors.
    if abs(float(signal - noise)) <= 1e-9 * max(float(signal), float(noise)):
        return 0.0
    return float(signal - noise)


def logit_gram(candidates: torch.Tensor, directions: list[torch.Tensor]) -> torch.Tensor:
    """
    The node Gram in logit space (`J = I`): `[e_k for k in K] + [b_T]`, so that every parameter-space formula above
    also gives the logit-space number (`||b_T||` over the whole vocabulary).
    """
    k, m = candidates.numel(), len(directions)
    b = torch.stack([d.reshape(-1).to(torch.float64) for d in directions]) if m else torch.zeros(0, 1)
    gram = torch.zeros(k + m, k + m, dtype=torch.float64)
    gram[:k, :k] = torch.eye(k, dtype=torch.float64)
    if m:
        gram[:k, k:] = b[:, candidates].T
        gram[k:, :k] = b[:, candidates]
        gram[k:, k:] = b @ b.T
    return gram


# -- companions ---------------------------------------------------------------------------------------------------------
def restricted_cosine(a: torch.Tensor, b: torch.Tensor, candidates: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """
    `cos(a|K, b~|K)`: the teacher direction restricted to the candidates and re-centred under `p` renormalised on
    `K` (`b~_j = b_j - p~_j sum_K b`), so that a teacher is not scored against the zeros the ideal holds off `K`.
    """
    b_k = b.reshape(-1)[candidates].to(torch.float64)
    p_k = p.reshape(-1)[candidates].to(torch.float64)
    b_tilde = b_k - p_k / p_k.sum() * b_k.sum()
    return cosine(a.reshape(-1)[candidates], b_tilde)


def outside_share(b: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Share of `||b||^2` that falls outside the candidate set (NaN when `b` is zero)."""
    b = b.reshape(-1).to(torch.float64)
    total = (b * b).sum()
    if total == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    inside = (b[candidates] ** 2).sum()
    return ((total - inside) / total).clamp(0.0, 1.0)


def teacher_advantage(
    p: torch.Tensor, q: torch.Tensor, candidates: torch.Tensor, success: torch.Tensor
) -> torch.Tensor:
    """
    `TA = sum_K (q~_k - p~_k) S_k`: change in success if the student's choice at the node followed the teacher. Both
    `p` and `q` must be at the sampling temperature (the policy that would act), not the loss temperature.
    """
    p_k = p.reshape(-1)[candidates].to(torch.float64)
    q_k = q.reshape(-1)[candidates].to(torch.float64)
    s = success.to(torch.float64)
    if q_k.sum() == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    return ((q_k / q_k.sum() - p_k / p_k.sum()) * s).sum()


def total_variation(log_p: torch.Tensor, log_q: torch.Tensor) -> float:
    """Total-variation distance `0.5 sum |p - q|` of two distributions given as log-probabilities, in float64."""
    return float(0.5 * (log_p.to(torch.float64).exp() - log_q.to(torch.float64).exp()).abs().sum())
