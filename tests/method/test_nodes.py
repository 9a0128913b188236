"""Candidate sets and node selection strategies."""

import pytest
import torch

from gad_callbacks import candidate_set, select_nodes


def test_candidate_set_mass_cap_and_additions():
    probs = torch.tensor([0.5, 0.3, 0.12, 0.05, 0.02, 0.01])
    z = probs.log()
    assert candidate_set(z, mass=0.8).tolist() == [0, 1]
    assert candidate_set(z, mass=0.81).tolist() == [0, 1, 2]
    assert candidate_set(z, mass=0.99, max_candidates=2).tolist() == [0, 1]
    teacher = torch.zeros(6)
    teacher[5] = 10.0
    got = candidate_set(z, mass=0.8, sampled_token=4, teacher_logits=[teacher, teacher])
    assert got.tolist() == [0, 1, 4, 5]
    with pytest.raises(ValueError, match="vocabulary"):
        candidate_set(z, teacher_logits=[torch.zeros(7)])


@pytest.mark.parametrize("strategy", ["uniform", "entropy", "depth_windows"])
def test_select_nodes_distinct_sorted_in_range(strategy):
    g = torch.Generator().manual_seed(0)
    ent = torch.rand(100, generator=g)
    pos = select_nodes(100, 10, strategy, entropies=ent, generator=g)
    assert pos.numel() == 10
    assert torch.unique(pos).numel() == 10
    assert bool((pos[1:] > pos[:-1]).all()) and 0 <= int(pos.min()) and int(pos.max()) < 100
    assert select_nodes(5, 10, strategy, entropies=ent[:5], generator=g).tolist() == [0, 1, 2, 3, 4]


def test_depth_windows_cover_exponential_windows():
    pos = select_nodes(127, 7, "depth_windows", generator=torch.Generator().manual_seed(0))
    # One node in each window [2^i, 2^(i+1)) of 1-based depth.
    windows = sorted(int(torch.floor(torch.log2(p.float() + 1))) for p in pos)
    assert windows == list(range(7))


def test_entropy_strategy_skips_zero_entropy_positions():
    ent = torch.tensor([0.0, 1.0, 0.0, 2.0, 0.0])
    assert select_nodes(5, 5, "entropy", entropies=ent).tolist() == [1, 3]
    with pytest.raises(ValueError, match="entropies"):
        select_nodes(5, 2, "entropy")
    with pytest.raises(ValueError, match="strategy"):
        select_nodes(5, 2, "random")
