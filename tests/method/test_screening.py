"""Screening (issue #10): a node whose first targeted rollouts all end alike stops there, except with probability
`screen_keep`, when it is finished and weighted `1 / screen_keep` (Russian roulette). Checked against exact
enumeration with real targeted rollouts: pooled alignment stays unbiased, while plain early stopping (no roulette)
biases it, and the stopped nodes' bookkeeping (flat terms, no parameter-space interval, rollouts spent)."""

import math

import pytest
import torch

from gad_callbacks import DiagnosisConfig, Node, TeacherLoss, diagnose_nodes, pooled_alignment
from gad_callbacks.method.stats import pooled_ratio, summarize
from tests.conftest import tiny_model
from tests.method.test_calibration import SPACES, World, one_thread, repeat_first  # noqa: F401 (autouse fixture)


REPS = 600  # independent diagnoses of one node
PER_CALL = 25


@pytest.fixture(scope="module")
def world():
    """llama + LoRA, tau = 0.7, "repeat" task: success rates 0.0-0.27, so that a screen of one rollout per candidate
    is often all wrong even where the ideal is not flat (the case where stopping could bias)."""
    return World("llama", 1, 4.0, 0.7, 2, repeat_first, use_lora=True)


def diagnose_node_zero(world, reps, seed, **cfg):
    """`reps` independent diagnoses of node 0 with real targeted rollouts (each in its own sequence slot, so that
    every replicate draws its own coin)."""
    out = []
    for start in range(0, reps, PER_CALL):
        n = min(PER_CALL, reps - start)
        sequences = [world.sequences[0]] * n
        nodes = [
            Node(j, world.sequences[0].numel(), world.teachers[0], score=lambda c: [repeat_first(x) for x in c])
            for j in range(n)
        ]
        config = world.config(**{"seed": seed + start, "num_bootstrap": 0, **cfg})
        out += diagnose_nodes(world.model, sequences, nodes, world.losses, config).nodes
    return out


@pytest.fixture(scope="module")
def draws(world):
    return {
        "roulette": diagnose_node_zero(world, REPS, 0),
        "plain_stop": diagnose_node_zero(world, REPS, 0, screen_keep=1e-9),
        "no_screen": diagnose_node_zero(world, REPS, 0, screen_rollouts=0),
    }


def test_roulette_keeps_pooled_alignment_unbiased_where_plain_stopping_does_not(world, draws):
    # Over 8 other seeds (600 draws each, 3 teachers x 2 spaces) the pooled error had mean -0.005 both with roulette
    # and without screening (the ratio's small finite-sample bias, the same for both), sd 0.028 with roulette and
    # 0.016 without (the 1/keep weights add variance, not bias), largest 0.085 / 0.034. On these draws: <= 0.013 /
    # 0.013. Plain stopping (keep -> 0) attenuated every pooled value toward 0, by 0.08-0.22 (mean 0.16), because it
    # drops the numerators of the nodes it stops but still counts them.
    g = torch.Generator().manual_seed(0)
    errors, attenuation = {"roulette": [], "no_screen": []}, []
    for name in world.losses:
        for space in SPACES:
            exact = world.exact_cos(0, name, space)
            for kind in errors:
                pooled = pooled_alignment(draws[kind], name, space=space, generator=g)
                assert pooled.n == REPS
                errors[kind].append(pooled.mean - exact)
            plain = pooled_alignment(draws["plain_stop"], name, space=space, generator=g)
            attenuation.append(abs(exact) - abs(plain.mean))
    for kind, errs in errors.items():
        assert max(map(abs, errs)) < 0.07, (kind, errs)  # 2.5 sd of the roulette's error
        assert abs(sum(errs) / len(errs)) < 0.03, (kind, errs)
    assert min(attenuation) > 0.04 and sum(attenuation) / len(attenuation) > 0.1, attenuation


def test_screening_stops_flat_looking_nodes_and_saves_rollouts(world, draws):
    k = world.vocab
    roulette, full = draws["roulette"], draws["no_screen"]
    stopped = [d for d in roulette if d.screened_out]
    kept = [d for d in roulette if not d.screened_out and d.pool_weight > 1]
    assert all(d.rollouts_spent == k * 8 for d in full)
    # Measured: 40% of the screens of this node are all wrong; a quarter of those are finished.
    assert 0.2 * REPS < len(stopped) < 0.6 * REPS
    assert 0.1 * len(stopped) < len(kept) < 0.6 * len(stopped)
    spent = sum(d.rollouts_spent for d in roulette)
    assert spent < 0.8 * sum(d.rollouts_spent for d in full), spent
    for d in stopped:
        assert d.rollouts_spent == k and d.pool_weight == 1.0
        assert d.ideal_norm2 == {"param": 0.0, "logit": 0.0}
        assert set(d.undefined.values()) == {"flat_success"}
        assert torch.isnan(d.gram[:k]).all() and torch.isfinite(d.gram[k:, k:]).all()
        for t in d.teachers.values():
            assert t.param_proj == 0.0 and t.logit_proj == 0.0
            assert math.isnan(t.param_cos) and math.isnan(t.logit_cos)
            assert math.isnan(t.advantage)  # not measured: the weighted finished nodes stand for it in means
    for d in kept:
        assert d.pool_weight == 4.0 and d.rollouts_spent == k * 8 and torch.isfinite(d.gram).all()


def test_stopped_node_has_no_parameter_interval_but_a_logit_one(world):
    stopped = [d for d in diagnose_node_zero(world, 30, 5, num_bootstrap=50) if d.screened_out]
    assert stopped
    for t in stopped[0].teachers.values():
        assert all(math.isnan(x) for x in t.param_ci)
        assert all(math.isfinite(x) for x in t.logit_ci)


def test_weights_enter_means_and_pooled_sums():
    values, weights = [0.5, -0.25, float("nan"), 1.0], [1.0, 4.0, 4.0, 2.0]
    s = summarize(values, weights=weights, num_bootstrap=10)
    assert s.n == 3 and s.n_undefined == 1
    assert s.mean == pytest.approx((0.5 - 1.0 + 2.0) / 7.0)
    proj, norm2 = [0.2, 0.1, 0.0], [0.04, 0.03, 0.0]
    r = pooled_ratio(proj, norm2, weights=[1.0, 4.0, 1.0], num_bootstrap=10)
    assert r.n == 3 and r.mean == pytest.approx((0.2 + 0.4) / math.sqrt(3 * (0.04 + 0.12)))
    with pytest.raises(ValueError, match="weights"):
        summarize(values, weights=[1.0, -1.0, 1.0, 1.0])


def test_a_rollout_whose_teachers_all_dropped_out_mixes_stopped_and_finished_nodes():
    # A teacher with NaN logits everywhere is left out of the computation, leaving no teacher vector at all: nodes
    # stopped by screening then have no vector either, next to finished ones that do.
    model = tiny_model("qwen2", layers=2).eval()
    seq = torch.randint(2, 48, (14,), generator=torch.Generator().manual_seed(0))
    nan = torch.full((48,), float("nan"))
    nodes = [Node(0, t, {"t": nan}, score=lambda c: [0.0] * len(c)) for t in range(4, 12)]
    config = DiagnosisConfig(max_new_tokens=2, num_bootstrap=0, screen_keep=0.5, seed=3)
    out = diagnose_nodes(model, [seq], nodes, {"t": TeacherLoss()}, config).nodes
    assert {d.screened_out for d in out} == {True, False}
    assert {d.pool_weight for d in out if not d.screened_out} == {2.0}
    assert all(d.undefined == {"t": "non_finite_teacher"} for d in out)
