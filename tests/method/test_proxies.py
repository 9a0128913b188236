"""Cheap statistics of a node and their rank correlation with alignment: against SciPy, and the interval's coverage
over many simulated pauses."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy, spearmanr

from gad_callbacks.method.proxies import NODE_PROXIES, cheap_statistics
from gad_callbacks.method.stats import _weighted_spearman, rank_correlation


def test_cheap_statistics_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    z, zq, temperature = torch.randn(50, generator=g) * 2, torch.randn(50, generator=g) * 2, 0.7
    got = cheap_statistics(z, zq, temperature)
    p = torch.softmax(z.double() / temperature, -1).numpy()
    q = torch.softmax(zq.double() / temperature, -1).numpy()
    assert got["kl_student_teacher"] == pytest.approx(entropy(p, q), rel=1e-10)
    assert got["kl_teacher_student"] == pytest.approx(entropy(q, p), rel=1e-10)
    assert got["js_divergence"] == pytest.approx(jensenshannon(p, q) ** 2, rel=1e-8)
    assert got["total_variation"] == pytest.approx(0.5 * np.abs(p - q).sum(), rel=1e-10)
    assert got["prob_cosine"] == pytest.approx(p @ q / np.linalg.norm(p) / np.linalg.norm(q), rel=1e-10)
    assert got["student_entropy"] == pytest.approx(entropy(p), rel=1e-10)
    assert got["teacher_entropy"] == pytest.approx(entropy(q), rel=1e-10)
    # Tokens the student can never emit (-inf logits, a masked vocabulary) contribute nothing, not NaN.
    masked = z.clone()
    masked[:10] = -float("inf")
    assert all(math.isfinite(v) for v in cheap_statistics(masked, zq, temperature).values() if v != float("inf"))
    assert math.isfinite(cheap_statistics(masked, zq, temperature)["student_entropy"])
    same = cheap_statistics(z, z, temperature)
    assert same["kl_student_teacher"] == 0.0 and same["prob_cosine"] == pytest.approx(1.0)
    # A teacher with another tokenizer has no distribution over the student's tokens: only the student's entropy.
    alone = cheap_statistics(z, None, temperature)
    assert alone["student_entropy"] == pytest.approx(entropy(p))
    assert all(math.isnan(alone[k]) for k in NODE_PROXIES if k != "student_entropy")


def test_rank_correlation_is_spearman_on_the_defined_pairs_ties_included():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 40).astype(float)  # many ties
    y = x + rng.normal(size=40)
    x[3], y[7] = np.nan, np.nan
    got = rank_correlation(x, y, num_bootstrap=50)
    keep = ~(np.isnan(x) | np.isnan(y))
    assert got.mean == pytest.approx(spearmanr(x[keep], y[keep]).statistic, abs=1e-12)
    assert (got.n, got.n_undefined) == (38, 2)
    # A bootstrap replicate weighs each value by how often it was drawn: the same as Spearman of the expanded sample.
    w = rng.integers(0, 4, 38).astype(float)
    expanded = spearmanr(np.repeat(x[keep], w.astype(int)), np.repeat(y[keep], w.astype(int))).statistic
    weighted = _weighted_spearman(torch.tensor(x[keep]), torch.tensor(y[keep]), torch.tensor(w)[None])
    assert float(weighted[0]) == pytest.approx(expanded, abs=1e-12)
    # Weights per pair (pool_weight) in the point estimate: the same as repeating each pair that many times.
    full_w = np.ones(40)
    full_w[keep] = w
    assert rank_correlation(x, y, weights=full_w, num_bootstrap=50).mean == pytest.approx(expanded, abs=1e-12)


def test_rank_correlation_interval_covers_the_true_value_at_about_its_level():
    # Bivariate normal with correlation r: Spearman's rho is (6 / pi) asin(r / 2). 300 simulated "pauses" of 60 nodes
    # in 20 clusters (3 nodes each, sharing a cluster effect): the cluster-bootstrap 95% interval should cover it
    # about 95% of the time.
    r, hits, trials = 0.5, 0, 300
    truth = 6 / math.pi * math.asin(r / 2)
    rng = np.random.default_rng(1)
    for seed in range(trials):
        cluster = np.repeat(np.arange(20), 3)
        a = rng.normal(size=60) * 0.8 + rng.normal(size=20)[cluster] * 0.6
        b = r * a + math.sqrt(1 - r**2) * (rng.normal(size=60) * 0.8 + rng.normal(size=20)[cluster] * 0.6)
        s = rank_correlation(
            a, b, clusters=cluster.tolist(), num_bootstrap=400, generator=torch.Generator().manual_seed(seed)
        )
        hits += s.lower <= truth <= s.upper
    assert 0.91 <= hits / trials <= 0.99, hits / trials  # +-3 standard errors around 0.95
