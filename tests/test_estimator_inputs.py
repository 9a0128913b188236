"""What the estimator is fed: node budgets, end-of-sequence set, temperatures, teacher equality, random streams.

Each test pins one of the wrong results found by the audit of issue #8 (they all failed on the estimator before it).
"""

import copy
import math

import pytest
import torch

from gad_callbacks import (
    DiagnosisConfig,
    Node,
    PassSettings,
    Rollout,
    SuccessEstimate,
    TeacherLoss,
    TeacherSource,
    diagnose_node,
    diagnose_nodes,
    diagnose_rollouts,
)
from gad_callbacks.engine.model_io import eos_token_ids
from tests.conftest import tiny_model


def _known(candidates, success, n=1):
    s = torch.as_tensor(success, dtype=torch.float64)
    return SuccessEstimate(torch.as_tensor(candidates), s[:, None].repeat(1, n), torch.zeros(len(s), dtype=torch.long))


def _logits(model, seq, prefix_len):
    with torch.no_grad():
        return model.eval()(input_ids=seq[:prefix_len].unsqueeze(0)).logits[0, -1].float()


class _Recorder:
    """A score function that remembers every continuation it was asked to score."""

    def __init__(self):
        self.seen = []

    def __call__(self, continuations):
        self.seen += [list(c) for c in continuations]
        return [float(len(c) % 2) for c in continuations]


def test_node_budget_caps_targeted_continuations():
    model = tiny_model("qwen2", eos_token_id=None)  # no EOS: only the budget can stop a continuation
    seq = torch.randint(2, 48, (12,), generator=torch.Generator().manual_seed(0))
    score = _Recorder()
    cfg = DiagnosisConfig(num_rollouts=2, max_new_tokens=10, max_candidates=3, allocation="uniform", num_bootstrap=0)
    node = Node(0, 8, {"t": torch.randn(48)}, score, max_new_tokens=2)
    diagnose_nodes(model, [seq], [node], {"t": TeacherLoss()}, cfg)
    assert score.seen and max(len(c) for c in score.seen) == 1 + 2  # the forced candidate, then 2 sampled tokens


def test_end_of_sequence_set_is_trls_union():
    model = tiny_model("qwen2", eos_token_id=1)
    model.generation_config.eos_token_id = [1, 5]

    class Tok:
        eos_token_id = 7

    assert sorted(eos_token_ids(model, Tok())) == [1, 5, 7]
    assert sorted(eos_token_ids(model)) == [1, 5]


def test_targeted_rollouts_stop_at_the_generation_config_eos():
    # Token 9 is an end-of-turn id declared only in the generation config (as chat models do). A continuation that
    # samples it must stop there, as the trainer's completion would.
    model = tiny_model("qwen2", vocab_size=16, eos_token_id=1)
    with torch.no_grad():
        model.get_output_embeddings().bias = None
        model.get_output_embeddings().weight[9].mul_(0).add_(model.get_output_embeddings().weight[2] * 0 + 3.0)
    model.generation_config.eos_token_id = [1, 9]
    seq = torch.tensor([2, 4, 3, 5, 2, 7])
    score = _Recorder()
    cfg = DiagnosisConfig(num_rollouts=8, max_new_tokens=12, max_candidates=2, allocation="uniform", num_bootstrap=0)
    diagnose_nodes(model, [seq], [Node(0, 5, {}, score)], {}, cfg)
    stopped = [c for c in score.seen if 9 in c[1:]]
    assert stopped, "the end-of-turn token should be sampled in this set-up"
    assert all(c[-1] == 9 and 9 not in c[1:-1] for c in stopped)


