"""`compare`: teachers ranked by pooled alignment, pairs resolved or not, slices, and the rollouts it would take."""

import dataclasses
import math

import pytest
import torch

from gad_callbacks.diagnosis.results import NodeRecord
from gad_callbacks.outputs.aggregate import aggregate
from gad_callbacks.outputs.compare import NO_INTERVAL, NOT_RESOLVED, RESOLVED, compare, power_factor
from gad_callbacks.outputs.compare_table import format_comparison, plain_answer
from gad_callbacks.outputs.html_report import render_html
from tests.outputs.test_aggregate import make_rows


def node_rows(means, questions=30, rollouts_per_question=1, nodes=6, shared=0.3, own=0.15, noise=0.2, seed=0):
    """
    Node rows of teachers whose node cosines are `means[t]` plus a rollout effect all teachers share (the pairing),
    a rollout effect of their own (the pair's clustered noise) and node noise; projection terms consistent with the
    cosines, every fourth node flat (zero terms). Equal means give equal pooled alignments in expectation.
    """
    g = torch.Generator().manual_seed(seed)
    n_rollouts, teachers = questions * rollouts_per_question, list(means)
    correct = (torch.rand(n_rollouts, generator=g) < 0.4).tolist()
    effect = (
        torch.randn(n_rollouts, 1, 1, generator=g) * shared
        + torch.randn(n_rollouts, 1, len(teachers), generator=g) * own
    )
    cos = (
        torch.tensor([means[t] for t in teachers])
        + effect
        + torch.randn(n_rollouts, nodes, len(teachers), generator=g) * noise
    )
    cos = cos.clamp(-1.0, 1.0).tolist()
    norm2 = (torch.rand(n_rollouts, nodes, generator=g) + 0.5).tolist()
    base = dataclasses.asdict(NodeRecord(step=0, rollout_id="", position=0, teacher=""))
    rows = []
    for i in range(n_rollouts):
        for j in range(nodes):
            flat = j % 4 == 3
            n2 = 0.0 if flat else norm2[i][j]
            for t, teacher in enumerate(teachers):
                c = cos[i][j][t]
                rows.append(
                    {
                        **base,
                        "rollout_id": f"0-{i}",
                        "question_id": i // rollouts_per_question,
                        "correct": correct[i],
                        "position": j,
                        "completion_length": nodes,
                        "rel_position": j / (nodes - 1),
                        "teacher": teacher,
                        "param_cos": math.nan if flat else c,
                        "param_proj": 0.0 if flat else c * math.sqrt(n2),
                        "ideal_norm2_param": n2,
                    }
                )
    return rows


def renamed(rows, old, new):
    """`old`'s rows again under the name `new`: a teacher identical to it, node for node."""
    return rows + [{**r, "teacher": new} for r in rows if r["teacher"] == old]


def test_a_clearly_better_teacher_is_first_and_resolved():
    comp = compare(node_rows({"weak": 0.1, "strong": 0.6}), num_bootstrap=400)
    first, second = comp.overall.ranking
    assert (first.teacher, second.teacher) == ("strong", "weak")
    assert first.p_best > 0.95 and first.p_best + second.p_best == pytest.approx(1.0)
    (pair,) = comp.overall.pairs
    assert (pair.higher, pair.lower, pair.verdict) == ("strong", "weak", RESOLVED)
    assert pair.difference.lower > 0 and pair.more_rollouts is None and comp.closest is None
    # Every number carries its counts: 30 rollouts of 6 nodes, all defined (a flat node enters the pool with 0).
    assert first.pooled.n == 180 and first.pooled.n_undefined == 0 and first.pooled.clusters == 30
    assert comp.overall.nodes == 180 and comp.overall.rollouts == 30 and comp.cluster_unit == "rollout"
    assert plain_answer(comp).startswith("Best: strong (P(best) ")


