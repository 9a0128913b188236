"""The per-teacher summary of a run: what `gad diagnose` / `gad report` print and the HTML report shows.

Every number carries its interval and its count. Intervals resample whole rollouts (nodes of a rollout are
correlated). Teachers are compared on the same nodes: the paired difference of each teacher against the first one
uses only nodes where both are defined.
"""

import math
from dataclasses import dataclass

import torch

from ..method.stats import Summary, paired_difference, summarize


@dataclass
class TeacherSummary:
    teacher: str
    overall: Summary
    correct: Summary
    incorrect: Summary
    logit: Summary
    positive_frac: float
    advantage: float
    vs_first: Summary | None


def _cos(rows, key="param_cos"):
    return [r[key] for r in rows]


def summarize_teachers(rows: list[dict], confidence: float = 0.95, seed: int = 0) -> list[TeacherSummary]:
    """One [`TeacherSummary`] per teacher, in the order teachers first appear in `rows`."""
    teachers = list(dict.fromkeys(r["teacher"] for r in rows))
    gen = torch.Generator().manual_seed(seed)

    def s(part, key="param_cos"):
        return summarize(
            _cos(part, key), confidence=confidence, generator=gen, clusters=[r["rollout_id"] for r in part]
        )

    # Paired comparison: key every row by its node so two teachers are matched on the very same nodes.
    def node(r):
        return (r["step"], r["rollout_id"], r["position"])

    first = {node(r): r["param_cos"] for r in rows if r["teacher"] == teachers[0]} if teachers else {}
    out = []
    for t in teachers:
        part = [r for r in rows if r["teacher"] == t]
        defined = [c for c in _cos(part) if not math.isnan(c)]
        adv = [r["advantage"] for r in part if not math.isnan(r["advantage"])]
        vs = None
        if t != teachers[0]:
            mine = [r["param_cos"] for r in part]
            theirs = [first.get(node(r), math.nan) for r in part]
            vs = paired_difference(mine, theirs, confidence=confidence, generator=gen)
        out.append(
            TeacherSummary(
                teacher=t,
                overall=s(part),
                correct=s([r for r in part if r["correct"]]),
                incorrect=s([r for r in part if not r["correct"]]),
                logit=s(part, "logit_cos"),
                positive_frac=sum(c > 0 for c in defined) / len(defined) if defined else math.nan,
                advantage=sum(adv) / len(adv) if adv else math.nan,
                vs_first=vs,
            )
        )
    return out


def _fmt(s: Summary) -> str:
    if s.n == 0:
        return f"undefined (n=0, undef={s.n_undefined})"
    if s.n == 1:
        return f"{s.mean:+.3f} (n=1)"
    return f"{s.mean:+.3f} [{s.lower:+.3f}, {s.upper:+.3f}] n={s.n}"


def format_table(summaries: list[TeacherSummary], rollouts: list[dict] | None = None) -> str:
    """A plain-text table for the terminal."""
    lines = []
    if rollouts:
        correct = sum(bool(r["correct"]) for r in rollouts)
        lines.append(f"{len(rollouts)} rollouts diagnosed, {correct} correct ({correct / len(rollouts):.0%})")
    head = f"{'teacher':<12} {'alignment (param space)':<36} {'on incorrect rollouts':<36} {'on correct rollouts':<36} {'>0':>5} {'undef':>6} {'TA':>7}"
    lines += [head, "-" * len(head)]
    for s in summaries:
        lines.append(
            f"{s.teacher:<12} {_fmt(s.overall):<36} {_fmt(s.incorrect):<36} {_fmt(s.correct):<36} "
            f"{s.positive_frac:>5.2f} {s.overall.n_undefined:>6d} {s.advantage:>+7.3f}"
        )
    paired = [s for s in summaries if s.vs_first is not None]
    if paired:
        lines.append(f"paired difference vs {summaries[0].teacher!r} on the same nodes:")
        for s in paired:
            lines.append(f"  {s.teacher:<10} {_fmt(s.vs_first)}")
    lines.append(
        "intervals: 95% bootstrap over rollouts; n = nodes where the cosine is defined; undef = undefined nodes"
    )
    return "\n".join(lines)