def test_teacher_advantage_uses_the_sampling_temperature():
    model = tiny_model("qwen2", logit_scale=2.0)
    seq = torch.randint(2, 48, (10,), generator=torch.Generator().manual_seed(2))
    z = _logits(model, seq, 6)
    t_logits = torch.randn(48, generator=torch.Generator().manual_seed(3)) * 3
    success = _known([3, 4, 5, 6], [0.9, 0.1, 0.5, 0.2])
    cfg = DiagnosisConfig(temperature=0.7)
    d = diagnose_node(model, seq, 6, {"t": t_logits}, {"t": TeacherLoss(temperature=2.0)}, config=cfg, success=success)
    cand = success.candidates
    p = torch.softmax(z.double() / 0.7, -1)[cand]
    q = torch.softmax(t_logits.double() / 0.7, -1)[cand]  # the sampling temperature, not the loss's 2.0
    expected = float(((q / q.sum() - p / p.sum()) * success.mean).sum())
    assert d.teachers["t"].advantage == pytest.approx(expected, abs=1e-6)
    at_loss_temperature = torch.softmax(t_logits.double() / 2.0, -1)[cand]
    wrong = float(((at_loss_temperature / at_loss_temperature.sum() - p / p.sum()) * success.mean).sum())
    assert abs(wrong - expected) > 1e-2  # the test can tell the two temperatures apart


def test_confident_student_with_disagreeing_teacher_is_defined():
    # A confident student makes b small (it scales with 1 - p_max), but a teacher 3 nats away is not the student.
    model = tiny_model("qwen2", logit_scale=1.0)
    seq = torch.randint(2, 48, (10,), generator=torch.Generator().manual_seed(4))
    z = _logits(model, seq, 6)
    top = int(z.argmax())
    student_like = torch.full((48,), -30.0)
    student_like[top] = 30.0  # what the student's logits look like at a confident node
    teacher = student_like.clone()
    teacher[(top + 1) % 48] = 29.0  # still mostly the same token, but a real disagreement on the runner-up
    loss = TeacherLoss("reverse_kl")
    assert loss.direction(student_like, teacher).abs().max() < 1e-6  # the old absolute test called this "equal"
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(teacher.double(), -1),
        torch.log_softmax(student_like.double(), -1),
        log_target=True,
        reduction="sum",
    )
    assert kl > 1e-30
    assert loss.distance(student_like, teacher) > DiagnosisConfig().zero_tol
    # And end to end, on a node where the student is confident (one lm_head row scaled up) and emitted its top token,
    # while the teacher puts its mass on another token: several nats of KL, yet max |b| below 1e-6.
    sharp = tiny_model("qwen2", logit_scale=1.0)
    z = _logits(sharp, seq, 6)
    top = int(z.argmax())
    with torch.no_grad():
        sharp.get_output_embeddings().weight[top] *= 40.0 / float(z[top])
    zs = _logits(sharp, seq, 6)
    assert torch.softmax(zs.double(), -1).max() > 1 - 1e-9
    seq = seq.clone()
    seq[6] = top
    other = zs.clone()
    other[top] = float(zs.sort().values[-2]) - 3.0
    losses = {"st": TeacherLoss("sampled_token"), "rk": TeacherLoss()}
    assert all(float(loss.direction(zs, other, top).abs().max()) < 1e-6 for loss in losses.values())
    success = _known([top, int(other.argmax())], [0.9, 0.1])
    d = diagnose_node(sharp, seq, 6, {"st": other, "rk": other}, losses, success=success)
    assert not d.undefined
    assert all(d.teachers[n].distance > 0.5 for n in losses)


