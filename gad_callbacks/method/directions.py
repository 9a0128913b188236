"""Logit-space update directions at one node: the ideal (from success estimates) and each teacher's.

Everything here is a vector over the vocabulary. The parameter-space gradients of METHOD.md are `J^T v` for these
vectors `v`, with `J` the Jacobian of the student's logits at the node; `engine/vjp.py` takes that step.

Sign conventions: every direction is an *ascent* direction for what the student should do, i.e. the ideal is
`+dV/dz`-like and a teacher's is `-dL/dz`. Cosines between them are what the library reports.
"""

import math

import torch


LOSSES = ("reverse_kl", "forward_kl", "jsd", "sampled_token")


def check_logits(name: str, logits: torch.Tensor) -> None:
    """Raise a `ValueError` naming `name` when `logits` is empty or holds NaN / infinite values."""
    if logits.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(logits.shape)}).")
    if not torch.isfinite(logits).all():
        n_nan = int(torch.isnan(logits).sum())
        n_inf = int(torch.isinf(logits).sum())
        raise ValueError(
            f"{name} holds {n_nan} NaN and {n_inf} infinite values; alignment is undefined on such a node "
            "(check the model's dtype / overflow, or skip the node)."
        )


def check_candidates(candidates: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Validate a candidate set (non-empty, unique, inside the vocabulary) and return it as a 1-D long tensor."""
    candidates = torch.as_tensor(candidates).reshape(-1).long()
    if candidates.numel() == 0:
        raise ValueError("The candidate set is empty: a node needs at least one candidate token.")
    if int(candidates.min()) < 0 or int(candidates.max()) >= vocab_size:
        raise ValueError(f"Candidate ids must lie in [0, {vocab_size}); got {candidates.tolist()}.")
    if torch.unique(candidates).numel() != candidates.numel():
        raise ValueError(f"Candidate ids must be unique; got {candidates.tolist()}.")
    return candidates


def _success_on(candidates: torch.Tensor, success: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    success = torch.as_tensor(success, dtype=dtype).reshape(-1)
    if success.numel() != candidates.numel():
        raise ValueError(
            f"`success` has {success.numel()} entries but there are {candidates.numel()} candidates; "
            "give one success estimate per candidate."
        )
    if not torch.isfinite(success).all():
        raise ValueError(f"`success` holds non-finite values: {success.tolist()}.")
    return success


def _policy_and_centred_success(z, candidates, success, temperature):
    """`p = softmax(z / tau)` and `S - V_hat` on the candidates (0 elsewhere, i.e. off-candidate tokens are neutral)."""
    check_logits("student_logits", z)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    z = z.reshape(-1)
    dtype = torch.promote_types(z.dtype, torch.float32)
    candidates = check_candidates(candidates, z.numel()).to(z.device)
    success = _success_on(candidates, success, dtype).to(z.device)
    p = torch.softmax(z.to(dtype) / temperature, dim=-1)
    centred = torch.zeros_like(p)
    if bool((success == success[0]).all()):
        # Every candidate leads to the same outcome: nothing to learn here. Exact zeros (rather than rounding
        # noise from V_hat) make the node undefined instead of carrying noise into a cosine.
        return p, centred
    p_cand = p[candidates]
    v_hat = (p_cand * success).sum() / p_cand.sum()
    centred[candidates] = success - v_hat
    return p, centred


def ideal_direction(
    student_logits: torch.Tensor, candidates: torch.Tensor, success: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """
    The logit cotangent `a` of the ideal per-node gradient (METHOD.md): `a_j = p_j (S_j - V_hat)` on the candidates,
    `0` elsewhere, with `p = softmax(z / temperature)` and `V_hat` the `p`-weighted mean of `S` over the candidates.

    Tokens outside the candidate set are treated as neutral (`S_k := V_hat`), which is why they get exactly zero:
    the estimator makes no claim about tokens it did not roll out.

    Args:
        student_logits (`torch.Tensor`):
            Student logits `z` at the node, shape `[V]`.
        candidates (`torch.Tensor`):
            Candidate token ids, shape `[K]`, unique.
        success (`torch.Tensor`):
            Estimated success probability `S_k` of each candidate, shape `[K]`.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature `tau` of the student's rollouts.

    Returns:
        `torch.Tensor`: `a`, shape `[V]`, summing to zero (exactly zero when every `S_k` is equal).
    """
    p, centred = _policy_and_centred_success(student_logits, candidates, success, temperature)
    return p * centred


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.log_softmax(logits / temperature, dim=-1)


def _restrict_top_k(log_p: torch.Tensor, log_q: torch.Tensor, top_k: int, add_tail: bool):
    # SDFT's top-k support: the *student's* top-k tokens; the teacher is read on the same ids. The index choice is
    # piecewise constant, so autograd flows only through the gathered log-probs, as in the trainer.
    idx = torch.topk(log_p.detach(), k=top_k, dim=-1).indices
    log_p, log_q = log_p.gather(-1, idx), log_q.gather(-1, idx)
    if add_tail:
        # One extra category holding the leftover mass 1 - P_topk (clamped away from 0 so the log stays finite).
        def with_tail(lp):
            log_mass = torch.logsumexp(lp, dim=-1, keepdim=True).clamp(max=-1e-7)
            return torch.cat([lp, torch.log(-torch.expm1(log_mass))], dim=-1)

        return with_tail(log_p), with_tail(log_q)
    return log_p.log_softmax(-1), log_q.log_softmax(-1)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) over the last dimension, from log-probabilities."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def _generalized_jsd(log_p: torch.Tensor, log_q: torch.Tensor, beta: float) -> torch.Tensor:
    # TRL's convention: beta=0 is forward KL(q||p), beta=1 is reverse KL(p||q); in between the mixture
    # m = (1-beta) p + beta q and beta KL(q||m) + (1-beta) KL(p||m). The ends are special-cased as in the trainer,
    # because the mixture formula degenerates (log 0) there.
    if beta == 0.0:
        return _kl(log_q, log_p)
    if beta == 1.0:
        return _kl(log_p, log_q)
    log_m = torch.logsumexp(torch.stack([log_p + math.log1p(-beta), log_q + math.log(beta)]), dim=0)
    return beta * _kl(log_q, log_m) + (1.0 - beta) * _kl(log_p, log_m)


def _beta_for(loss: str, beta: float | None) -> float | None:
    if loss not in LOSSES:
        raise ValueError(f"Unknown loss {loss!r}; expected one of {LOSSES}.")
    implied = {"reverse_kl": 1.0, "forward_kl": 0.0, "sampled_token": 1.0}.get(loss)
    if loss == "jsd":
        if beta is None or not 0.0 <= beta <= 1.0:
            raise ValueError(f"loss='jsd' needs beta in [0, 1] (0 forward KL, 1 reverse KL); got {beta}.")
        return float(beta)
    if beta is not None and float(beta) != implied:
        raise ValueError(f"loss={loss!r} implies beta={implied}, but beta={beta} was given; use loss='jsd' instead.")
    return implied


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    loss: str,
    *,
    beta: float | None = None,
    temperature: float = 1.0,
    sampled_token: torch.Tensor | None = None,
    top_k: int | None = None,
    add_tail: bool = False,
) -> torch.Tensor:
    """
    Per-token distillation loss with TRL's conventions, differentiable in `student_logits`; shapes `[..., V]` in,
    `[...]` out. See [`distillation_direction`] for the arguments.
    """
    beta = _beta_for(loss, beta)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    log_p = _log_probs(student_logits, temperature)
    log_q = _log_probs(teacher_logits, temperature)
    if loss == "sampled_token":
        # The policy-gradient form used by SDFT/SDPO (sampled_token mode) and IW-OPD: its gradient is the
        # score-function estimate (log q_s - log p_s)(e_s - p) of the reverse-KL gradient at the sampled token s.
        if sampled_token is None:
            raise ValueError("loss='sampled_token' needs `sampled_token`, the token the student emitted at the node.")
        s = torch.as_tensor(sampled_token, device=log_p.device).long().reshape(log_p.shape[:-1] + (1,))
        if int(s.min()) < 0 or int(s.max()) >= log_p.shape[-1]:
            raise ValueError(f"sampled_token must lie in [0, {log_p.shape[-1]}).")
        lp_s, lq_s = log_p.gather(-1, s).squeeze(-1), log_q.gather(-1, s).squeeze(-1)
        return (lp_s - lq_s).detach() * lp_s
    if top_k is not None:
        if not 0 < top_k <= log_p.shape[-1]:
            raise ValueError(f"top_k must be in [1, {log_p.shape[-1]}], got {top_k}.")
        log_p, log_q = _restrict_top_k(log_p, log_q, top_k, add_tail)
    return _generalized_jsd(log_p, log_q, beta)


def distillation_direction(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    loss: str,
    *,
    beta: float | None = None,
    temperature: float = 1.0,
    sampled_token: torch.Tensor | None = None,
    top_k: int | None = None,
    add_tail: bool = False,
) -> torch.Tensor:
    """
    The descent direction `b = -dL/dz` of a teacher's per-token distillation loss, by autograd through the loss.

    `z` are the raw student logits (before the temperature), so `b` carries the trainer's `1 / temperature` factor;
    cosines are unaffected by that positive scale.

    Args:
        student_logits (`torch.Tensor`):
            Student logits, shape `[V]` (or `[N, V]` for `N` nodes at once).
        teacher_logits (`torch.Tensor`):
            Teacher logits on the same vocabulary, same shape.
        loss (`str`):
            `"reverse_kl"` (KL(p||q)), `"forward_kl"` (KL(q||p)), `"jsd"` (generalized JSD with `beta`), or
            `"sampled_token"` (the sampled-token reverse-KL estimator).
        beta (`float`, *optional*):
            TRL's interpolation: `0` forward KL, `1` reverse KL. Required for `"jsd"`, implied otherwise.
        temperature (`float`, *optional*, defaults to `1.0`):
            Divides both logit vectors before the softmaxes, as TRL's losses do.
        sampled_token (`torch.Tensor`, *optional*):
            The token the student emitted at the node; required for `"sampled_token"`.
        top_k (`int`, *optional*):
            Restrict the divergence to the student's top-k tokens (SDFT's `topk_logits` mode).
        add_tail (`bool`, *optional*, defaults to `False`):
            With `top_k`, add a tail bucket instead of renormalising (SDFT's `distillation_add_tail`).

    Returns:
        `torch.Tensor`: `b`, same shape as `student_logits`, in at least float32.
    """
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in "
            "shape: the teacher must share the student's vocabulary (same tokenizer and vocab size)."
        )
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    z = student_logits.detach().to(dtype).requires_grad_(True)
    with torch.enable_grad():
        per_token = distillation_loss(
            z,
            teacher_logits.detach().to(dtype),
            loss,
            beta=beta,
            temperature=temperature,
            sampled_token=sampled_token,
            top_k=top_k,
            add_tail=add_tail,
        )
        (grad,) = torch.autograd.grad(per_token.sum(), z)
    return -grad


def oracle_teacher_logits(
    student_logits: torch.Tensor,
    candidates: torch.Tensor,
    success: torch.Tensor,
    beta: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """
    Logits of the oracle teacher `q ∝ p exp(beta S)` (METHOD.md sanity identity), with `S := V_hat` off the
    candidates. Its reverse-KL direction at the same `temperature` is exactly proportional to the ideal direction
    (`beta < 0` gives the anti-oracle). Returned as logits `temperature * log q` so that `softmax(. / temperature)`
    recovers `q`.
    """
    p, centred = _policy_and_centred_success(student_logits, candidates, success, temperature)
    log_q = torch.log_softmax(student_logits.reshape(-1).to(p.dtype) / temperature + beta * centred, dim=-1)
    return temperature * log_q
