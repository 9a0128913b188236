"""Scalar metrics of a pause, from its records: per teacher, with intervals and counts.

Every number is read from the one aggregator ([`aggregate`]), so TensorBoard, the terminal table and the HTML report
agree on the same records. Metric keys are `gad/...`, which the Trainer's TensorBoard callback shows as
`train/gad/...`. Per teacher `<t>`:

- `gad/alignment/<t>`: mean of node cosines (parameter space), with `/ci_low`, `/ci_high`, `/nodes`, `/undefined`,
  `/clusters`; the same (mean, `/ci_low`, `/ci_high`, `/nodes`) for `/correct`, `/incorrect`, `/logit` and
  `/pos_00_25` ... `/pos_75_100`; plain means `/positive_frac`, `/restricted`, `/outside_share`, `/rollout`;
  `/correct_nodes`, `/incorrect_nodes` (kept for existing dashboards).
- `gad/pooled/<t>`: pooled alignment (the noise-debiased number), with the same interval and counts, and
  `/logit`, `/correct`, `/incorrect`, `/logit/correct`, `/logit/incorrect`.
- `gad/paired/<t>`, `gad/paired/<t>/pooled`: difference with the first teacher on the same nodes.
- `gad/advantage/<t>`: mean teacher advantage.
- `gad/proxy/<t>/<statistic>`: Spearman rank correlation, over the pause's nodes, of a cheap statistic (teacher-student
  KL both ways, JS, total variation, probability cosine, the two entropies, relative position) with the node's
  parameter-space cosine, with `/ci_low`, `/ci_high` (cluster bootstrap) and `/nodes`.

Per pause: `gad/nodes`, `gad/targeted_rollouts`, `gad/rollouts_spent` (`_per_node`), `gad/screened_out` (nodes
stopped after their screening rollouts). Means and pooled sums weigh each node by its `pool_weight`.

Undefined numbers are NaN (the caller drops them: a gap in the chart, not a fake 0).
"""

import math

from ..method.proxies import PROXIES
from ..method.stats import Summary, rank_correlation
from ..method.streams import stream
from .aggregate import RunAggregate, TeacherAggregate, aggregate, cluster_labels
from .records import to_node_records


def summary_metrics(key: str, summary: Summary, counts: bool = False) -> dict[str, float]:
    """`key` (the estimate), `key/ci_low`, `key/ci_high`, `key/nodes`; with `counts`, `key/undefined` and
    `key/clusters` as well."""
    out = {
        key: summary.mean,
        f"{key}/ci_low": summary.lower,
        f"{key}/ci_high": summary.upper,
        f"{key}/nodes": float(summary.n),
    }
    if counts:
        out[f"{key}/undefined"] = float(summary.n_undefined)
        out[f"{key}/clusters"] = float(summary.clusters or 0)
    return out


def teacher_metrics(agg: TeacherAggregate) -> dict[str, float]:
    """Every scalar of one teacher (see the module docstring for the keys)."""
    t = agg.teacher
    key, pooled = f"gad/alignment/{t}", f"gad/pooled/{t}"
    out = summary_metrics(key, agg.overall, counts=True)
    out.update(summary_metrics(f"{key}/correct", agg.correct))
    out.update(summary_metrics(f"{key}/incorrect", agg.incorrect))
    out[f"{key}/correct_nodes"] = float(agg.correct.n)
    out[f"{key}/incorrect_nodes"] = float(agg.incorrect.n)
    out.update(summary_metrics(f"{key}/logit", agg.logit))
    for label, summary in agg.positions.items():
        out.update(summary_metrics(f"{key}/{label}", summary))
    out[f"{key}/positive_frac"] = agg.positive_frac
    out[f"{key}/restricted"] = agg.restricted
    out[f"{key}/outside_share"] = agg.outside_share
    out[f"{key}/rollout"] = agg.rollout.mean
    out[f"gad/advantage/{t}"] = agg.advantage.mean
    out.update(summary_metrics(pooled, agg.pooled, counts=True))
    out.update(summary_metrics(f"{pooled}/correct", agg.pooled_correct))
    out.update(summary_metrics(f"{pooled}/incorrect", agg.pooled_incorrect))
    out.update(summary_metrics(f"{pooled}/logit", agg.pooled_logit))
    out.update(summary_metrics(f"{pooled}/logit/correct", agg.pooled_logit_correct))
    out.update(summary_metrics(f"{pooled}/logit/incorrect", agg.pooled_logit_incorrect))
    if agg.vs_first is not None:
        out.update(summary_metrics(f"gad/paired/{t}", agg.vs_first, counts=True))
        out.update(summary_metrics(f"gad/paired/{t}/pooled", agg.vs_first_pooled, counts=True))
    return out