def test_teacher_equal_to_student_up_to_float32_rounding_is_undefined_at_a_realistic_vocabulary():
    # 49,152 tokens (SmolLM2's vocabulary). A teacher that *is* the student but whose logits went through another
    # float32 forward differs by rounding only; that is not a teacher signal. The perturbation below (1e-5, the size
    # of float32 differences between two kernels on logits of magnitude ~20) gives max |b| of a few 1e-6, above the
    # old absolute zero_tol of 1e-6: a defined cosine of pure rounding noise.
    vocab = 49152
    model = tiny_model("qwen2", vocab_size=vocab, logit_scale=40.0)  # logits up to ~20, p_max ~0.3
    seq = torch.randint(2, vocab, (10,), generator=torch.Generator().manual_seed(5))
    z = _logits(model, seq, 6)
    noise = torch.randn(vocab, generator=torch.Generator().manual_seed(6)) * 1e-5
    rounded = z + noise
    losses = {"rk": TeacherLoss(), "st": TeacherLoss("sampled_token"), "jsd": TeacherLoss("jsd", beta=0.5)}
    assert float(losses["rk"].direction(z, rounded).abs().max()) > 1e-6
    # A bit-identical copy of the weights, run as a separate forward over a longer sequence (other kernel shapes).
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin_logits = twin.eval()(input_ids=seq.unsqueeze(0)).logits[0, 5].float()
    cand = torch.topk(z, 3).indices
    teachers = {"rk": rounded, "st": rounded, "jsd": twin_logits}
    d = diagnose_node(model, seq, 6, teachers, losses, success=_known(cand, [0.9, 0.2, 0.5]))
    assert d.undefined == {name: "teacher_matches_student" for name in losses}
    assert all(math.isnan(d.teachers[n].param_cos) for n in losses)
    # Whereas a genuinely different teacher at the same vocabulary is defined.
    other = z + torch.randn(vocab, generator=torch.Generator().manual_seed(7)) * 0.5
    d = diagnose_node(model, seq, 6, {"rk": other}, {"rk": losses["rk"]}, success=_known(cand, [0.9, 0.2, 0.5]))
    assert not d.undefined and not math.isnan(d.teachers["rk"].param_cos)


class _Tokenizer:
    eos_token_id = 1

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(str(int(i)) for i in ids)


def _reward(prompts, completions, **kwargs):
    return [float(len(c.split()) % 2) for c in completions]


def _pass_inputs(n_rollouts=3):
    model = tiny_model("qwen2", logit_scale=2.0)
    g = torch.Generator().manual_seed(8)
    rollouts = [
        Rollout(
            "q",
            torch.randint(2, 48, (4,), generator=g).tolist(),
            torch.randint(2, 48, (8,), generator=g).tolist(),
            {"answer": "1"},
            i,
        )
        for i in range(n_rollouts)
    ]

    teachers = [TeacherSource("t", TeacherLoss(), tiny_model("qwen2", seed=1), lambda r: r.prompt_ids)]
    return model, rollouts, teachers


def test_random_streams_are_independent_per_rollout_and_purpose(monkeypatch):
    import gad_callbacks.diagnosis.diagnose as diagnose_module
    import gad_callbacks.diagnosis.rollout_pass as pass_module

    seeds = []

    def recording(module):
        original = module.stream

        def stream(*names, **kwargs):
            generator = original(*names, **kwargs)
            seeds.append((names, generator.initial_seed()))
            return generator

        return stream

    monkeypatch.setattr(pass_module, "stream", recording(pass_module))
    monkeypatch.setattr(diagnose_module, "stream", recording(diagnose_module))
    model, rollouts, teachers = _pass_inputs()
    cfg = DiagnosisConfig(num_rollouts=2, max_new_tokens=3, max_candidates=2, num_bootstrap=8, seed=11)
    diagnose_rollouts(model, _Tokenizer(), rollouts, teachers, _reward, cfg, PassSettings(nodes_per_rollout=2))
    purposes = {names[-1] if isinstance(names[-1], str) else names[1] for names, _ in seeds}
    assert {"node_selection", "targeted_rollouts"} <= purposes
    # Every generator the pass created was seeded differently, unless it was the very same stream again.
    by_seed = {}
    for names, seed in seeds:
        by_seed.setdefault(seed, set()).add(names)
    assert all(len(names) == 1 for names in by_seed.values()), by_seed


