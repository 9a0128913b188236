"""Scalar metrics of a pause, from its records: per teacher, with intervals and counts.

Means are over defined nodes; every mean comes with its node count and, for the headline alignment, a bootstrap
interval that resamples whole rollouts (nodes of one rollout are correlated). Metric keys are `gad/...`, which the
Trainer's TensorBoard callback shows as `train/gad/...`.
"""

import math

import torch

from ..method.stats import summarize


POSITION_BUCKETS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def teacher_metrics(rows: list[dict], teacher: str, confidence: float, generator: torch.Generator) -> dict[str, float]:
    rows = [r for r in rows if r["teacher"] == teacher]
    key = f"gad/alignment/{teacher}"
    cos = [r["param_cos"] for r in rows]
    s = summarize(cos, confidence=confidence, generator=generator, clusters=[r["rollout_id"] for r in rows])
    defined = [c for c in cos if not math.isnan(c)]
    out = {
        key: s.mean,
        f"{key}/ci_low": s.lower,
        f"{key}/ci_high": s.upper,
        f"{key}/nodes": float(s.n),
        f"{key}/undefined": float(s.n_undefined),
        f"{key}/positive_frac": (sum(c > 0 for c in defined) / len(defined)) if defined else math.nan,
        f"{key}/logit": _mean(r["logit_cos"] for r in rows),
        f"{key}/restricted": _mean(r["restricted_cos"] for r in rows),
        f"{key}/outside_share": _mean(r["outside_share"] for r in rows),
        f"{key}/rollout": _mean({r["rollout_id"]: r["rollout_param_cos"] for r in rows}.values()),
        f"gad/advantage/{teacher}": _mean(r["advantage"] for r in rows),
    }
    for label, flag in (("correct", True), ("incorrect", False)):
        part = [r["param_cos"] for r in rows if bool(r["correct"]) == flag]
        out[f"{key}/{label}"] = _mean(part)
        out[f"{key}/{label}_nodes"] = float(sum(not math.isnan(c) for c in part))
    for lo, hi in POSITION_BUCKETS:
        part = [
            r["param_cos"] for r in rows if lo <= r["rel_position"] < hi or (hi == 1.0 and r["rel_position"] == 1.0)
        ]
        out[f"{key}/pos_{int(lo * 100):02d}_{int(hi * 100)}"] = _mean(part)
    return out


def pause_metrics(result, teachers: list[str], confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Every scalar of one pass ([`PassResult`]); `nan` where nothing was defined (a gap, not a fake 0)."""
    generator = torch.Generator().manual_seed(seed)
    rows = result.rows
    out: dict[str, float] = {}
    for teacher in teachers:
        out.update(teacher_metrics(rows, teacher, confidence, generator))
    per_teacher = max(len(teachers), 1)
    out["gad/rollouts"] = float(len(result.rollouts))
    out["gad/correct_frac"] = _mean(float(r["correct"]) for r in result.rollouts)
    out["gad/nodes"] = float(len(rows) // per_teacher)
    out["gad/targeted_rollouts"] = float(
        sum(len(r["candidates"]) * r["targeted_per_candidate"] for r in rows) // per_teacher
    )
    for reason, count in result.skipped.items():
        out[f"gad/skipped/{reason}"] = float(count)
    return out
