"""Distillation directions equal METHOD.md's hand formulas and the gradients of TRL's own loss functions."""

import pytest
import torch
from trl.experimental.gkd import GKDTrainer
from trl.experimental.sdft.loss_utils import (
    compute_full_logit_self_distillation_loss,
    compute_sampled_token_self_distillation_loss,
    compute_topk_self_distillation_loss,
)
from trl.trainer.distillation_trainer import _chunked_divergence_loss

from gad_callbacks import distillation_direction, ideal_direction, oracle_teacher_logits


V = 17


def logits_pair(seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V, generator=g, dtype=torch.float64) * scale, torch.randn(
        V, generator=g, dtype=torch.float64
    ) * scale


def neg_grad(loss_fn, z):
    z = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(z), z)
    return -g


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_hand_formulas(temperature):
    z, zq = logits_pair()
    p = torch.softmax(z / temperature, -1)
    q = torch.softmax(zq / temperature, -1)
    log_p, log_q = p.log(), q.log()
    kl_pq = (p * (log_p - log_q)).sum()
    # -dL/dz carries the 1/temperature factor of the logits' division; METHOD.md's formulas are per unit of z/T.
    expected = {
        "reverse_kl": p * (log_q - log_p + kl_pq),
        "forward_kl": q - p,
    }
    for loss, b_hand in expected.items():
        b = distillation_direction(z, zq, loss, temperature=temperature)
        torch.testing.assert_close(b, b_hand / temperature, rtol=1e-10, atol=1e-12)
    s = 5
    e_s = torch.zeros(V, dtype=torch.float64)
    e_s[s] = 1
    b = distillation_direction(z, zq, "sampled_token", temperature=temperature, sampled_token=s)
    torch.testing.assert_close(b, (log_q[s] - log_p[s]) * (e_s - p) / temperature, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 0.9])