def test_diagnose_rollouts_leaves_the_callers_config_alone():
    model, rollouts, teachers = _pass_inputs(2)
    cfg = DiagnosisConfig(num_rollouts=2, max_new_tokens=3, max_candidates=2, num_bootstrap=8, seed=5)
    before = copy.deepcopy(cfg)
    diagnose_rollouts(model, _Tokenizer(), rollouts, teachers, _reward, cfg, PassSettings(nodes_per_rollout=2))
    assert cfg == before

    def broken(rollout):  # fails on the second rollout, after the first one was diagnosed
        if rollout.row_index == 1:
            raise RuntimeError("teacher prompt failed")
        return rollout.prompt_ids

    with pytest.raises(RuntimeError):
        bad = [TeacherSource("t", TeacherLoss(), teachers[0].model, broken)]
        diagnose_rollouts(model, _Tokenizer(), rollouts, bad, _reward, cfg, PassSettings())
    assert cfg == before  # also when the pass fails half-way


def test_adaptive_allocation_respects_budget_and_favours_uncertain_likely_candidates():
    from gad_callbacks.method.allocation import neyman_counts

    p_k = torch.tensor([0.6, 0.3, 0.05, 0.05], dtype=torch.float64)
    gram = torch.eye(4, dtype=torch.float64)  # no teacher: the ideal's own noise is the target
    scores = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]], dtype=torch.float64)
    est = SuccessEstimate(torch.arange(4), scores, torch.zeros(4, dtype=torch.long))
    counts = neyman_counts(gram, p_k, est, 20)
    assert int(counts.sum()) == 20
    assert counts[0] > counts[1] > counts[3] >= 0  # likely and uncertain first; a rare candidate buys little
    assert counts[2] <= counts[3]  # same probability, but candidate 2 looks certain (4/4)


def test_uniform_and_adaptive_allocation_and_rollouts_spent():
    model = tiny_model("qwen2", vocab_size=16, logit_scale=3.0)
    seq = torch.tensor([2, 4, 3, 5, 2, 7, 9])
    z = _logits(model, seq, 5)
    teachers, losses = {"t": torch.randn(16, generator=torch.Generator().manual_seed(9)) * 2}, {"t": TeacherLoss()}

    def score(continuations):  # parity of the tokens' sum: outcomes mixed within every candidate, whatever the seed
        return [float(sum(c) % 2) for c in continuations]

    common = dict(num_rollouts=8, max_new_tokens=3, mass=1.0, max_candidates=5, teacher_top=0, seed=1)
    uniform = diagnose_node(model, seq, 5, teachers, losses, score, DiagnosisConfig(allocation="uniform", **common))
    k = uniform.candidates.numel()
    assert uniform.success.count.tolist() == [8] * k and uniform.rollouts_spent == 8 * k
    # A target width nobody reaches: adaptive spends the whole budget, but not evenly.
    adaptive = diagnose_node(
        model, seq, 5, teachers, losses, score, DiagnosisConfig(allocation="adaptive", target_width=0.0, **common)
    )
    counts = adaptive.success.count
    assert adaptive.rollouts_spent == int(counts.sum()) <= 8 * k and int(counts.min()) >= 4
    assert int(counts.max()) > int(counts.min())
    # A target width everybody reaches at once: only the first round is spent.
    early = diagnose_node(
        model, seq, 5, teachers, losses, score, DiagnosisConfig(allocation="adaptive", target_width=2.0, **common)
    )
    assert early.success.count.tolist() == [4] * k and early.rollouts_spent == 4 * k
    assert not math.isnan(early.teachers["t"].param_ci[0]) and z.numel() == 16