def test_identical_teachers_are_no_significant_difference_exactly_zero():
    rows = renamed(node_rows({"a": 0.4, "b": 0.1}), "a", "twin")
    comp = compare(rows, num_bootstrap=300)
    assert [r.teacher for r in comp.overall.ranking][2] == "b"
    pair = next(p for p in comp.overall.pairs if {p.higher, p.lower} == {"a", "twin"})
    assert pair.difference.mean == 0.0 and pair.difference.lower == 0.0 == pair.difference.upper
    assert pair.verdict == NOT_RESOLVED and pair.more_clusters is None and pair.more_rollouts is None
    assert comp.closest is pair
    # Twins share P(best) (ties split); what matters is that the pair is not called resolved.
    text = format_comparison(comp)
    assert "no number of rollouts can be estimated" in text and "Best: not resolved" in text


def test_numbers_are_the_summary_tables():
    """The ranking's cells and the pair with the first teacher are the summary table's, to the last digit."""
    rows = make_rows(questions=10, rollouts_per_question=2, nodes=6)
    run = aggregate(rows, ["big", "hint"], seed=3)
    comp = compare(rows, seed=3)
    for teacher in ("big", "hint"):
        ranked = {r.teacher: r for r in comp.overall.ranking}[teacher]
        assert ranked.pooled == run[teacher].pooled
        for side in ("incorrect", "correct"):
            got = {r.teacher: r for r in comp[side].ranking}[teacher].pooled
            assert got == getattr(run[teacher], f"pooled_{side}")
    (pair,) = comp.overall.pairs
    flipped = run["hint"].vs_first_pooled  # hint - big
    sign = 1 if pair.higher == "hint" else -1
    assert pair.difference.mean == pytest.approx(sign * flipped.mean, abs=1e-15)
    ends = sorted([sign * flipped.lower, sign * flipped.upper])
    assert [pair.difference.lower, pair.difference.upper] == pytest.approx(ends, abs=1e-15)
    assert (pair.difference.n, pair.difference.clusters) == (flipped.n, flipped.clusters)


def test_a_slice_is_compare_on_its_records():
    rows = node_rows({"a": 0.5, "b": 0.3, "c": 0.2}, questions=40)
    comp = compare(rows, num_bootstrap=500)
    for side, verdict in (("correct", True), ("incorrect", False)):
        alone = compare([r for r in rows if r["correct"] == verdict], num_bootstrap=500).overall
        part = comp[side]
        assert (part.nodes, part.rollouts, part.clusters) == (alone.nodes, alone.rollouts, alone.clusters)
        assert [r.teacher for r in part.ranking] == [r.teacher for r in alone.ranking]
        for mine, theirs in zip(part.ranking, alone.ranking, strict=True):
            assert mine.pooled.mean == pytest.approx(theirs.pooled.mean, abs=1e-12)
            assert (mine.pooled.n, mine.pooled.n_undefined, mine.pooled.clusters) == (
                theirs.pooled.n,
                theirs.pooled.n_undefined,
                theirs.pooled.clusters,
            )
            assert mine.p_best == pytest.approx(theirs.p_best, abs=0.06)  # other bootstrap draws
        for mine, theirs in zip(part.pairs, alone.pairs, strict=True):
            assert (mine.higher, mine.lower) == (theirs.higher, theirs.lower)
            assert mine.difference.mean == pytest.approx(theirs.difference.mean, abs=1e-12)
            assert mine.difference.lower == pytest.approx(theirs.difference.lower, abs=0.05)
    # Slices partition the nodes: outcome, position, difficulty each cover every node once.
    keys = [s.key for s in comp.slices]
    assert keys[:6] == ["incorrect", "correct", "pos_00_25", "pos_25_50", "pos_50_75", "pos_75_100"]
    for group in (keys[:2], keys[2:6], keys[6:]):
        assert sum(comp[k].nodes for k in group) == comp.overall.nodes


def test_difficulty_is_the_students_pass_rate_on_the_question():
    rows = node_rows({"a": 0.5, "b": 0.2}, questions=12, rollouts_per_question=3, nodes=4)
    # Question q has q % 4 of its 3 rollouts correct: 0 (hard), 1 (medium: exactly 1/3), 2 and 3 (easy).
    for r in rows:
        r["correct"] = int(r["rollout_id"].split("-")[1]) % 3 < r["question_id"] % 4
    comp = compare(rows, num_bootstrap=200)
    assert comp.cluster_unit == "question"
    nodes_per_question = 3 * 4
    assert comp["hard"].nodes == 3 * nodes_per_question and comp["hard"].clusters == 3
    assert comp["medium"].nodes == 3 * nodes_per_question
    assert comp["easy"].nodes == 6 * nodes_per_question and comp["easy"].rollouts == 18


