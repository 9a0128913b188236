"""Targeted rollouts: exact against enumeration, equal to plain decoding, and side-effect free."""

import random

import numpy as np
import pytest
import torch

from gad_callbacks import RolloutRequest, estimate_success, rollout_requests
from tests.conftest import tiny_model


EOS = 1


def parity_target(seq):
    """Success when the non-EOS tokens sum to a multiple of 3 (depends on the forced candidate and what follows)."""
    return float(sum(t for t in seq if t != EOS) % 3 == 0)


def exact_success(model, prefix, cand, max_new_tokens, temperature, target):
    """P(target = 1 | forced cand), by enumerating every continuation with its probability (plain forwards)."""
    if cand == EOS or max_new_tokens == 0:
        return target([cand])
    total, frontier = 0.0, [([cand], 1.0)]
    for step in range(max_new_tokens):
        ids = torch.tensor([list(prefix) + seq for seq, _ in frontier])
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=ids).logits[:, -1].double() / temperature, dim=-1)
        new = []
        for (seq, pr), row in zip(frontier, probs):
            for tok, pt in enumerate(row.tolist()):
                if tok == EOS or step == max_new_tokens - 1:
                    total += pr * pt * target(seq + [tok])
                else:
                    new.append((seq + [tok], pr * pt))
        frontier = new
    return total


def test_estimates_match_exact_enumeration():
    model = tiny_model("qwen2", vocab_size=6, logit_scale=4.0, dtype=torch.float64).eval()
    prefix = torch.tensor([2, 4, 3, 5, 2])
    cands = torch.arange(6)
    exact = torch.tensor([exact_success(model, prefix.tolist(), c, 3, 0.9, parity_target) for c in range(6)])
    assert 0.05 < float(exact[2:].min()) and float(exact[2:].max()) < 0.95, "toy task should be non-trivial"

    def score(conts):
        return [parity_target(c) for c in conts]

    est = estimate_success(
        model,
        prefix,
        cands,
        3000,
        3,
        score,
        temperature=0.9,
        eos_token_id=EOS,
        generator=torch.Generator().manual_seed(0),
    )
    lo, hi = est.interval(0.99)
    inside = (lo <= exact) & (exact <= hi)
    assert bool(inside.all()), (est.mean, exact, lo, hi)
    assert float((est.mean - exact).abs().max()) < 0.035
    assert est.count.tolist() == [3000] * 6
    # Forcing EOS ends the continuation at once: a single, deterministic outcome and no truncation.
    assert float(est.mean[EOS]) == parity_target([EOS]) and int(est.truncated[EOS]) == 0


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_batched_padded_decoding_equals_plain_greedy_decoding(kind):
    # At a vanishing temperature sampling is argmax, so every continuation must equal plain greedy decoding from a
    # full forward without any cache: this checks cache cropping, left padding, positions and row compaction.
    model = tiny_model(kind, vocab_size=32, logit_scale=300.0)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(2, 32, (30,), generator=g), torch.randint(2, 32, (25,), generator=g)]
    seen = {}

    def recorder(key):
        def score(conts):
            seen[key] = conts
            return [0.0] * len(conts)

        return score

    requests = [
        RolloutRequest(0, 10, torch.tensor([5, 2, 3]), recorder("a")),
        RolloutRequest(0, 20, torch.tensor([5, EOS]), recorder("b")),
        RolloutRequest(1, 25, torch.tensor([9, 4]), recorder("c")),
    ]
    eos = 4  # also an ordinary candidate of node "c", and frequent enough to finish rows early
    rollout_requests(model, seqs, requests, 3, 6, temperature=1e-4, eos_token_id=eos, generator=g, max_batch_rows=10)
    model.eval()
    for key, r in zip("abc", requests):
        prefix = seqs[r.sequence][: r.prefix_len].tolist()
        for j, cand in enumerate(r.candidates.tolist()):
            expected, ids = [cand], prefix + [cand]
            while cand != eos and len(expected) < 7 and expected[-1] != eos:
                with torch.no_grad():
                    nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                expected.append(nxt)
                ids.append(nxt)
            for k in range(3):
                assert seen[key][j * 3 + k] == expected, (key, cand)


