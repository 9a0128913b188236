"""Teachers compared: which one aligns best with the ideal gradient, and how sure the records make us.

[`compare`] ranks teachers (and contexts: both are teachers in the records) by pooled alignment in parameter space,
the noise-debiased number (see [`pooled_alignment`]), and says for every pair whether their difference is resolved at
the run's confidence level or not ("no significant difference" is an answer), over all nodes and within slices: by
rollout outcome, by relative position in the rollout, and by how hard the question is for the student. `gad compare`,
the end of `gad diagnose` / `gad report` and the HTML report's "Comparison" section all show what it returns.

How the numbers are made, and why:

- **Ranking.** Each teacher's pooled alignment over the nodes where it is defined, with its cluster-bootstrap
  interval (the summary table's number and interval, to the last digit: the same bootstrap stream), and P(best): the
  share of *joint* bootstrap replicates ([`joint_pooled`], the same questions or rollouts resampled for every
  teacher, so the pairing is kept) in which the teacher is the highest.
- **Pairs.** The difference of pooled alignments on the nodes where *both* teachers are defined, with its own
  cluster-bootstrap interval. Both pools then share each node's ideal-norm term, so the difference is the pooled
  ratio of the projection differences: the summary table's "paired difference" (same convention; same number and
  interval, sign aside, for a pair with the first teacher). "resolved": the interval excludes 0. Each pair's
  interval is at the run's level, not widened for the number of pairs: among teachers that are all equal, each pair
  comes out "resolved" by chance with probability about 1 - level, so with many pairs some will.
- **Slices.** The same ranking and pairs on a slice's nodes, with the run's clusters (an outcome slice gives the
  summary table's "on incorrect / correct rollouts" numbers). Difficulty is the student's pass rate on the question
  over all its diagnosed rollouts in the records (every step): hard below 1/3, medium, easy from 2/3 up. With one
  rollout per question it repeats the outcome split.
- **More rollouts.** For an unresolved pair with difference `d` over `c` clusters, let `h` be the part of its interval
  between `d` and 0's side end (the half that has to shrink past 0). If the interval narrows as `1 / sqrt(clusters)`
  and `d` stays at its estimate, it just excludes 0 at `c (h / d)^2` clusters: the estimate is the extra clusters,
  as diagnosed rollouts at the run's rollouts per cluster of that pair. Rough by design: at that size the odds of
  resolving are about even (the estimate of `d` is as likely to shrink as to grow); 4-in-5 odds take about
  `((z + 0.84) / z)^2` times as many clusters (about 2x at a 95% level). With `d` about 0 nothing is estimated.
"""

import itertools
import math
from dataclasses import dataclass
from statistics import NormalDist

import torch

from ..diagnosis.results import NodeRecord
from ..method.stats import Summary, best_probabilities, joint_pooled, pooled_ratio
from ..method.streams import stream
from .aggregate import OUTCOMES, POSITION_BUCKETS, _in_bucket, cluster_labels, position_label, question_outcomes
from .records import to_node_records


RESOLVED = "resolved"
NOT_RESOLVED = "no significant difference"
NO_INTERVAL = "no interval"
# Buckets of the student's pass rate on a question (`_difficulty` compares the counts exactly).
DIFFICULTY = (("hard", "pass < 1/3"), ("medium", "pass 1/3 to 2/3"), ("easy", "pass >= 2/3"))


@dataclass
class Ranked:
    """
    One teacher's place in a ranking.

    Args:
        teacher (`str`): The teacher.
        pooled ([`Summary`]): Its pooled alignment (parameter space) over its defined nodes, with the summary
            table's interval (its own bootstrap stream); no interval below two clusters.
        p_best (`float`): Share of joint bootstrap replicates in which it is the highest; NaN without replicates.
    """

    teacher: str
    pooled: Summary
    p_best: float


