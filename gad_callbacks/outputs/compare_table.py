"""The teacher comparison as text: the table `gad compare` prints (also at the end of `gad diagnose` / `gad report`)
and the plain-English answer the HTML report shows too.

The numbers are [`compare`]'s; this module lays them out. Cells are [`format_summary`]'s (estimate, interval, `n`
nodes used, `u` undefined, `c` clusters), so every number carries its counts; "no interval" is never printed as a
verdict.
"""

import math

from .aggregate import confidence_label
from .compare import NO_INTERVAL, NOT_RESOLVED, RESOLVED, Comparison, Pair, SliceComparison, power_factor
from .summary import CELL, format_summary


# Between adjacent places of a slice's ranking.
_SYMBOL = {RESOLVED: ">", NOT_RESOLVED: "~", NO_INTERVAL: "?"}


def format_p_best(value: float) -> str:
    """P(best) as printed: a share of bootstrap replicates says at most that it is beyond 0.99 (or below 0.01)."""
    if math.isnan(value):
        return "-"
    return ">0.99" if value >= 0.995 else "<0.01" if value < 0.005 else f"{value:.2f}"


def _symbol(pair: Pair) -> str:
    # Teachers are ranked on their own defined nodes, pairs on the nodes both define: on different nodes a resolved
    # difference can point against the ranking's order, and is then shown as it is.
    if pair.verdict == RESOLVED and pair.difference.mean < 0:
        return "<"
    return _SYMBOL[pair.verdict]


def ranking_chain(s: SliceComparison) -> str:
    """`teacher +0.289 ~ solution +0.239 > answer +0.121`: the ranking with the verdict between adjacent places."""
    parts, steps = [], s.adjacent()
    for i, r in enumerate(s.ranking):
        value = "undefined" if math.isnan(r.pooled.mean) else f"{r.pooled.mean:+.3f}"
        if i:
            parts.append(_symbol(steps[i - 1]))
        parts.append(f"{r.teacher} {value}")
    return " ".join(parts)


def _interval(pair: Pair) -> str:
    d = pair.difference
    return f"{d.mean:+.3f} [{d.lower:+.3f}, {d.upper:+.3f}]" if d.has_interval else format_summary(d)


def _more(pair: Pair, unit: str) -> str:
    """What it would take to resolve an unresolved pair, in words."""
    if pair.more_rollouts is None:
        return "its difference is about 0: no number of rollouts can be estimated to resolve it"
    extra = "" if unit == "rollout" else f" ({pair.more_clusters} more {unit}s)"
    return f"about {pair.more_rollouts} more diagnosed rollouts{extra} would resolve it"


def _pair_sentence(pair: Pair, unit: str) -> str:
    head = f"{pair.higher} vs {pair.lower}: "
    if pair.verdict == NO_INTERVAL:
        return head + f"no interval (fewer than two {unit}s, or an undefined pool)."
    text = head + f"{_interval(pair)}, {pair.verdict}"
    return text + (f"; {_more(pair, unit)}." if pair.verdict == NOT_RESOLVED else ".")


def plain_answer(comp: Comparison) -> str:
    """
    One paragraph: which teacher is best and how sure (P(best), and whether the lead over the second is resolved),
    each step down the ranking resolved or not with what would resolve it, and the slices where another teacher
    ranks first.
    """
    overall, unit = comp.overall, comp.cluster_unit
    ranked = [r for r in overall.ranking if not math.isnan(r.pooled.mean)]
    if not ranked:
        return "No teacher has a defined pooled alignment on these records: nothing to rank (see the counts)."
    top, adjacent = ranked[0], overall.adjacent()
    if len(overall.ranking) == 1:
        return f"Only one teacher, {top.teacher} ({format_summary(top.pooled)}): nothing to compare."
    if adjacent[0].verdict == RESOLVED and adjacent[0].difference.mean > 0:
        parts = [f"Best: {top.teacher} (P(best) {format_p_best(top.p_best)})."]
    else:
        parts = [f"Best: not resolved; {top.teacher} leads (P(best) {format_p_best(top.p_best)})."]
    parts += [_pair_sentence(p, unit) for p in adjacent]
    if comp.closest is not None:
        parts.append(f"Closest pair: {comp.closest.higher} vs {comp.closest.lower}.")
    elif all(p.verdict == RESOLVED for p in adjacent):
        parts.append("Every step of the ranking is resolved.")
    if any(p.verdict == NOT_RESOLVED and p.more_rollouts is not None for p in adjacent):
        parts.append(
            f"Rollout estimates assume the interval narrows as 1/sqrt({unit}s) and the difference stays at its "
            f"estimate: even odds of resolving; about {power_factor(comp.confidence):.1f}x as many for 4-in-5 odds."
        )
    others = [s for s in comp.slices if s.ranking and s.ranking[0].teacher != top.teacher]
    if not others:
        parts.append(f"{top.teacher} also ranks first in every slice.")
    else:
        shown = []
        for s in others:
            first = s.ranking[0]
            vs = next(p for p in s.pairs if (p.higher, p.lower) == (first.teacher, top.teacher))
            shown.append(f"{s.label} ({first.teacher}, {vs.verdict} from {top.teacher})")
        parts.append("Another teacher ranks first on: " + "; ".join(shown) + ".")
    return " ".join(parts)


