"""The diagnostic pass end to end: METHOD.md's sanity identities, convergence, pairing and no side effects."""

import math
import random

import numpy as np
import pytest
import torch

from gad_callbacks import (
    DiagnosisConfig,
    Node,
    SuccessEstimate,
    TeacherLoss,
    diagnose_node,
    diagnose_nodes,
    oracle_teacher_logits,
)
from tests.conftest import lora, tiny_model
from tests.engine.test_rollouts import exact_success, parity_target


def student_logits(model, seq, prefix_len):
    with torch.no_grad():
        return model.eval()(input_ids=seq[:prefix_len].unsqueeze(0)).logits[0, -1].float()


def known(candidates, success):
    """A success estimate with given S (one 'rollout' each): the exact case of the identities."""
    s = torch.as_tensor(success, dtype=torch.float64)
    return SuccessEstimate(torch.as_tensor(candidates), s.unsqueeze(1), torch.zeros(len(s), dtype=torch.long))


@pytest.mark.parametrize("use_lora", [False, True])
def test_oracle_plus_one_anti_oracle_minus_one_in_both_spaces(use_lora):
    model = tiny_model("qwen2", logit_scale=2.0)
    if use_lora:
        model = lora(model)
    seq = torch.randint(2, 48, (14,), generator=torch.Generator().manual_seed(0))
    z = student_logits(model, seq, 9)
    success = known([5, 11, 2, 30], [0.9, 0.1, 0.4, 0.0])
    teachers = {
        "oracle": oracle_teacher_logits(z, success.candidates, success.mean, beta=2.0, temperature=0.8),
        "anti": oracle_teacher_logits(z, success.candidates, success.mean, beta=-2.0, temperature=0.8),
    }
    loss = TeacherLoss("reverse_kl", temperature=0.8)
    cfg = DiagnosisConfig(temperature=0.8)
    d = diagnose_node(model, seq, 9, teachers, {"oracle": loss, "anti": loss}, config=cfg, success=success)
    assert d.teachers["oracle"].param_cos == pytest.approx(1.0, abs=1e-5)
    assert d.teachers["oracle"].logit_cos == pytest.approx(1.0, abs=1e-5)
    assert d.teachers["anti"].param_cos == pytest.approx(-1.0, abs=1e-5)
    assert d.teachers["anti"].logit_cos == pytest.approx(-1.0, abs=1e-5)
    assert d.teachers["oracle"].advantage > 0 > d.teachers["anti"].advantage
    assert not d.undefined


def test_oracle_from_estimated_success_is_plus_one_with_interval():
    model = tiny_model("qwen2", vocab_size=16, logit_scale=3.0)
    seq = torch.tensor([2, 4, 3, 5, 2, 7, 9])
    z = student_logits(model, seq, 5)
    cfg = DiagnosisConfig(num_rollouts=32, max_new_tokens=3, mass=1.0, max_candidates=6, teacher_top=0)
    score = lambda conts: [parity_target(c) for c in conts]  # noqa: E731
    first = diagnose_node(model, seq, 5, {}, {}, score, cfg)
    # An oracle built on the estimated S aligns exactly with the estimated ideal. Its bootstrap interval (rollouts
    # resampled, teacher fixed) says how far a fresh estimate of the ideal would be: strictly below 1, because this
    # teacher is tuned to the noise of this particular estimate. A generic teacher's interval contains its point.
    orc = oracle_teacher_logits(z, first.success.candidates, first.success.mean, beta=3.0)
    other = torch.randn(16, generator=torch.Generator().manual_seed(5))
    teachers, losses = {"o": orc, "r": other}, {"o": TeacherLoss(), "r": TeacherLoss()}
    d = diagnose_node(model, seq, 5, teachers, losses, score, cfg, success=first.success)
    t = d.teachers["o"]
    assert t.param_cos == pytest.approx(1.0, abs=1e-5) and t.logit_cos == pytest.approx(1.0, abs=1e-5)
    assert t.param_ci[0] < t.param_ci[1] <= 1.0
    r = d.teachers["r"]
    assert r.param_ci[0] < r.param_cos < r.param_ci[1]
    assert r.logit_ci[0] < r.logit_cos < r.logit_ci[1]


