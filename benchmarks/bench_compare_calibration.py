"""`gad compare`'s and the router's statistics against exact enumeration: pair intervals and P(best).

    python -m benchmarks.bench_compare_calibration [--pools 100] [--threads 1]

On the tiny worlds of `bench_calibration.py` (every candidate's success probability enumerated exactly; four
teachers per world: random and oracle-ish logits under two losses), many independent pools of simulated diagnoses
(8 Bernoulli scores per candidate drawn from the exact probabilities, each diagnosis its own cluster) are scored as
`gad compare` scores a run:
- every pair's paired difference of pooled alignment (`pooled_ratio` of the projection differences on the same
  nodes): how often its 95% interval covers the exact difference of the two exact pooled alignments, and how often it
  is "resolved" with the wrong sign;
- every teacher's P(best) (`joint_pooled` + `best_probabilities`, the router's Thompson probabilities): among the
  (pool, teacher) cases where it says p, how often the teacher is the exact best.
Pools of 2 and 8 diagnoses per node (8 and 32 clusters), parameter space.
"""

import argparse
import time

import torch

from benchmarks.bench_calibration import build_world, draw, exact_pooled, fast_terms, settings
from gad_callbacks.method.stats import best_probabilities, joint_pooled, pooled_ratio


BANDS = ((0.0, 0.05), (0.05, 0.35), (0.35, 0.65), (0.65, 0.95), (0.95, 1.01))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pools", type=int, default=100, help="independent pools per world and pool size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g, g_aux = torch.Generator().manual_seed(args.seed), torch.Generator().manual_seed(args.seed + 10**6)
    start = time.perf_counter()
    worlds = [build_world(s) for s in settings()]
    print(f"{len(worlds)} exact worlds built ({time.perf_counter() - start:.0f} s); {args.pools} pools per size")
    print(f"{'diagnoses/node':>14}{'pairs':>8}{'covered':>9}{'no CI':>7}{'resolved':>10}{'wrong sign':>11}")
    calibration = []  # (P(best), teacher is the exact best)
    for per_node in (2, 8):
        covered = total = no_interval = resolved = wrong = 0
        for w in worlds:
            ids = [i for _ in range(per_node) for i in range(len(w.sequences))]
            rho = torch.tensor([exact_pooled(w, name, "param", ids) for name in w.names])
            for _ in range(args.pools):
                terms = [fast_terms(w, i, draw(w, i, 8, g), "param") for i in ids]
                proj = torch.stack([t[0] for t in terms]).T  # [T, N]
                norm2 = [t[1] for t in terms]
                _, reps = joint_pooled(proj, norm2, num_bootstrap=400, generator=g_aux)
                if reps.shape[0]:
                    p_best = best_probabilities(reps)
                    if not bool(torch.isnan(p_best).any()):
                        best = int(rho.argmax())
                        calibration += [(float(p), t == best) for t, p in enumerate(p_best)]
                for a in range(len(w.names)):
                    for b in range(a + 1, len(w.names)):
                        d = pooled_ratio(proj[a] - proj[b], norm2, num_bootstrap=400, generator=g_aux)
                        exact = float(rho[a] - rho[b])
                        total += 1
                        if not d.has_interval:
                            no_interval += 1
                            continue
                        covered += d.lower <= exact <= d.upper
                        if d.lower > 0 or d.upper < 0:
                            resolved += 1
                            wrong += (d.mean > 0) != (exact > 0)
        print(
            f"{per_node:>14}{total:>8}{covered / max(total - no_interval, 1):>9.3f}{no_interval:>7}"
            f"{resolved / total:>10.3f}{wrong / max(resolved, 1):>11.3f}"
        )
    print("(covered: share of pair intervals holding the exact difference, of those defined; wrong sign: of resolved)")
    print(f"\nP(best) against the exact best, {len(calibration)} (pool, teacher) cases")
    print(f"{'P(best) band':>14}{'cases':>8}{'mean P':>8}{'truly best':>11}")
    for low, high in BANDS:
        band = [(p, t) for p, t in calibration if low <= p < high]
        if band:
            mean_p = sum(p for p, _ in band) / len(band)
            share = sum(t for _, t in band) / len(band)
            print(f"{f'[{low:.2f}, {min(high, 1.0):.2f}]':>14}{len(band):>8}{mean_p:>8.3f}{share:>11.3f}")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