@dataclass
class Pair:
    """
    Two teachers on the same nodes, the higher-ranked first.

    Args:
        higher (`str`), lower (`str`): The teachers, in ranking order.
        difference ([`Summary`]): `higher - lower` in pooled alignment on the nodes where both are defined (`n`);
            `n_undefined` counts the slice's nodes where either is undefined.
        verdict (`str`): `"resolved"` (the interval excludes 0), `"no significant difference"`, or `"no interval"`
            (fewer than two clusters, or an undefined pool): never a verdict without an interval.
        more_clusters (`int`, *optional*), more_rollouts (`int`, *optional*): For an unresolved pair, about how many
            more clusters, and diagnosed rollouts, would resolve it (see the module's docstring); `None` when resolved,
            without an interval, or when the difference is about 0 (cannot be estimated).
    """

    higher: str
    lower: str
    difference: Summary
    verdict: str
    more_clusters: int | None = None
    more_rollouts: int | None = None


@dataclass
class SliceComparison:
    """
    The ranking and every pair on one set of nodes.

    Args:
        key (`str`): `"all"`, `"incorrect"`, `"correct"`, `"pos_00_25"` ... `"pos_75_100"`, `"hard"`, `"medium"`, `"easy"`.
        label (`str`): What the slice holds, in words (`pass`: the student's pass rate on the question).
        nodes (`int`), rollouts (`int`), clusters (`int`): Its nodes, the rollouts they sit in, the clusters resampled.
        ranking (`list[Ranked]`): Teachers by pooled alignment, highest first; undefined ones last.
        pairs (`list[Pair]`): Every pair, in ranking order (first with second, third, ...; second with third, ...).
    """

    key: str
    label: str
    nodes: int
    rollouts: int
    clusters: int
    ranking: list[Ranked]
    pairs: list[Pair]

    def adjacent(self) -> list[Pair]:
        """The pairs of consecutive places in the ranking: the steps a reader walks down."""
        names = [r.teacher for r in self.ranking]
        return [p for p in self.pairs if names.index(p.lower) == names.index(p.higher) + 1]


@dataclass
class Comparison:
    """
    What [`compare`] returns: the comparison over all nodes, per slice, and the closest pair.

    Args:
        overall ([`SliceComparison`]): All nodes.
        slices (`list[SliceComparison]`): By rollout outcome, relative position, question difficulty (that order;
            a difficulty no question has is left out).
        closest ([`Pair`], *optional*): Of the overall ranking's unresolved adjacent pairs (with an interval), the one
            whose difference is smallest next to its interval (`|d| / h`): the least settled step of the ranking.
        confidence (`float`), cluster_unit (`str`), rollouts (`int`): Interval level, what a cluster is, and the
            diagnosed rollouts of the records.
    """

    overall: SliceComparison
    slices: list[SliceComparison]
    closest: Pair | None
    confidence: float
    cluster_unit: str
    rollouts: int

    def __getitem__(self, key: str) -> SliceComparison:
        for s in [self.overall, *self.slices]:
            if s.key == key:
                return s
        raise KeyError(key)


def verdict(s: Summary) -> str:
    """`"resolved"` when the interval excludes 0, `"no significant difference"` when it holds 0, else `"no interval"`."""
    if s.n == 0 or math.isnan(s.mean) or not s.has_interval:
        return NO_INTERVAL
    return RESOLVED if s.lower > 0 or s.upper < 0 else NOT_RESOLVED


def _zero_side(s: Summary) -> float:
    """The part of `s`'s interval between its estimate and the end on 0's side: what has to shrink past 0."""
    return s.mean - s.lower if s.mean > 0 else s.upper - s.mean


def more_clusters_needed(s: Summary) -> int | None:
    """
    About how many more clusters would resolve an unresolved difference `s` (module docstring, "More rollouts"):
    `c (h / |d|)^2 - c`, `h` the interval's part between `d` and the end on 0's side. `None` when `s` is resolved or has
    no interval, or when `d` is about 0 (no finite number of clusters is estimated to resolve it).
    """
    if verdict(s) != NOT_RESOLVED:
        return None
    d, h = abs(s.mean), _zero_side(s)
    if d <= 1e-9 * max(h, 1.0):
        return None
    return max(math.ceil(s.clusters * (h / d) ** 2 - s.clusters), 0)