def test_teacher_equal_to_student_and_flat_success_are_undefined_and_counted():
    model = tiny_model("qwen2")
    seq = torch.randint(2, 48, (12,), generator=torch.Generator().manual_seed(1))
    z = student_logits(model, seq, 6)
    losses = {"self": TeacherLoss("jsd", beta=0.5), "other": TeacherLoss()}
    teachers = {"self": z.clone(), "other": z.flip(0)}
    d = diagnose_node(model, seq, 6, teachers, losses, success=known([3, 4, 5], [0.0, 1.0, 0.5]))
    assert d.undefined == {"self": "teacher_matches_student"}
    assert math.isnan(d.teachers["self"].param_cos) and math.isnan(d.teachers["self"].logit_cos)
    assert not math.isnan(d.teachers["other"].param_cos)
    flat = diagnose_node(model, seq, 6, teachers, losses, success=known([3, 4, 5], [1.0, 1.0, 1.0]))
    assert flat.undefined["other"] == "flat_success"
    assert math.isnan(flat.teachers["other"].param_cos) and math.isnan(flat.teachers["other"].logit_cos)


def test_estimated_alignment_converges_to_exact():
    # Toy world small enough to enumerate: 6 tokens, 3 new tokens. Every token is a candidate, so the exact ideal
    # direction is known with no neutral-token assumption, and the estimate can only differ by rollout noise.
    model = tiny_model("qwen2", vocab_size=6, logit_scale=4.0, dtype=torch.float64)
    seq = torch.tensor([2, 4, 3, 5, 2])
    g = torch.Generator().manual_seed(3)
    teachers = {"t1": torch.randn(6, generator=g) * 2, "t2": torch.randn(6, generator=g) * 2}
    losses = {"t1": TeacherLoss(), "t2": TeacherLoss("jsd", beta=0.5)}
    exact_s = [exact_success(model, seq.tolist(), c, 3, 1.0, parity_target) for c in range(6)]
    exact = diagnose_node(model, seq, 5, teachers, losses, success=known(range(6), exact_s))
    score = lambda conts: [parity_target(c) for c in conts]  # noqa: E731
    errors = {}
    for n in (4, 64, 1024):
        errs = []
        for seed in range(6):
            cfg = DiagnosisConfig(
                num_rollouts=n,
                max_new_tokens=3,
                mass=1.0,
                max_candidates=6,
                num_bootstrap=0,
                seed=seed,
                allocation="uniform",
            )
            est = diagnose_node(model, seq, 5, teachers, losses, score, cfg)
            assert sorted(est.success.candidates.tolist()) == list(range(6))
            for name in teachers:
                for space in ("param_cos", "logit_cos"):
                    errs.append(abs(getattr(est.teachers[name], space) - getattr(exact.teachers[name], space)))
        errors[n] = float(np.nanmean(errs))
    assert errors[1024] < errors[64] < errors[4]
    assert errors[1024] < 0.05, errors


