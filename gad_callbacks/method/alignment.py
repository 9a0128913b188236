"""Alignment between the ideal direction and teachers' directions, at one node, with bootstrap intervals.

Parameter space is handled through a Gram matrix: the parameter-space vectors of interest are all `J^T v` for `v` in
a small set of logit-space vectors (the candidate basis `e_k`, `k in K`, and each teacher's `b_T`), so any cosine
between combinations of them is `c1^T G c2 / sqrt(c1^T G c1 * c2^T G c2)`. Because the estimated ideal `a_hat` lives
on the candidate basis, its bootstrap replicates get *exact* parameter-space cosines without another backward pass.

An undefined cosine (a zero vector on either side) is NaN, never 0: callers count NaNs as undefined nodes.
"""

import torch


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
    """`TA = sum_K (q~_k - p~_k) S_k`: change in success if the student's choice at the node followed the teacher."""
    p_k = p.reshape(-1)[candidates].to(torch.float64)
    q_k = q.reshape(-1)[candidates].to(torch.float64)
    s = success.to(torch.float64)
    if q_k.sum() == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    return ((q_k / q_k.sum() - p_k / p_k.sum()) * s).sum()


def ideal_on_candidates(p_k: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
    """
    `a` restricted to the candidates, batched: `p_k` `[K]`, `success` `[..., K]` -> `[..., K]`. Rows whose successes
    are all equal are exactly zero (see `ideal_direction`).
    """
    p_k = p_k.to(torch.float64)
    s = success.to(torch.float64)
    v_hat = (s * p_k).sum(-1, keepdim=True) / p_k.sum()
    a = p_k * (s - v_hat)
    flat = (s == s[..., :1]).all(-1, keepdim=True)
    return torch.where(flat, torch.zeros_like(a), a)


def percentile_interval(replicates: torch.Tensor, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates along dim 0, ignoring NaN (undefined) replicates."""
    lo_q, hi_q = (1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0
    lo = torch.nanquantile(replicates.to(torch.float64), lo_q, dim=0)
    hi = torch.nanquantile(replicates.to(torch.float64), hi_q, dim=0)
    return lo, hi
