"""The one aggregator: every per-teacher statistic of a set of node records, with its interval and counts.

TensorBoard scalars ([`pause_metrics`]), the terminal table of `gad diagnose` / `gad report` ([`format_table`]) and
the HTML report ([`render_html`]) all read what [`aggregate`] returns, so the same records give the same numbers on
every face. Per teacher: the mean of node cosines and the pooled alignment (see [`pooled_alignment`]), overall and on
incorrect / correct rollouts, in parameter and logit space; the mean by relative position; per question; and the
paired difference against the first teacher on the same nodes. Every one is a [`Summary`]: estimate, interval at the
configured confidence, nodes used (`n`), nodes left out as undefined (`n_undefined`) and clusters resampled.

Which number to read: the pooled alignment is the noise-debiased one, the number to compare teachers by; the mean of
node cosines is biased toward 0 by rollout noise (METHOD.md, "Noise: attenuation, intervals, pooling") and is kept
for continuity. Their `n` differ: a flat-success node (every candidate equally good) has no cosine but enters the pool
with numerator 0, because leaving it out would bias the pool upward.
"""

import math
from dataclasses import dataclass, field

from ..diagnosis.results import NodeRecord
from ..method.stats import Summary, paired_difference, pooled_ratio, summarize
from ..method.streams import stream
from .records import to_node_records


POSITION_BUCKETS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
SPACES = ("param", "logit")
OUTCOMES = ("incorrect", "correct")


def position_label(low: float, high: float) -> str:
    """`pos_00_25` ... `pos_75_100`: the metric suffix of a relative-position bucket."""
    return f"pos_{int(low * 100):02d}_{int(high * 100)}"


def confidence_label(confidence: float) -> str:
    """The interval level as printed: `95%`, `80%`, `97.5%`."""
    return f"{confidence * 100:g}%"


@dataclass
class QuestionAggregate:
    """
    One teacher on one question: its alignment over the question's diagnosed nodes, and how hard the question is
    for the student.

    Args:
        question_id (`int`): The question (dataset row).
        rollouts (`int`): Diagnosed rollouts of the question (all steps).
        correct (`int`): Of those, how many were verified correct.
        mean (`Summary`): Mean of node cosines (parameter space); the interval resamples the question's rollouts.

    No pooled alignment per question: a question's few nodes rarely hold enough success variation for the summed
    ideal-norm terms to be clearly positive, and the ratio is then meaningless.
    """

    question_id: int
    rollouts: int
    correct: int
    mean: Summary

    @property
    def pass_rate(self) -> float:
        """The student's pass rate on the question, over its diagnosed rollouts."""
        return self.correct / self.rollouts if self.rollouts else math.nan


@dataclass
class TeacherAggregate:
    """
    Every statistic of one teacher. Summaries named after a view hold the mean of node cosines (parameter space
    unless `logit`); `pooled*` the pooled alignment.

    Args:
        teacher (`str`): The teacher.
        overall, incorrect, correct, logit (`Summary`): Mean of node cosines: all nodes, split by the rollout's
            verdict, and in logit space.
        positions (`dict[str, Summary]`): Mean of node cosines by relative position ([`position_label`] keys).
        pooled, pooled_incorrect, pooled_correct (`Summary`): Pooled alignment, parameter space.
        pooled_logit, pooled_logit_incorrect, pooled_logit_correct (`Summary`): Pooled alignment, logit space.
        vs_first (`Summary`, *optional*): Mean of the node-wise cosine difference with the first teacher, on the
            nodes where both are defined; `None` for the first teacher itself.
        vs_first_pooled (`Summary`, *optional*): Difference of pooled alignments with the first teacher on the
            same nodes (both pools share each node's ideal-norm term, so it is the pooled ratio of the projection
            differences).
        positive_frac (`float`): Share of defined nodes with a positive cosine.
        advantage (`Summary`): Teacher advantage (change in success probability from acting like the teacher).
        restricted (`float`), outside_share (`float`): Mean restricted cosine and mean share of the teacher's
            direction outside the candidates.
        rollout (`Summary`): Mean rollout-level cosine, over rollouts.
        questions (`list[QuestionAggregate]`): Per question (empty when not asked for).
    """

    teacher: str
    overall: Summary
    incorrect: Summary
    correct: Summary
    logit: Summary
    positions: dict[str, Summary]
    pooled: Summary
    pooled_incorrect: Summary
    pooled_correct: Summary
    pooled_logit: Summary
    pooled_logit_incorrect: Summary
    pooled_logit_correct: Summary
    vs_first: Summary | None
    vs_first_pooled: Summary | None
    positive_frac: float
    advantage: Summary
    restricted: float
    outside_share: float
    rollout: Summary
    questions: list[QuestionAggregate] = field(default_factory=list)