def power_factor(confidence: float, power: float = 0.8) -> float:
    """How many times the even-odds estimate of clusters gives `power` odds of resolving: `((z + z_power) / z)^2`."""
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    return ((z + NormalDist().inv_cdf(power)) / z) ** 2


@dataclass
class NodeMatrix:
    """The records as one column per node: per teacher its projection term, per node the rest."""

    teachers: list[str]
    proj: torch.Tensor  # [T, N], NaN where the teacher has no defined row at the node
    norm2: torch.Tensor  # [N]
    weights: torch.Tensor  # [N]
    records: list[NodeRecord]  # [N], one of each node's rows (the per-node fields are the same in every teacher's row)
    clusters: list  # [N]


def node_matrix(records: list[NodeRecord], teachers: list[str]) -> NodeMatrix:
    """The records as one column per node (clusters as [`cluster_labels`] gives them): what [`joint_pooled`] takes."""
    labels, _ = cluster_labels(records)
    first: dict = {}
    for r, c in zip(records, labels, strict=True):
        first.setdefault(r.node, (r, c))
    index = {node: i for i, node in enumerate(first)}
    rows = {t: i for i, t in enumerate(teachers)}
    proj = torch.full((len(teachers), len(first)), math.nan, dtype=torch.float64)
    for r in records:
        if r.teacher in rows:
            proj[rows[r.teacher], index[r.node]] = r.param_proj
    kept = list(first.values())
    return NodeMatrix(
        teachers=teachers,
        proj=proj,
        norm2=torch.tensor([r.ideal_norm2_param for r, _ in kept], dtype=torch.float64),
        weights=torch.tensor([r.pool_weight for r, _ in kept], dtype=torch.float64),
        records=[r for r, _ in kept],
        clusters=[c for _, c in kept],
    )


def _negated(s: Summary) -> Summary:
    """`-s`: the same replicates' percentile interval of the opposite difference."""
    return Summary(-s.mean, -s.upper, -s.lower, s.n, s.n_undefined, s.clusters, s.confidence)


def _slice(
    nodes: NodeMatrix, keep: list[bool], key: str, label: str, run_rollouts: int, settings: dict
) -> SliceComparison:
    idx = [i for i, k in enumerate(keep) if k]
    proj, norm2 = nodes.proj[:, idx], nodes.norm2[idx]
    seed, teachers = settings["seed"], nodes.teachers
    common = dict(
        clusters=[nodes.clusters[i] for i in idx],
        weights=nodes.weights[idx],
        num_bootstrap=settings["num_bootstrap"],
    )
    # P(best) needs every teacher in the same replicates. Intervals are per teacher and per pair, drawn from the
    # summary table's streams where it shows the same number (pooled overall and by outcome, paired difference with
    # the first teacher overall), so both faces print it to the last digit.
    _, reps = joint_pooled(proj, norm2, **common, generator=stream(seed, "compare", "ranking", key))
    p_best = best_probabilities(reps)  # NaN without replicates (fewer than two clusters)
    common["confidence"] = settings["confidence"]
    ranking = [
        Ranked(
            teacher,
            pooled_ratio(
                proj[t], norm2, **common, generator=stream(seed, "aggregate", teacher, "pooled", "param", key)
            ),
            float(p_best[t]),
        )
        for t, teacher in enumerate(teachers)
    ]
    ranking.sort(key=lambda r: (math.isnan(r.pooled.mean), -r.pooled.mean if not math.isnan(r.pooled.mean) else 0))
    place = {r.teacher: k for k, r in enumerate(ranking)}
    pairs = []
    for i, j in itertools.combinations(range(len(teachers)), 2):
        names = ("aggregate", teachers[j], "paired", "pooled")
        if i or key != "all":
            names = ("compare", teachers[i], teachers[j], key)
        # NaN where either is undefined: the pair is scored on the nodes both define.
        diff = pooled_ratio(proj[j] - proj[i], norm2, **common, generator=stream(seed, *names))
        higher, lower = (
            (teachers[i], teachers[j]) if place[teachers[i]] < place[teachers[j]] else (teachers[j], teachers[i])
        )
        diff = _negated(diff) if higher == teachers[i] else diff
        more = more_clusters_needed(diff)
        # A cluster of this pair comes with run_rollouts / clusters diagnosed rollouts of the run, on average.
        rollouts = None if more is None else math.ceil(more * run_rollouts / diff.clusters)
        pairs.append(Pair(higher, lower, diff, verdict(diff), more, rollouts))
    pairs.sort(key=lambda p: (place[p.higher], place[p.lower]))
    rollouts_in = {(nodes.records[i].step, nodes.records[i].rollout_id) for i in idx}
    return SliceComparison(key, label, len(idx), len(rollouts_in), len(set(common["clusters"])), ranking, pairs)