def test_more_rollouts_follow_the_formula_and_shrink_with_more_data():
    rows = node_rows({"a": 0.35, "b": 0.3}, questions=40, seed=1)
    pair = compare(rows, num_bootstrap=1000).overall.pairs[0]
    d = pair.difference
    assert pair.verdict == NOT_RESOLVED and abs(d.mean) > 0.01, d
    h = d.mean - d.lower if d.mean > 0 else d.upper - d.mean
    assert pair.more_clusters == math.ceil(d.clusters * (h / d.mean) ** 2 - d.clusters)
    assert pair.more_rollouts == pair.more_clusters  # one rollout per cluster here
    # The same rollouts twice over: the same difference, a narrower interval, fewer clusters still to add.
    twice = [{**r, "question_id": None} for r in rows]  # no questions: each rollout is its own cluster
    twice += [{**r, "rollout_id": r["rollout_id"] + "-again"} for r in twice]
    again = compare(twice, num_bootstrap=1000).overall.pairs[0]
    assert again.difference.mean == pytest.approx(d.mean, abs=1e-12)
    assert again.difference.clusters == 2 * d.clusters
    assert again.verdict == RESOLVED or again.more_clusters < pair.more_clusters
    assert power_factor(0.95) == pytest.approx(2.04, abs=0.01)


def test_resolved_at_about_one_minus_the_level_when_teachers_are_equal():
    """200 simulated runs in which two teachers have the same pooled alignment: the pair comes out "resolved" at
    about the rate 1 - level (a percentile bootstrap over 40 clusters runs a little over it)."""
    resolved, threads = 0, torch.get_num_threads()
    torch.set_num_threads(1)  # tensors of a few hundred numbers: a second thread costs ten times the work here
    try:
        for seed in range(200):
            rows = node_rows({"a": 0.3, "b": 0.3}, questions=40, nodes=4, seed=seed)
            for r in rows:
                r["rel_position"], r["question_id"], r["correct"] = math.nan, None, False  # one slice: fast
            resolved += compare(rows, num_bootstrap=300).overall.pairs[0].verdict == RESOLVED
    finally:
        torch.set_num_threads(threads)
    assert 0.01 <= resolved / 200 <= 0.12, resolved


def test_no_interval_is_never_a_verdict():
    rows = node_rows({"a": 0.5, "b": 0.1}, questions=1)
    comp = compare(rows, num_bootstrap=100)
    (pair,) = comp.overall.pairs
    assert pair.verdict == NO_INTERVAL and pair.more_rollouts is None
    assert all(math.isnan(r.p_best) and not r.pooled.has_interval for r in comp.overall.ranking)
    text = format_comparison(comp)
    assert "no interval" in text and "nan" not in text.lower() and ", resolved" not in text
    # A teacher without a defined pool is ranked last, undefined.
    rows = node_rows({"a": 0.5, "b": 0.1}, questions=6)
    for r in rows:
        if r["teacher"] == "b":
            r["param_proj"] = math.nan
    comp = compare(rows, num_bootstrap=100)
    assert comp.overall.ranking[-1].teacher == "b" and comp.overall.pairs[0].verdict == NO_INTERVAL
    assert "b undefined" in format_comparison(comp)


def test_html_section_is_escaped_and_holds_every_pair():
    rows = renamed(node_rows({"a": 0.5, "b": 0.1}, questions=8), "b", "<b>&")
    run = aggregate(rows)
    comp = compare(rows, num_bootstrap=200)
    page = render_html(rows, [], run, comparison=comp)
    section = page[page.index("<h2>Comparison</h2>") : page.index("<h2>Per question</h2>")]
    assert "<b>&" not in section and "&lt;b&gt;&amp;" in section
    pairs = section[section.index('<table id="pairs">') :]
    assert pairs[: pairs.index("</table>")].count("<tr>") == 1 + 3
    assert "Comparison" not in render_html(rows, [], run)