def test_jsd_matches_trl_generalized_jsd_loss(beta, temperature):
    z, zq = logits_pair(seed=1)

    def trl_loss(zz):
        return GKDTrainer.generalized_jsd_loss(
            zz.view(1, 1, V), zq.view(1, 1, V), beta=beta, temperature=temperature, reduction="sum"
        )

    b = distillation_direction(z, zq, "jsd", beta=beta, temperature=temperature)
    torch.testing.assert_close(b, neg_grad(trl_loss, z), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_matches_distillation_trainer_chunked_loss(beta):
    # DistillationTrainer projects hidden states through lm_head inside its loss; with an identity head the hidden
    # state *is* the logit vector, so the gradient w.r.t. it is dL/dz.
    z, zq = logits_pair(seed=2)
    eye = torch.eye(V, dtype=torch.float64)

    def trainer_loss(zz):
        loss, _, _ = _chunked_divergence_loss(
            zz.view(1, 1, V), zq.view(1, 1, V), eye, eye, torch.ones(1, 1), beta, temperature=0.8
        )
        return loss

    b = distillation_direction(z, zq, "jsd", beta=beta, temperature=0.8)
    # The trainer's tiled kernel accumulates in float32, hence the float32-level tolerance.
    torch.testing.assert_close(b, neg_grad(trainer_loss, z), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("top_k,add_tail", [(None, False), (5, False), (5, True)])
def test_matches_sdft_losses(alpha, top_k, add_tail):
    z, zq = logits_pair(seed=3)
    temperature = 0.6  # SDFT divides both logit tensors by the temperature before its loss functions

    def sdft_loss(zz):
        s, t = (zz / temperature).view(1, 1, V), (zq / temperature).view(1, 1, V)
        if top_k is None:
            return compute_full_logit_self_distillation_loss(s, t, distillation_alpha=alpha).sum()
        return compute_topk_self_distillation_loss(
            s, t, distillation_topk=top_k, distillation_alpha=alpha, distillation_add_tail=add_tail
        ).sum()

    b = distillation_direction(z, zq, "jsd", beta=alpha, temperature=temperature, top_k=top_k, add_tail=add_tail)
    torch.testing.assert_close(b, neg_grad(sdft_loss, z), rtol=1e-9, atol=1e-12)


def test_matches_sdft_sampled_token_loss():
    z, zq = logits_pair(seed=4)
    s = 3

    def sdft_loss(zz):
        return compute_sampled_token_self_distillation_loss(
            zz.view(1, 1, V), zq.view(1, 1, V), torch.tensor([[s]]), distillation_alpha=1.0
        ).sum()

    b = distillation_direction(z, zq, "sampled_token", sampled_token=s)
    torch.testing.assert_close(b, neg_grad(sdft_loss, z), rtol=1e-9, atol=1e-12)


def test_batched_directions_equal_per_node():
    g = torch.Generator().manual_seed(5)
    z, zq = torch.randn(4, V, generator=g), torch.randn(4, V, generator=g)
    b = distillation_direction(z, zq, "jsd", beta=0.3)
    for i in range(4):
        torch.testing.assert_close(b[i], distillation_direction(z[i], zq[i], "jsd", beta=0.3))


def test_ideal_direction_formula_and_zero_sum():
    z, _ = logits_pair(seed=6)
    cand = torch.tensor([3, 7, 1])
    s = torch.tensor([0.2, 0.9, 0.5], dtype=torch.float64)
    a = ideal_direction(z, cand, s, temperature=0.7)
    p = torch.softmax(z / 0.7, -1)
    v_hat = (p[cand] * s).sum() / p[cand].sum()
    expected = torch.zeros(V, dtype=torch.float64)
    expected[cand] = p[cand] * (s - v_hat)
    torch.testing.assert_close(a, expected)
    assert abs(float(a.sum())) < 1e-12
    # Flat success (every candidate equally good): exactly zero, not rounding noise.
    assert torch.count_nonzero(ideal_direction(z, cand, torch.full((3,), 0.3))) == 0


def test_oracle_reverse_kl_is_proportional_to_ideal():
    z, _ = logits_pair(seed=7)
    cand = torch.tensor([0, 4, 9, 12])
    s = torch.tensor([0.0, 1.0, 0.25, 0.5], dtype=torch.float64)
    a = ideal_direction(z, cand, s, temperature=0.8)
    for beta, sign in [(3.0, 1.0), (-3.0, -1.0)]:
        b = distillation_direction(z, oracle_teacher_logits(z, cand, s, beta, 0.8), "reverse_kl", temperature=0.8)
        # Exactly b = (beta / T) a.
        torch.testing.assert_close(b, a * beta / 0.8, rtol=1e-9, atol=1e-12)
        assert sign * float(torch.nn.functional.cosine_similarity(a, b, dim=0)) == pytest.approx(1.0, abs=1e-12)


def test_teacher_equal_to_student_gives_zero_direction():
    z, _ = logits_pair(seed=8)
    for loss, beta in [("reverse_kl", None), ("forward_kl", None), ("jsd", 0.5)]:
        b = distillation_direction(z, z.clone(), loss, beta=beta)
        assert float(b.abs().max()) < 1e-12


def test_bad_inputs_raise_value_errors():
    z, zq = logits_pair()
    with pytest.raises(ValueError, match="vocabulary"):
        distillation_direction(z, zq[:-1], "reverse_kl")
    bad = z.clone()
    bad[2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        distillation_direction(bad, zq, "reverse_kl")
    with pytest.raises(ValueError, match="NaN"):
        ideal_direction(bad, torch.tensor([0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="beta"):
        distillation_direction(z, zq, "jsd")
    with pytest.raises(ValueError, match="implies beta"):
        distillation_direction(z, zq, "reverse_kl", beta=0.5)
    with pytest.raises(ValueError, match="sampled_token"):
        distillation_direction(z, zq, "sampled_token")
    with pytest.raises(ValueError, match="Unknown loss"):
        distillation_direction(z, zq, "kl")
    with pytest.raises(ValueError, match="empty"):
        ideal_direction(z, torch.tensor([], dtype=torch.long), torch.tensor([]))
    with pytest.raises(ValueError, match="one success estimate per candidate"):
        ideal_direction(z, torch.tensor([1, 2]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="unique"):
        ideal_direction(z, torch.tensor([1, 1]), torch.tensor([0.5, 0.2]))