def comparison_legend(comp: Comparison) -> str:
    """The one-line key to the comparison (terminal and HTML)."""
    return (
        "read: pooled = noise-debiased alignment (param space) over each teacher's defined nodes, ranked; "
        "P(best) = share of joint bootstrap replicates (the same "
        f"{comp.cluster_unit}s for all teachers) in which it is highest; pairs: higher - lower on the nodes both "
        f"define, {confidence_label(comp.confidence)} bootstrap over {comp.cluster_unit}s, not adjusted for the "
        "number of pairs; resolved = the interval excludes 0; pass = the student's pass rate on the question over "
        f"its diagnosed rollouts; n = nodes, u = undefined, c = {comp.cluster_unit}s, r = rollouts"
    )


def format_comparison(comp: Comparison) -> str:
    """
    The comparison as a plain-text block: the ranking with P(best), every pair with its verdict, one line per slice
    (its ranking, `>` resolved / `~` no significant difference / `?` no interval between adjacent places), the
    plain-English answer, and the legend.
    """
    overall = comp.overall
    width = max(12, *(len(r.teacher) for r in overall.ranking))
    clusters = "" if comp.cluster_unit == "rollout" else f", {overall.clusters} {comp.cluster_unit}s"
    lines = [
        f"comparison of teachers by pooled alignment (param space), {overall.nodes} nodes, {overall.rollouts} "
        f"rollouts{clusters}",
        f"{'':<4} {'':<{width}} {'pooled':<{CELL}} P(best)",
    ]
    for i, r in enumerate(overall.ranking, 1):
        lines.append(f"{i:<4} {r.teacher:<{width}} {format_summary(r.pooled):<{CELL}} {format_p_best(r.p_best):>7}")
    if overall.pairs:
        lines.append("pairs on the same nodes (higher - lower)")
        pair_width = max(len(f"{p.higher} - {p.lower}") for p in overall.pairs)
        for p in overall.pairs:
            note = p.verdict
            if p.verdict == NOT_RESOLVED:
                note += " (closest pair)" if p is comp.closest else ""
                note += f"; {_more(p, comp.cluster_unit)}"
            label = f"{p.higher} - {p.lower}"
            lines.append(f"{label:<{pair_width}} {format_summary(p.difference):<{CELL}} {note}")
    if comp.slices:
        lines.append(
            "by slice ('>' resolved, '~' no significant difference, '?' no interval, between adjacent places)"
        )
        counts = {s.key: f"n={s.nodes} r={s.rollouts} c={s.clusters}" for s in comp.slices}
        label_width, counts_width = max(len(s.label) for s in comp.slices), max(map(len, counts.values()))
        for s in comp.slices:
            top = f"P(best) {format_p_best(s.ranking[0].p_best):<5}" if len(s.ranking) > 1 else ""
            lines.append(f"{s.label:<{label_width}} {counts[s.key]:<{counts_width}} {top} {ranking_chain(s)}".rstrip())
    lines.append("in words: " + plain_answer(comp))
    lines.append(comparison_legend(comp))
    return "\n".join(lines)