def _difficulty(records: list[NodeRecord]) -> dict:
    """Per question id, its difficulty bucket from the student's pass rate over its diagnosed rollouts."""
    out = {}
    for qid, (correct, rollouts) in question_outcomes(records).items():
        # Exact thresholds: 1 of 3 rollouts correct is medium, not hard by a rounding error.
        out[qid] = "hard" if 3 * correct < rollouts else "easy" if 3 * correct >= 2 * rollouts else "medium"
    return out


def compare(
    rows,
    teachers: list[str] | None = None,
    *,
    confidence: float = 0.95,
    seed: int = 0,
    num_bootstrap: int = 1000,
) -> Comparison:
    """
    Rank teachers by pooled alignment and resolve every pair, overall and per slice (see the module's docstring).

    Args:
        rows (`list[dict]` or `list[NodeRecord]`):
            Node records, one per (node, teacher), of one pass or of a whole run.
        teachers (`list[str]`, *optional*):
            Teachers to compare; those first seen in `rows` when omitted. A teacher without rows is ranked undefined.
        confidence (`float`, *optional*, defaults to `0.95`):
            Level of every interval.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the bootstraps (the ranking and each pair draw from their own streams derived from it).
        num_bootstrap (`int`, *optional*, defaults to `1000`):
            Bootstrap replicates.
    """
    records = to_node_records(rows)
    teachers = list(teachers) if teachers is not None else list(dict.fromkeys(r.teacher for r in records))
    if not records or not teachers:
        raise ValueError("nothing to compare: no node records or no teachers.")
    nodes = node_matrix(records, teachers)
    _, unit = cluster_labels(records)
    run_rollouts = len({(r.step, r.rollout_id) for r in records})
    settings = dict(confidence=confidence, seed=seed, num_bootstrap=num_bootstrap)
    every = [True] * len(nodes.records)
    overall = _slice(nodes, every, "all", "all nodes", run_rollouts, settings)
    views = [
        (name, f"{name} rollouts", [bool(r.correct) == (name == "correct") for r in nodes.records])
        for name in OUTCOMES
    ]
    for low, high in POSITION_BUCKETS:
        inside = [_in_bucket(r.rel_position, low, high) for r in nodes.records]
        views.append((position_label(low, high), f"position {low:.0%}-{high:.0%}", inside))
    difficulty = _difficulty(records)
    for name, rule in DIFFICULTY:
        if name in difficulty.values():
            inside = [difficulty.get(r.question_id) == name for r in nodes.records]
            views.append((name, f"{name} questions ({rule})", inside))
    slices = [_slice(nodes, keep, key, label, run_rollouts, settings) for key, label, keep in views if any(keep)]
    open_pairs = [p for p in overall.adjacent() if p.verdict == NOT_RESOLVED]
    # |d| / h: 1 would just resolve the pair; the smallest is the least settled step (ties: the higher one).
    closest = min(
        open_pairs, key=lambda p: abs(p.difference.mean) / max(_zero_side(p.difference), 1e-300), default=None
    )
    return Comparison(overall, slices, closest, confidence, unit, run_rollouts)