def test_reused_rollout_outcome_is_one_free_sample_of_the_sampled_token():
    model = tiny_model("qwen2", vocab_size=16, logit_scale=3.0)
    seq = torch.tensor([2, 4, 3, 5, 2, 7, 9])
    score = _Recorder()
    # No screening: a node stopped after its screen would not show the four continuations per candidate.
    cfg = dict(
        num_rollouts=4, max_new_tokens=3, max_candidates=3, allocation="uniform", num_bootstrap=0, screen_rollouts=0
    )
    node = Node(0, 5, {}, score, observed_score=1.0)
    off = diagnose_nodes(model, [seq], [node], {}, DiagnosisConfig(**cfg)).nodes[0]
    on = diagnose_nodes(model, [seq], [node], {}, DiagnosisConfig(reuse_observed=True, **cfg)).nodes[0]
    sampled = on.candidates.tolist().index(int(seq[5]))
    assert off.success.count[sampled] == 4 and on.success.count[sampled] == 5
    assert torch.nansum(on.success.scores[sampled]) == torch.nansum(off.success.scores[sampled]) + 1.0
    assert on.rollouts_spent == off.rollouts_spent  # the free sample costs nothing


def test_flat_nodes_give_exact_zeros_not_rounding_residue():
    # Every candidate scored 1: the ideal is exactly zero. Its pooled-alignment terms must be exact zeros (a pool of
    # such nodes is undefined, not 0 [0, 0]), and its interval must not carry the residue's cosine (~cos(p, b)).
    from gad_callbacks import pooled_ratio
    from gad_callbacks.method.alignment import ideal_norm2, logit_gram, teacher_projections
    from gad_callbacks.method.intervals import cosine_intervals

    p_k = torch.tensor([0.37, 0.21, 0.13, 0.07], dtype=torch.float64)
    b = torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gram = logit_gram(torch.arange(4), [b])
    flat = SuccessEstimate(torch.arange(4), torch.ones(4, 4, dtype=torch.float64), torch.zeros(4, dtype=torch.long))
    norm2 = ideal_norm2(gram, p_k, flat.mean, flat.variance(), flat.count)
    proj = float(teacher_projections(gram, torch.zeros(4, dtype=torch.float64))[0])
    assert norm2 == 0.0 and proj == 0.0
    assert math.isnan(pooled_ratio([proj] * 5, [norm2] * 5).mean)
    lo, hi = cosine_intervals(gram, p_k, flat, 0.95, generator=torch.Generator().manual_seed(0))
    assert float(lo[0]) == pytest.approx(-float(hi[0]), abs=1e-3)  # the region allows every direction equally


def test_real_valued_scores_with_unknown_variance_do_not_pin_the_interval():
    from gad_callbacks.method.alignment import logit_gram
    from gad_callbacks.method.intervals import cosine_intervals

    p_k = torch.tensor([0.37, 0.21, 0.13, 0.07], dtype=torch.float64)
    b = torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gram = logit_gram(torch.arange(4), [b])
    one_each = torch.tensor([[0.3], [2.0], [1.5], [0.7]], dtype=torch.float64)  # one real-valued score each
    est = SuccessEstimate(torch.arange(4), one_each, torch.zeros(4, dtype=torch.long))
    lo, hi = cosine_intervals(gram, p_k, est, 0.95, generator=torch.Generator().manual_seed(0))
    assert float(hi[0] - lo[0]) > 0.2  # was ~0.001: a single score treated as exact


def test_replicates_of_a_node_without_seeds_draw_their_own_continuations():
    # A node without `Node.seed` gets one from its index in the call: two replicates of one node are two draws.
    model = tiny_model("qwen2", vocab_size=16)
    seq = torch.tensor([2, 4, 3, 5, 2, 7, 9])
    cfg = DiagnosisConfig(num_rollouts=6, max_new_tokens=4, max_candidates=3, num_bootstrap=0, screen_rollouts=0)

    def continuations(seeds):
        recorders = [_Recorder() for _ in seeds]
        nodes = [Node(0, 5, {}, r, seed=seed) for r, seed in zip(recorders, seeds, strict=True)]
        diagnose_nodes(model, [seq], nodes, {}, cfg)
        return [r.seen for r in recorders]

    a, b = continuations([None, None])
    assert len(a) == len(b) > 0 and a != b
    c, d = continuations([7, 7])  # with seeds of their own, equal seeds are equal draws
    assert c == d