@dataclass
class RunAggregate:
    """
    The aggregates of a set of records: per teacher, in the order given (or first seen), plus what the records
    cost. `cluster_unit` is `"question"` or `"rollout"` (see [`cluster_labels`]). `screened_out` counts the nodes
    stopped after their screening rollouts (flat, counted in `nodes`; see `DiagnosisConfig.screen_rollouts`).
    """

    teachers: list[TeacherAggregate]
    confidence: float
    cluster_unit: str
    rollouts: int
    correct: int
    nodes: int
    rollouts_spent: int
    targeted_rollouts: int
    screened_out: int = 0

    def __getitem__(self, teacher: str) -> TeacherAggregate:
        for t in self.teachers:
            if t.teacher == teacher:
                return t
        raise KeyError(teacher)


def cluster_labels(records: list[NodeRecord]) -> tuple[list, str]:
    """
    The bootstrap cluster of every record, and the unit's name.

    Nodes of one rollout are correlated (they share the rollout's prefix and verdict), and so are rollouts of one
    question (its difficulty). When any question has more than one diagnosed rollout among the records, the unit is
    the question (`question_id`); a question met again at a later step of the same run is still the same question,
    so it stays one cluster across steps. Otherwise every rollout is its own question and the unit is the rollout,
    `(step, rollout_id)` (rollout ids are unique only within a step). A record without a question id is its own
    rollout's cluster either way.
    """
    rollouts_of: dict = {}
    for r in records:
        if r.question_id is not None:
            rollouts_of.setdefault(r.question_id, set()).add((r.step, r.rollout_id))
    by_question = any(len(v) > 1 for v in rollouts_of.values())
    labels = [
        ("question", r.question_id) if by_question and r.question_id is not None else ("rollout", r.step, r.rollout_id)
        for r in records
    ]
    return labels, "question" if by_question else "rollout"


class _Stats:
    """Summaries with the run's level and bootstrap size; each statistic draws from its own named stream, so a
    number does not depend on which other numbers a face asked for, nor in which order."""

    def __init__(self, confidence: float, seed: int, num_bootstrap: int):
        self.confidence, self.seed, self.num_bootstrap = confidence, seed, num_bootstrap

    def _kw(self, pairs, names, weighted=True):
        # A node finished after a flat screen stands for 1 / screen_keep nodes like it (records' `pool_weight`).
        gen = stream(self.seed, "aggregate", *names)
        return dict(
            confidence=self.confidence,
            num_bootstrap=self.num_bootstrap,
            generator=gen,
            clusters=[c for _, c in pairs],
            weights=[r.pool_weight for r, _ in pairs] if weighted else None,
        )

    def mean(self, pairs, attr: str, *names, weighted=True) -> Summary:
        return summarize([getattr(r, attr) for r, _ in pairs], **self._kw(pairs, names, weighted))

    def pooled(self, pairs, space: str, *names) -> Summary:
        proj = [getattr(r, f"{space}_proj") for r, _ in pairs]
        norm2 = [getattr(r, f"ideal_norm2_{space}") for r, _ in pairs]
        return pooled_ratio(proj, norm2, **self._kw(pairs, names))


