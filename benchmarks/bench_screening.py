"""Screening against exact enumeration, over many seeds (issue #10): is pooled alignment still unbiased, what does
the roulette cost in variance, and what does it save in rollouts.

    python -m benchmarks.bench_screening            # ~5 min on one CPU thread
    python -m benchmarks.bench_screening --seeds 4

The node is node 0 of the close-rates LoRA world of `tests/method/test_calibration.py` (success rates 0.00-0.27:
a screen of one rollout per candidate is all wrong 40% of the time although the ideal is not flat, the case where
stopping can bias). Per seed, 600 independent diagnoses with real targeted rollouts, pooled per teacher and space
(3 x 2), for: no screening (0.3's default), screening with the roulette (the default: one rollout per candidate,
keep 1/4, weight 4), and plain early stopping (keep -> 0). Printed: the pooled error against the exact cosine (mean,
standard deviation and largest over seeds x teachers x spaces) and the rollouts spent relative to no screening.
"""

import argparse
import itertools
import statistics

import torch

from gad_callbacks import pooled_alignment
from tests.method.test_calibration import SPACES, World, repeat_first
from tests.method.test_screening import REPS, diagnose_node_zero


SETTINGS = [
    ("no screening", dict(screen_rollouts=0)),
    ("screening + roulette (default)", {}),
    ("plain early stopping", dict(screen_keep=1e-9)),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    world = World("llama", 1, 4.0, 0.7, 2, repeat_first, use_lora=True)
    errors = {label: [] for label, _ in SETTINGS}
    spent = {label: 0 for label, _ in SETTINGS}
    for seed in range(10_000, 10_000 + REPS * args.seeds, REPS):
        for label, cfg in SETTINGS:
            draws = diagnose_node_zero(world, REPS, seed, **cfg)
            spent[label] += sum(d.rollouts_spent for d in draws)
            g = torch.Generator().manual_seed(0)
            errors[label] += [
                pooled_alignment(draws, name, space=space, generator=g, num_bootstrap=10).mean
                - world.exact_cos(0, name, space)
                for name, space in itertools.product(world.losses, SPACES)
            ]
        print(f"seed {seed} done", flush=True)
    base = spent["no screening"]
    print(
        f"\n{args.seeds} seeds x {REPS} diagnoses of one node; error of pooled alignment vs exact, 3 teachers x 2 spaces"
    )
    print("| setting | mean error | sd | largest | rollouts vs no screening |")
    print("| --- | --- | --- | --- | --- |")
    for label, errs in errors.items():
        print(
            f"| {label} | {statistics.mean(errs):+.3f} | {statistics.pstdev(errs):.3f} | "
            f"{max(map(abs, errs)):.3f} | {spent[label] / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
