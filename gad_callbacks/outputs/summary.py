"""The per-teacher summary of a run as a terminal table: what `gad diagnose` / `gad report` print.

The numbers are the aggregator's ([`aggregate`]); this module only lays them out. Every cell is an estimate with its
interval at the run's confidence level and its counts: `n` nodes used, `u` nodes left out as undefined, `c` clusters
(questions or rollouts) the bootstrap resamples. An interval resting on fewer than two clusters is printed as
"no interval", never as a point. Each view shows the pooled alignment (noise-debiased: the number to compare
teachers by) next to the mean of node cosines (biased toward 0 by rollout noise, kept for continuity).
"""

import math

from ..method.stats import Summary
from .aggregate import RunAggregate, TeacherAggregate, aggregate, confidence_label


CELL = 42


def format_summary(s: Summary | None) -> str:
    """One cell: `+0.772 [+0.583, +0.926] n=41 u=87 c=16`, `... [no interval] ...` or `undefined n=0 u=12`."""
    if s is None:
        return ""
    counts = f"n={s.n} u={s.n_undefined}" + (f" c={s.clusters}" if s.clusters else "")
    if s.n == 0 or math.isnan(s.mean):
        return f"undefined {counts}"
    interval = f"[{s.lower:+.3f}, {s.upper:+.3f}]" if s.has_interval else "[no interval]"
    return f"{s.mean:+.3f} {interval} {counts}"


def legend(run: RunAggregate) -> str:
    """The one-line key to the table (and to the HTML report's)."""
    return (
        "read: pooled = noise-debiased alignment weighted by what is at stake at each node (flat nodes count 0), "
        "the number to compare teachers by; mean = mean of node cosines over defined nodes, biased toward 0 by "
        "rollout noise, kept for continuity; n = nodes used, u = undefined nodes left out, "
        f"c = {run.cluster_unit}s resampled; intervals: {confidence_label(run.confidence)} bootstrap over "
        f"{run.cluster_unit}s (no interval below two)"
    )


def summarize_teachers(
    rows: list[dict], confidence: float = 0.95, seed: int = 0, num_bootstrap: int = 1000
) -> list[TeacherAggregate]:
    """One [`TeacherAggregate`] per teacher, in the order teachers first appear in `rows` (see [`aggregate`])."""
    return aggregate(rows, confidence=confidence, seed=seed, num_bootstrap=num_bootstrap).teachers


def _block(title: str, run: RunAggregate, pick, extra=None) -> list[str]:
    """A view: one line per teacher with its pooled and mean cells (and optional extra columns)."""
    head = f"{'':<12} {'pooled':<{CELL}} {'mean':<{CELL}}"
    if extra is not None:
        head += f" {'>0':>5} {'TA':>7}"
    lines = [title, head.rstrip()]
    for t in run.teachers:
        pooled, mean = pick(t)
        if pooled is None and mean is None:
            continue
        line = f"{t.teacher:<12} {format_summary(pooled):<{CELL}} {format_summary(mean):<{CELL}}"
        if extra is not None:
            line += extra(t)
        lines.append(line.rstrip())
    return lines


def format_table(run: RunAggregate, rollouts: list[dict] | None = None) -> str:
    """
    A plain-text table for the terminal: per teacher, pooled and mean alignment over all nodes, on incorrect and on
    correct rollouts and in logit space, then the paired difference with the first teacher, then the legend.

    Args:
        run ([`RunAggregate`]): From [`aggregate`].
        rollouts (`list[dict]`, *optional*): Rollout rows, for the header line (the records' rollouts otherwise).
    """
    lines = []
    n_rollouts = len(rollouts) if rollouts else run.rollouts
    correct = sum(bool(r["correct"]) for r in rollouts) if rollouts else run.correct
    if n_rollouts:
        lines.append(
            f"{n_rollouts} rollouts diagnosed, {correct} correct ({correct / n_rollouts:.0%}); {run.nodes} nodes, "
            f"{run.rollouts_spent} targeted continuations decoded"
        )

    def extra(t):
        share, ta = t.positive_frac, t.advantage.mean
        return f" {'-' if math.isnan(share) else f'{share:.2f}':>5} {'-' if math.isnan(ta) else f'{ta:+.3f}':>7}"

    lines += _block("alignment (param space), all nodes", run, lambda t: (t.pooled, t.overall), extra)
    lines += _block("on incorrect rollouts", run, lambda t: (t.pooled_incorrect, t.incorrect))
    lines += _block("on correct rollouts", run, lambda t: (t.pooled_correct, t.correct))
    lines += _block("logit space, all nodes", run, lambda t: (t.pooled_logit, t.logit))
    if len(run.teachers) > 1:
        title = f"paired difference vs {run.teachers[0].teacher!r} on the same nodes"
        lines += _block(title, run, lambda t: (t.vs_first_pooled, t.vs_first))
    lines.append(legend(run) + "; >0 = share of defined nodes aligned > 0; TA = mean teacher advantage")
    return "\n".join(lines)