def _weighted_mean(pairs, value, weighted=True) -> float:
    """Mean of `value(record)` over the records where it is defined, each weighted by its `pool_weight`."""
    defined = [(value(r), r.pool_weight if weighted else 1.0) for r, _ in pairs if not math.isnan(value(r))]
    total = sum(w for _, w in defined)
    return sum(v * w for v, w in defined) / total if total > 0 else math.nan


def _in_bucket(rel: float, low: float, high: float) -> bool:
    return low <= rel < high or (high == 1.0 and rel == 1.0)


def question_outcomes(records: list[NodeRecord]) -> dict:
    """
    Per question id, `(correct, rollouts)`: of its diagnosed rollouts in `records` (every step), how many were verified
    correct. The student's pass rate on the question is their ratio. Records without a question id are left out.
    """
    verdicts: dict = {}
    for r in records:
        if r.question_id is not None:
            verdicts.setdefault(r.question_id, {})[(r.step, r.rollout_id)] = bool(r.correct)
    return {qid: (sum(v.values()), len(v)) for qid, v in verdicts.items()}


def per_question(
    rows, teacher: str, *, confidence: float = 0.95, seed: int = 0, num_bootstrap: int = 1000
) -> list[QuestionAggregate]:
    """
    Per question (sorted by id), `teacher`'s mean node cosine over the question's nodes with an interval resampling
    its rollouts, and the student's pass rate on it. Rows without a question id are left out.

    Args:
        rows (`list[dict]` or `list[NodeRecord]`): Node records (any number of steps).
        teacher (`str`): The teacher.
        confidence (`float`, *optional*, defaults to `0.95`): Interval level.
        seed (`int`, *optional*, defaults to `0`): Seed of the bootstraps.
        num_bootstrap (`int`, *optional*, defaults to `1000`): Bootstrap replicates.
    """
    stats = _Stats(confidence, seed, num_bootstrap)
    records = to_node_records(rows)
    outcomes = question_outcomes(records)
    mine: dict = {}
    for r in records:  # one pass: a long run's report has many questions
        if r.question_id is not None and r.teacher == teacher:
            mine.setdefault(r.question_id, []).append((r, (r.step, r.rollout_id)))
    return [
        QuestionAggregate(
            question_id=qid,
            rollouts=outcomes[qid][1],
            correct=outcomes[qid][0],
            mean=stats.mean(mine[qid], "param_cos", teacher, "question", qid, "mean"),
        )
        for qid in sorted(mine, key=lambda q: (str(type(q)), q))
    ]