def test_truncation_and_forced_eos_counts():
    model = tiny_model("qwen2", vocab_size=16)
    est = estimate_success(
        model, torch.tensor([3, 4, 5]), torch.tensor([EOS, 7]), 5, 0, lambda c: [0.0] * len(c), eos_token_id=EOS
    )
    assert est.truncated.tolist() == [0, 5]
    assert est.generated_tokens == 0


def test_side_effects_none_and_seed_determinism():
    model = tiny_model("qwen2", vocab_size=16)
    model.train()
    torch.manual_seed(123)
    random.seed(1)
    np.random.seed(2)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()

    def run(seed):
        return estimate_success(
            model,
            torch.tensor([3, 4, 5, 6]),
            torch.tensor([2, 7, 9]),
            16,
            5,
            lambda c: [float(len(c) % 2) for c in c],
            eos_token_id=EOS,
            generator=torch.Generator().manual_seed(seed),
        ).scores

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model.training
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


def test_a_request_with_its_own_generator_decodes_the_same_whatever_shares_its_batch():
    model = tiny_model("qwen2", vocab_size=16)
    sequences = [torch.tensor([3, 4, 5, 6, 7]), torch.tensor([8, 9, 2])]

    def decode(with_other, own):
        seen = {0: [], 1: []}

        def keep(i):
            return lambda c: seen[i].extend(c) or [0.0] * len(c)

        def request(i, prefix, cand, seed):
            g = torch.Generator().manual_seed(seed) if own else None
            return RolloutRequest(i, prefix, torch.tensor(cand), keep(i), generator=g)

        requests = ([request(1, 3, [4, 5, 6], 7)] if with_other else []) + [request(0, 5, [2, 9], 3)]
        shared = torch.Generator().manual_seed(0)
        rollout_requests(model, sequences, requests, 6, 5, eos_token_id=EOS, generator=shared)
        return seen[0]

    assert decode(with_other=True, own=True) == decode(with_other=False, own=True)
    # The shared generator's draws go to whichever rows come first: then the other request moves this one's.
    assert decode(with_other=True, own=False) != decode(with_other=False, own=False)


def test_score_errors_are_value_errors():
    model = tiny_model("qwen2", vocab_size=16)
    args = (model, torch.tensor([3, 4]), torch.tensor([2, 5]), 2, 2)

    def raising(conts):
        raise KeyError("answer")

    with pytest.raises(ValueError, match="score function raised KeyError"):
        estimate_success(*args, raising)
    with pytest.raises(ValueError, match="exactly one score per continuation"):
        estimate_success(*args, lambda c: [1.0])
    # NaN / None scores are unscorable continuations (missing samples, counted), not errors.
    for bad in (float("nan"), None):
        est = estimate_success(*args, lambda c, bad=bad: [bad] * len(c))
        assert est.count.tolist() == [0, 0] and est.unscorable.tolist() == [2, 2]
    with pytest.raises(ValueError, match="score"):
        estimate_success(*args, lambda c: ["yes"] * len(c))
    with pytest.raises(ValueError, match="empty"):
        estimate_success(model, torch.tensor([3, 4]), torch.tensor([], dtype=torch.long), 2, 2, lambda c: [])
    with pytest.raises(ValueError, match="Candidate ids"):
        estimate_success(model, torch.tensor([3, 4]), torch.tensor([99]), 2, 2, lambda c: [0.0] * len(c))


def test_per_node_budget_caps_continuations():
    model = tiny_model("qwen2", vocab_size=16)
    seq = torch.tensor([3, 4, 5, 6, 7, 8])
    lengths = {}

    def recorder(key):
        def score(conts):
            lengths[key] = [len(c) for c in conts]
            return [0.0] * len(conts)

        return score

    requests = [
        RolloutRequest(0, 3, torch.tensor([2, 9]), recorder("short"), max_new_tokens=2),
        RolloutRequest(0, 5, torch.tensor([2, 9]), recorder("long")),
    ]
    out = rollout_requests(model, [seq], requests, 4, 6, generator=torch.Generator().manual_seed(0))
    assert max(lengths["short"]) == 3 and max(lengths["long"]) == 7  # forced token + budget (no EOS configured)
    assert out[0].truncated.tolist() == [4, 4] and out[0].generated_tokens == 16
