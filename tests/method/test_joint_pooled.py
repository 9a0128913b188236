"""Joint bootstrap of several teachers' pooled alignments, and the probability of being best drawn from it."""

import math

import torch

from gad_callbacks.method.stats import best_probabilities, joint_pooled, percentile_interval, pooled_ratio


def world(seed, n_clusters=10, per_cluster=4, means=(0.2, 0.5, 0.0)):
    """Per-node projection terms of a few teachers around given means, and positive squared ideal norms."""
    g = torch.Generator().manual_seed(seed)
    n = n_clusters * per_cluster
    shared = torch.randn(n, generator=g, dtype=torch.float64)  # the node's own luck, common to every teacher
    proj = torch.stack([m + 0.6 * shared + 0.4 * torch.randn(n, generator=g, dtype=torch.float64) for m in means])
    norm2 = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    clusters = [i // per_cluster for i in range(n)]
    weights = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    return proj, norm2, clusters, weights


def test_points_and_single_teacher_intervals_are_pooled_ratios():
    proj, norm2, clusters, weights = world(0)
    proj[2, 5:9] = float("nan")  # a teacher undefined at a few nodes pools its own defined nodes
    points, reps = joint_pooled(
        proj, norm2, clusters=clusters, weights=weights, num_bootstrap=300, generator=torch.Generator().manual_seed(3)
    )
    assert reps.shape == (300, 3)
    for t in range(3):
        alone = pooled_ratio(proj[t], norm2, clusters=clusters, weights=weights, num_bootstrap=300)
        assert math.isclose(points[t].item(), alone.mean, rel_tol=1e-12)
    # A teacher defined everywhere: the same clusters drawn by the same generator give the same interval.
    alone = pooled_ratio(
        proj[0],
        norm2,
        clusters=clusters,
        weights=weights,
        num_bootstrap=300,
        generator=torch.Generator().manual_seed(3),
    )
    lo, hi = percentile_interval(reps[:, 0], 0.95)
    assert math.isclose(lo.item(), alone.lower, rel_tol=1e-9) and math.isclose(hi.item(), alone.upper, rel_tol=1e-9)


def test_pairing_is_kept_and_ties_are_shared():
    proj, norm2, clusters, weights = world(1)
    twin = torch.cat([proj[:1], proj[:1]])
    _, reps = joint_pooled(twin, norm2, clusters=clusters, weights=weights, num_bootstrap=200)
    assert torch.equal(reps[:, 0], reps[:, 1])  # the same nodes resampled for both, replicate by replicate
    assert best_probabilities(reps).tolist() == [0.5, 0.5]
    # Below two clusters there is nothing to resample.
    points, reps = joint_pooled(proj, norm2, clusters=[0] * norm2.numel())
    assert reps.shape == (0, 3) and not bool(torch.isnan(points).any())
    assert bool(torch.isnan(best_probabilities(torch.full((4, 2), float("nan")))).all())


def test_probability_of_being_best_is_calibrated_over_many_worlds():
    """Truths drawn from a prior; among worlds where teacher A gets P(best) in a band, A is truly better about that
    often. A clear difference gives P(best) near 1 whatever the noise of the pairing."""
    gen = torch.Generator().manual_seed(0)
    probs, truths = [], []
    for seed in range(300):
        delta = float(torch.randn(1, generator=gen)) * 0.15
        proj, norm2, clusters, weights = world(seed, means=(delta, 0.0))
        truth_a, truth_b = (
            float((m * weights).sum() / math.sqrt(len(norm2) * (weights * norm2).sum())) for m in (delta, 0.0)
        )
        _, reps = joint_pooled(proj, norm2, clusters=clusters, weights=weights, num_bootstrap=200, generator=gen)
        probs.append(float(best_probabilities(reps)[0]))
        truths.append(truth_a > truth_b)
    for low, high in ((0.0, 0.2), (0.2, 0.8), (0.8, 1.01)):
        band = [t for p, t in zip(probs, truths, strict=True) if low <= p < high]
        assert len(band) >= 20, (low, high, len(band))
        share = sum(band) / len(band)
        centre = sum(p for p in probs if low <= p < high) / len(band)
        assert abs(share - centre) < 0.1, (low, high, share, centre)  # measured: 0.02, 0.05, 0.004
    _, reps = joint_pooled(*world(7, means=(0.8, 0.0))[:2], clusters=world(7)[2], num_bootstrap=200)
    assert best_probabilities(reps)[0] > 0.99