def _teacher(teacher, pairs, first, stats: _Stats) -> TeacherAggregate:
    by_outcome = {name: [(r, c) for r, c in pairs if bool(r.correct) == (name == "correct")] for name in OUTCOMES}
    pooled = {
        (space, split): stats.pooled(part, space, teacher, "pooled", space, split)
        for space in SPACES
        for split, part in (("all", pairs), *by_outcome.items())
    }
    vs_first = vs_first_pooled = None
    if first is not None:
        # Matched on the node: the other teacher's row at the same (step, rollout, position), NaN if it has none.
        other = [first.get(r.node) for r, _ in pairs]
        vs_first = paired_difference(
            [r.param_cos for r, _ in pairs],
            [o.param_cos if o is not None else math.nan for o in other],
            **stats._kw(pairs, (teacher, "paired", "mean")),
        )
        vs_first_pooled = pooled_ratio(
            [
                r.param_proj - (o.param_proj if o is not None else math.nan)
                for (r, _), o in zip(pairs, other, strict=True)
            ],
            [r.ideal_norm2_param for r, _ in pairs],
            **stats._kw(pairs, (teacher, "paired", "pooled")),
        )
    per_rollout = {(r.step, r.rollout_id): (r, c) for r, c in pairs}
    return TeacherAggregate(
        teacher=teacher,
        overall=stats.mean(pairs, "param_cos", teacher, "mean", "all"),
        incorrect=stats.mean(by_outcome["incorrect"], "param_cos", teacher, "mean", "incorrect"),
        correct=stats.mean(by_outcome["correct"], "param_cos", teacher, "mean", "correct"),
        logit=stats.mean(pairs, "logit_cos", teacher, "mean", "logit"),
        positions={
            position_label(lo, hi): stats.mean(
                [(r, c) for r, c in pairs if _in_bucket(r.rel_position, lo, hi)], "param_cos", teacher, "pos", lo
            )
            for lo, hi in POSITION_BUCKETS
        },
        pooled=pooled["param", "all"],
        pooled_incorrect=pooled["param", "incorrect"],
        pooled_correct=pooled["param", "correct"],
        pooled_logit=pooled["logit", "all"],
        pooled_logit_incorrect=pooled["logit", "incorrect"],
        pooled_logit_correct=pooled["logit", "correct"],
        vs_first=vs_first,
        vs_first_pooled=vs_first_pooled,
        positive_frac=_weighted_mean(pairs, lambda r: math.nan if math.isnan(r.param_cos) else float(r.param_cos > 0)),
        advantage=stats.mean(pairs, "advantage", teacher, "advantage"),
        restricted=_weighted_mean(pairs, lambda r: r.restricted_cos),
        # Known at every node, stopped or not (it needs no rollout): each node once.
        outside_share=_weighted_mean(pairs, lambda r: r.outside_share, weighted=False),
        # One value per rollout (its nodes' weights are inside its summed ideal): each rollout once.
        rollout=stats.mean(list(per_rollout.values()), "rollout_param_cos", teacher, "rollout", weighted=False),
    )


def aggregate(
    rows,
    teachers: list[str] | None = None,
    *,
    confidence: float = 0.95,
    seed: int = 0,
    num_bootstrap: int = 1000,
    questions: bool = True,
) -> RunAggregate:
    """
    Every per-teacher statistic of `rows`, computed once for every face.

    Args:
        rows (`list[dict]` or `list[NodeRecord]`):
            Node records, one per (node, teacher), of one pause or of a whole run.
        teachers (`list[str]`, *optional*):
            Teachers in display order (the first is the reference of paired differences); those first seen in `rows`
            when omitted. A teacher without rows gets undefined summaries.
        confidence (`float`, *optional*, defaults to `0.95`):
            Level of every interval.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the bootstraps (each statistic draws from its own stream derived from it).
        num_bootstrap (`int`, *optional*, defaults to `1000`):
            Bootstrap replicates per interval.
        questions (`bool`, *optional*, defaults to `True`):
            Also compute the per-question aggregates ([`per_question`]).
    """
    records = to_node_records(rows)
    teachers = list(teachers) if teachers is not None else list(dict.fromkeys(r.teacher for r in records))
    labels, unit = cluster_labels(records)
    stats = _Stats(confidence, seed, num_bootstrap)
    first = {r.node: r for r in records if teachers and r.teacher == teachers[0]}
    out = []
    for i, teacher in enumerate(teachers):
        pairs = [(r, c) for r, c in zip(records, labels, strict=True) if r.teacher == teacher]
        agg = _teacher(teacher, pairs, first if i > 0 else None, stats)
        if questions:
            agg.questions = per_question(
                records, teacher, confidence=confidence, seed=seed, num_bootstrap=num_bootstrap
            )
        out.append(agg)
    nodes = {r.node: r for r in records}
    verdicts = {(r.step, r.rollout_id): bool(r.correct) for r in records}
    return RunAggregate(
        teachers=out,
        confidence=confidence,
        cluster_unit=unit,
        rollouts=len(verdicts),
        correct=sum(verdicts.values()),
        nodes=len(nodes),
        rollouts_spent=sum(int(r.rollouts_spent) for r in nodes.values()),
        targeted_rollouts=sum(int(sum(r.success_counts)) for r in nodes.values()),
        screened_out=sum(bool(r.screened_out) for r in nodes.values()),
    )