def test_batched_equals_per_node_and_rollout_cosine_matches_summed_vectors():
    model = tiny_model("llama", logit_scale=2.0, layers=2)
    g = torch.Generator().manual_seed(4)
    seqs = [torch.randint(2, 48, (16,), generator=g), torch.randint(2, 48, (12,), generator=g)]
    losses = {"a": TeacherLoss(), "b": TeacherLoss("forward_kl")}
    nodes = []
    for seq_idx, prefix_len in [(0, 5), (0, 9), (0, 13), (1, 7)]:
        teacher = {n: torch.randn(48, generator=g) for n in losses}
        cand = torch.randperm(48, generator=g)[:4]
        nodes.append(Node(seq_idx, prefix_len, teacher, success=known(cand, torch.rand(4, generator=g).tolist())))
    cfg = DiagnosisConfig(max_vectors=7, num_bootstrap=0)  # forces several backward groups per rollout
    batched = diagnose_nodes(model, seqs, nodes, losses, cfg)
    for node, got in zip(nodes, batched.nodes):
        alone = diagnose_node(
            model, seqs[node.sequence], node.prefix_len, node.teacher_logits, losses, config=cfg, success=node.success
        )
        for name in losses:
            assert got.teachers[name].param_cos == pytest.approx(alone.teachers[name].param_cos, abs=1e-5)
            assert got.teachers[name].logit_cos == pytest.approx(alone.teachers[name].logit_cos, abs=1e-6)
    # Rollout-level cosine of the summed parameter-space vectors, from plain autograd.
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    seq_nodes = [i for i, n in enumerate(nodes) if n.sequence == 0]
    length = max(nodes[i].prefix_len for i in seq_nodes)
    logits = model(input_ids=seqs[0][:length].unsqueeze(0)).logits[0]

    def summed(vectors):
        out = sum(logits[nodes[i].prefix_len - 1] @ vectors[i].to(logits.dtype) for i in seq_nodes)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, params, retain_graph=True)]).double()

    ideal = summed({i: batched.nodes[i].ideal for i in seq_nodes})
    rollout = next(r for r in batched.rollouts if r.sequence == 0)
    assert rollout.num_nodes == 3
    for name in losses:
        teacher = summed({i: batched.nodes[i].directions[name] for i in seq_nodes})
        expected = float(ideal @ teacher / (ideal.norm() * teacher.norm()))
        assert rollout.param_cos[name] == pytest.approx(expected, abs=1e-5)


def test_diagnosis_changes_nothing_in_the_model_or_global_rng():
    model = lora(tiny_model("qwen2", vocab_size=16, logit_scale=2.0))
    model.train()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.full_like(p, 0.25)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    rng = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    seq = torch.tensor([2, 4, 3, 5, 2, 7, 9, 3])
    teacher = {"t": torch.randn(16, generator=torch.Generator().manual_seed(0))}
    cfg = DiagnosisConfig(num_rollouts=4, max_new_tokens=3, num_bootstrap=20)
    diagnose_node(model, seq, 5, teacher, {"t": TeacherLoss()}, lambda c: [parity_target(x) for x in c], cfg)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
        if p.requires_grad:
            assert torch.equal(p.grad, torch.full_like(p, 0.25)), n
        else:
            assert p.grad is None, n
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])


def test_bad_inputs_name_the_problem():
    model = tiny_model("qwen2", vocab_size=16)
    seq = torch.tensor([2, 4, 3, 5, 2, 7])
    loss = {"t": TeacherLoss()}
    ok_score = lambda c: [0.0] * len(c)  # noqa: E731
    with pytest.raises(ValueError, match="share the student's vocabulary"):
        diagnose_node(model, seq, 3, {"t": torch.zeros(20)}, loss, ok_score)
    nan = torch.zeros(16)
    nan[0] = float("nan")
    # NaN teacher logits make that teacher undefined at the node (a counted reason), not an error.
    assert diagnose_node(model, seq, 3, {"t": nan}, loss, ok_score).undefined == {"t": "non_finite_teacher"}
    with pytest.raises(ValueError, match="give every teacher's logits"):
        diagnose_node(model, seq, 3, {}, loss, ok_score)
    with pytest.raises(ValueError, match="neither a `score`"):
        diagnose_node(model, seq, 3, {"t": torch.zeros(16)}, loss)
    with pytest.raises(ValueError, match="prefix_len"):
        diagnose_node(model, seq, 0, {"t": torch.zeros(16)}, loss, ok_score)
    with pytest.raises(ValueError, match="num_rollouts"):
        DiagnosisConfig(num_rollouts=0)
    with pytest.raises(ValueError, match="score function raised"):
        diagnose_node(model, seq, 3, {"t": torch.zeros(16)}, loss, lambda c: 1 / 0)
