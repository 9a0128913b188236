"""Cosines, companions (restricted cosine, outside share, teacher advantage) and aggregate statistics."""

import math

import pytest
import torch

from gad_callbacks import paired_difference, summarize
from gad_callbacks.method.alignment import (
    cosine,
    gram_cosines,
    ideal_on_candidates,
    outside_share,
    restricted_cosine,
    span_cosines,
    teacher_advantage,
)
from gad_callbacks.method.success import SuccessEstimate, wilson_interval


def test_cosine_of_zero_vector_is_nan_not_zero():
    assert math.isnan(float(cosine(torch.zeros(3), torch.ones(3))))
    assert float(cosine(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0]))) == pytest.approx(1.0)


def test_gram_and_span_cosines_match_explicit_vectors():
    g = torch.Generator().manual_seed(0)
    vecs = torch.randn(4, 30, generator=g, dtype=torch.float64)
    vecs[2] = 0.0
    gram = vecs @ vecs.T
    cos = gram_cosines(gram)
    for i in range(4):
        for j in range(4):
            expected = float(cosine(vecs[i], vecs[j]))
            if math.isnan(expected):
                assert math.isnan(float(cos[i, j]))
            else:
                assert float(cos[i, j]) == pytest.approx(expected, abs=1e-12)
    ca, cb = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(2, 4, generator=g, dtype=torch.float64)
    span = span_cosines(gram, ca, cb)
    for i in range(3):
        for j in range(2):
            assert float(span[i, j]) == pytest.approx(float(cosine(ca[i] @ vecs, cb[j] @ vecs)), abs=1e-12)


def test_restricted_cosine_recentres_teacher_on_candidates():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    cand = torch.tensor([0, 1])
    a = torch.tensor([0.1, -0.1, 0.0, 0.0], dtype=torch.float64)
    # A teacher that moves mass onto token 0 from the off-candidate token 3: on K it is not centred.
    b = torch.tensor([0.2, 0.0, 0.0, -0.2], dtype=torch.float64)
    b_k = b[cand] - p[cand] / p[cand].sum() * b[cand].sum()
    assert abs(float(b_k.sum())) < 1e-15
    assert float(restricted_cosine(a, b, cand, p)) == pytest.approx(float(cosine(a[cand], b_k)))
    assert float(outside_share(b, cand)) == pytest.approx(0.5)


def test_teacher_advantage():
    p = torch.tensor([0.6, 0.4, 0.0], dtype=torch.float64)
    q = torch.tensor([0.2, 0.6, 0.2], dtype=torch.float64)
    cand = torch.tensor([0, 1])
    s = torch.tensor([0.0, 1.0], dtype=torch.float64)
    # q~ = (0.25, 0.75): success 0.75 under the teacher's choice vs 0.4 under the student's.
    assert float(teacher_advantage(p, q, cand, s)) == pytest.approx(0.35)


def test_ideal_on_candidates_batched():
    p_k = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    s = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5]], dtype=torch.float64)
    a = ideal_on_candidates(p_k, s)
    torch.testing.assert_close(a[0], p_k * (s[0] - 0.5))
    assert torch.count_nonzero(a[1]) == 0


def test_wilson_interval_known_values():
    # Wilson 95% for 0/10: [0, 0.2775]; for 5/10: [0.2366, 0.7634].
    lo, hi = wilson_interval(torch.tensor([0.0, 0.5]), torch.tensor([10, 10]))
    assert float(lo[0]) == pytest.approx(0.0, abs=1e-12) and float(hi[0]) == pytest.approx(0.2775, abs=1e-4)
    assert float(lo[1]) == pytest.approx(0.2366, abs=1e-4) and float(hi[1]) == pytest.approx(0.7634, abs=1e-4)


def test_success_estimate_resampling_and_real_valued_interval():
    scores = torch.tensor([[0.0, 1.0, 1.0, 1.0], [2.0, 4.0, 6.0, 8.0]], dtype=torch.float64)
    est = SuccessEstimate(torch.tensor([3, 4]), scores, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(est.mean, torch.tensor([0.75, 5.0], dtype=torch.float64))
    lo, hi = est.interval()
    # Real-valued scores: normal interval from the sample std (2.582) over sqrt(4).
    assert float(hi[1] - lo[1]) == pytest.approx(2 * 1.959964 * 2.5819889 / 2, rel=1e-5)
    reps = est.resample_means(500, torch.Generator().manual_seed(0))
    assert reps.shape == (500, 2)
    assert set(torch.unique(reps[:, 0] * 4).tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0}


def test_summarize_counts_undefined_and_covers_mean():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(400, generator=g, dtype=torch.float64) * 0.2 + 0.3
    values[:7] = float("nan")
    s = summarize(values, generator=g)
    assert s.n == 393 and s.n_undefined == 7
    assert s.lower < s.mean < s.upper
    assert s.lower < 0.3 < s.upper
    # Paired difference of a series with itself shifted by 0.1 is exactly 0.1 with a zero-width interval.
    d = paired_difference(values + 0.1, values, generator=g)
    assert d.mean == pytest.approx(0.1) and d.upper - d.lower == pytest.approx(0.0, abs=1e-12)
    empty = summarize([float("nan")] * 3)
    assert empty.n == 0 and empty.n_undefined == 3 and math.isnan(empty.mean)


def test_cluster_bootstrap_is_wider_for_correlated_nodes():
    # Ten rollouts, twenty identical nodes each: nodes are not independent, so the cluster interval must be wider.
    g = torch.Generator().manual_seed(1)
    per_rollout = torch.randn(10, generator=g, dtype=torch.float64)
    values = per_rollout.repeat_interleave(20)
    clusters = torch.arange(10).repeat_interleave(20).tolist()
    naive = summarize(values, generator=g)
    clustered = summarize(values, generator=g, clusters=clusters)
    assert clustered.upper - clustered.lower > 2 * (naive.upper - naive.lower)