def run_metrics(run: RunAggregate) -> dict[str, float]:
    """Every per-teacher scalar of an aggregate, plus what the records cost."""
    out: dict[str, float] = {}
    for agg in run.teachers:
        out.update(teacher_metrics(agg))
    out["gad/nodes"] = float(run.nodes)
    out["gad/targeted_rollouts"] = float(run.targeted_rollouts)
    out["gad/rollouts_spent"] = float(run.rollouts_spent)
    out["gad/rollouts_spent_per_node"] = run.rollouts_spent / run.nodes if run.nodes else math.nan
    out["gad/screened_out"] = float(run.screened_out)
    return out


def pause_metrics(
    result, teachers: list[str], confidence: float = 0.95, seed: int = 0, num_bootstrap: int = 1000
) -> dict[str, float]:
    """
    Every scalar of one pass ([`PassResult`]); `nan` where nothing was defined (a gap, not a fake 0).

    Args:
        result ([`PassResult`]): The pass: node rows, rollout rows, counted skips.
        teachers (`list[str]`): Teachers in display order; the first is the reference of paired differences.
        confidence (`float`, *optional*, defaults to `0.95`): Level of every interval.
        seed (`int`, *optional*, defaults to `0`): Seed of the bootstraps.
        num_bootstrap (`int`, *optional*, defaults to `1000`): Bootstrap replicates per interval.

    `gad/targeted_rollouts` counts the continuation outcomes the success estimates use (a rollout's own outcome
    reused at its node included); `gad/rollouts_spent` the targeted continuations actually decoded, and
    `gad/rollouts_spent_per_node` their mean per node.
    """
    run = aggregate(
        result.rows, teachers, confidence=confidence, seed=seed, num_bootstrap=num_bootstrap, questions=False
    )
    out = run_metrics(run)
    out.update(proxy_metrics(result.rows, teachers, confidence=confidence, seed=seed, num_bootstrap=num_bootstrap))
    out["gad/rollouts"] = float(len(result.rollouts))
    correct = [float(r["correct"]) for r in result.rollouts]
    out["gad/correct_frac"] = sum(correct) / len(correct) if correct else math.nan
    for reason, count in result.skipped.items():
        out[f"gad/skipped/{reason}"] = float(count)
    return out


def proxy_metrics(rows, teachers: list[str], *, confidence=0.95, seed=0, num_bootstrap=1000) -> dict[str, float]:
    """
    How well each cheap statistic ranks the nodes as their alignment does: `gad/proxy/<t>/<statistic>` (see the module
    docstring), nodes weighted by `pool_weight` as in every mean. The target is the node cosine as estimated, whose
    rollout noise mostly weakens these correlations (a weak one understates what the statistic tells about the true
    alignment), but whose attenuation also varies by node (more where the ideal is small next to its noise): a
    statistic tied to that (an entropy, say) can correlate with the estimated cosine for that reason too.
    """
    records = to_node_records(rows)
    labels, _ = cluster_labels(records)
    out = {}
    for teacher in teachers:
        mine = [(r, c) for r, c in zip(records, labels, strict=True) if r.teacher == teacher]
        alignment = [r.param_cos for r, _ in mine]
        for name in PROXIES:
            summary = rank_correlation(
                [getattr(r, name) for r, _ in mine],
                alignment,
                clusters=[c for _, c in mine],
                weights=[r.pool_weight for r, _ in mine],
                confidence=confidence,
                num_bootstrap=num_bootstrap,
                generator=stream(seed, "proxy", teacher, name),
            )
            out.update(summary_metrics(f"gad/proxy/{teacher}/{name}", summary))
    return out
