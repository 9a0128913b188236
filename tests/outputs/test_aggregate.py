"""The one aggregator and its three faces: intervals, clusters, agreement, confidence level, record schema."""

import dataclasses
import json
import logging
import math
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gad_callbacks.cli.report import write_report
from gad_callbacks.diagnosis.results import NodeRecord
from gad_callbacks.diagnosis.rollout_pass import PassResult
from gad_callbacks.method.stats import paired_difference, pooled_ratio
from gad_callbacks.outputs.aggregate import aggregate, cluster_labels, per_question
from gad_callbacks.outputs.html_report import render_html
from gad_callbacks.outputs.metrics import pause_metrics
from gad_callbacks.outputs.records import (
    node_schema,
    read_node_records,
    read_records,
    to_node_records,
    write_records,
)
from gad_callbacks.outputs.summary import format_summary
from gad_callbacks.outputs.tensorboard import layout


TEACHERS = ["big", "hint"]


def make_rows(questions=12, rollouts_per_question=1, nodes=6, shift=0.3, node_noise=0.02, seed=0, step=0):
    """
    Synthetic node rows. Teacher "big" has a cosine per node; teacher "hint" differs from it by an offset drawn once
    per rollout (plus a little node noise), so the nodes of one rollout are strongly correlated in the difference.
    Every fourth node is flat (no cosine, zero pooling terms); pooling terms are consistent with the cosines.
    """
    g = torch.Generator().manual_seed(seed)
    rows = []
    for q in range(questions):
        for k in range(rollouts_per_question):
            rid = f"{step}-{q * rollouts_per_question + k}"
            correct = bool(torch.rand((), generator=g) < 0.4)
            offset = float(torch.randn((), generator=g)) * shift
            for j in range(nodes):
                flat = j % 4 == 3
                norm2 = 0.0 if flat else float(torch.rand((), generator=g)) + 0.5
                big = float(torch.rand((), generator=g)) * 1.2 - 0.2
                hint = max(min(big - offset + float(torch.randn((), generator=g)) * node_noise, 1.0), -1.0)
                for teacher, cos in (("big", big), ("hint", hint)):
                    rows.append(
                        dataclasses.asdict(
                            NodeRecord(
                                step=step,
                                rollout_id=rid,
                                question_id=q,
                                reward=float(correct),
                                correct=correct,
                                position=j,
                                completion_length=nodes,
                                rel_position=j / (nodes - 1),
                                teacher=teacher,
                                param_cos=math.nan if flat else cos,
                                logit_cos=math.nan if flat else cos * 0.9,
                                advantage=0.1 * cos,
                                undefined="flat_success" if flat else "",
                                candidates=[3, 4],
                                success=[0.5, 0.25],
                                success_counts=[8, 8],
                                rollouts_spent=15,
                                param_proj=0.0 if flat else cos * math.sqrt(norm2),
                                logit_proj=0.0 if flat else 0.9 * cos * math.sqrt(norm2),
                                ideal_norm2_param=norm2,
                                ideal_norm2_logit=norm2,
                                region_flat=flat,
                            )
                        )
                    )
    return rows


def width(s):
    return s.upper - s.lower


def cell(metrics, key):
    """The cell the table and the page must show for `key`, rebuilt from the logged scalars alone."""
    return (
        f"{metrics[key]:+.3f} [{metrics[key + '/ci_low']:+.3f}, {metrics[key + '/ci_high']:+.3f}] "
        f"n={int(metrics[key + '/nodes'])}"
    )


# (a)
def test_single_cluster_interval_is_undefined_not_a_point(tmp_path, capsys):
    rows = make_rows(questions=1, nodes=8)
    run = aggregate(rows, TEACHERS)
    big = run["big"]
    assert big.overall.n == 6 and big.overall.clusters == 1
    assert math.isnan(big.overall.lower) and math.isnan(big.overall.upper)
    assert math.isnan(big.pooled.lower) and not math.isnan(big.pooled.mean)
    assert math.isnan(run["hint"].vs_first.lower)
    assert "[no interval]" in format_summary(big.overall)
    metrics = pause_metrics(PassResult(rows=rows), TEACHERS)
    assert math.isnan(metrics["gad/alignment/big/ci_low"]) and math.isnan(metrics["gad/pooled/big/ci_high"])
    write_records(rows, tmp_path / "records", 0)
    write_report(tmp_path)
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("big "))
    assert line.count("[no interval]") == 2 and "nan" not in printed.lower()
    assert "no interval" in (tmp_path / "report.html").read_text()


# (b)
def test_paired_difference_resamples_clusters_not_nodes():
    rows = make_rows(questions=30, nodes=12, shift=0.4, node_noise=0.01)
    run = aggregate(rows, TEACHERS)
    assert run.cluster_unit == "rollout"
    diff = run["hint"].vs_first
    assert diff.clusters == 30 and diff.n == 30 * 9
    big = [r["param_cos"] for r in rows if r["teacher"] == "big"]
    hint = [r["param_cos"] for r in rows if r["teacher"] == "hint"]
    nodes_only = paired_difference(hint, big, generator=torch.Generator().manual_seed(0))
    assert diff.mean == pytest.approx(nodes_only.mean)
    # Nodes of a rollout share its offset: the honest interval is about sqrt(9) times the node-level one.
    assert width(diff) > 2 * width(nodes_only), (diff, nodes_only)
    assert width(run["hint"].vs_first_pooled) > 0


def test_cluster_unit_is_the_question_when_questions_repeat():
    rows = make_rows(questions=5, rollouts_per_question=3, nodes=4)
    labels, unit = cluster_labels(to_node_records(rows))
    assert unit == "question" and len(set(labels)) == 5
    assert aggregate(rows, TEACHERS)["big"].overall.clusters == 5
    # The same question at two steps stays one cluster.
    labels, unit = cluster_labels(to_node_records(make_rows(questions=4, step=1) + make_rows(questions=4, step=2)))
    assert unit == "question" and len(set(labels)) == 4
    _, unit = cluster_labels(to_node_records(make_rows(questions=4)))
    assert unit == "rollout"


def test_per_question_counts_pass_rate_and_alignment():
    rows = make_rows(questions=3, rollouts_per_question=2, nodes=4)
    out = per_question(rows, "big")
    assert [q.question_id for q in out] == [0, 1, 2]
    for q in out:
        mine = [r for r in rows if r["teacher"] == "big" and r["question_id"] == q.question_id]
        verdicts = {r["rollout_id"]: r["correct"] for r in mine}
        assert q.rollouts == 2 and q.correct == sum(verdicts.values())
        assert q.pass_rate == pytest.approx(sum(verdicts.values()) / 2)
        defined = [r["param_cos"] for r in mine if not math.isnan(r["param_cos"])]
        assert q.mean.mean == pytest.approx(sum(defined) / len(defined)) and q.mean.clusters == 2
    assert [q.question_id for q in aggregate(rows, TEACHERS)["big"].questions] == [0, 1, 2]


# (c)
def test_metrics_table_and_html_agree(tmp_path, capsys):
    rows = make_rows(questions=10, rollouts_per_question=2, nodes=6)
    metrics = pause_metrics(PassResult(rows=rows), TEACHERS, confidence=0.9, seed=3)
    write_records(rows, tmp_path / "records", 0)
    write_report(tmp_path, confidence=0.9, seed=3)
    printed, page = capsys.readouterr().out, (tmp_path / "report.html").read_text()
    for teacher in TEACHERS:
        line = next(line for line in printed.splitlines() if line.startswith(f"{teacher} "))
        for key in (f"gad/pooled/{teacher}", f"gad/alignment/{teacher}"):
            assert cell(metrics, key) in line, (key, line)
            assert cell(metrics, key) in page, key
        assert f"gad/pooled/{teacher}/logit" in metrics and f"gad/alignment/{teacher}/incorrect/ci_low" in metrics
    # The pooled number is the pooled ratio of the records' terms, not a mean of cosines.
    big = [r for r in rows if r["teacher"] == "big"]
    expected = pooled_ratio([r["param_proj"] for r in big], [r["ideal_norm2_param"] for r in big]).mean
    assert metrics["gad/pooled/big"] == pytest.approx(expected)
    assert metrics["gad/pooled/big/nodes"] == len(big)
    assert cell(metrics, "gad/paired/hint") in printed and cell(metrics, "gad/paired/hint/pooled") in printed
    assert metrics["gad/rollouts_spent"] == 15 * 10 * 2 * 6 and metrics["gad/rollouts_spent_per_node"] == 15


def test_existing_metric_keys_are_kept():
    metrics = pause_metrics(PassResult(rows=make_rows()), TEACHERS)
    key = "gad/alignment/big"
    for suffix in ("", "/ci_low", "/ci_high", "/nodes", "/undefined", "/positive_frac", "/logit", "/restricted"):
        assert key + suffix in metrics
    for suffix in ("/outside_share", "/rollout", "/correct", "/incorrect", "/correct_nodes", "/incorrect_nodes"):
        assert key + suffix in metrics
    for suffix in ("/pos_00_25", "/pos_25_50", "/pos_50_75", "/pos_75_100"):
        assert key + suffix in metrics and key + suffix + "/ci_low" in metrics
    for extra in ("gad/advantage/big", "gad/nodes", "gad/targeted_rollouts", "gad/rollouts", "gad/correct_frac"):
        assert extra in metrics
    charts = layout(TEACHERS)["gad: gradient alignment"]
    assert charts["pooled alignment"][0] == "Multiline"
    assert charts["big: pooled and interval"] == [
        "Margin",
        ["train/gad/pooled/big", "train/gad/pooled/big/ci_low", "train/gad/pooled/big/ci_high"],
    ]


# (d)
def test_confidence_level_is_the_configured_one(tmp_path, capsys):
    rows = make_rows(questions=16, nodes=6)
    write_records(rows, tmp_path / "records", 0)
    intervals = {}
    for level in (0.95, 0.8):
        write_report(tmp_path, confidence=level)
        printed, page = capsys.readouterr().out, (tmp_path / "report.html").read_text()
        label, other = ("80%", "95%") if level == 0.8 else ("95%", "80%")
        assert label in printed and other not in printed
        assert label in page and other not in page
        line = next(line for line in printed.splitlines() if line.startswith("big "))
        intervals[level] = [float(x) for x in re.findall(r"\[([+-][\d.]+), ([+-][\d.]+)\]", line)[0]]
    assert intervals[0.95][0] < intervals[0.8][0] < intervals[0.8][1] < intervals[0.95][1]
    # `gad report` on a `gad diagnose` directory uses the level the run recorded.
    (tmp_path / "run.json").write_text(json.dumps({"alignment": {"alignment_confidence": 0.8}, "arguments": {}}))
    write_report(tmp_path)
    assert "80% bootstrap" in capsys.readouterr().out


# (e)
def test_parquet_round_trip_keeps_the_schema(tmp_path):
    rows = make_rows(questions=2, nodes=4)
    for r in rows:
        r["param_ci_low"] = r["param_ci_high"] = math.nan  # all NaN: must stay float64
        r["question_id"] = None  # all None: must stay int64, not pyarrow's `null`
        r["token"] = None
    path = write_records(rows, tmp_path, 7)
    assert pq.read_schema(path).remove_metadata() == node_schema()
    back = read_node_records(tmp_path)
    assert len(back) == len(rows)
    for got, want in zip(back, rows, strict=True):
        for name, value in want.items():
            have = getattr(got, name)
            both_nan = isinstance(value, float) and math.isnan(value) and math.isnan(have)
            assert both_nan or have == value, name
    rollout = {"step": 7, "rollout_id": "7-0", "question_id": None, "prompt_text": "1+1=?"}
    path = write_records([{**rollout, "completion_tokens": ["2"], "reward": 1.0, "correct": True}], tmp_path / "r", 7)
    assert pq.read_schema(path).field("question_id").type == pa.int64()


def test_old_records_without_new_columns_still_report(tmp_path, capsys, caplog):
    new = {"param_proj", "logit_proj", "ideal_norm2_param", "ideal_norm2_logit", "rollouts_spent", "success_counts"}
    new |= {"distance", "region_flat"}
    rows = [{k: v for k, v in r.items() if k not in new} for r in make_rows(questions=6, nodes=4)]
    (tmp_path / "records").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "records" / "step_000000.parquet")
    with caplog.at_level(logging.WARNING):
        write_report(tmp_path)
    printed = capsys.readouterr().out
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "param_proj" in warnings[0] and "\n" not in warnings[0]
    line = next(line for line in printed.splitlines() if line.startswith("big "))
    assert line.split()[1] == "undefined"  # pooled: the old records cannot tell
    mean = aggregate(read_records(tmp_path / "records"), TEACHERS)["big"].overall
    assert f"{mean.mean:+.3f} [" in line
    assert (tmp_path / "report.html").is_file()


def test_html_report_has_a_per_question_table(tmp_path):
    rows = make_rows(questions=3, rollouts_per_question=2, nodes=4)
    run = aggregate(rows, TEACHERS)
    page = render_html(rows, [], run)
    table = page[page.index('<table id="questions">') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr>") == 1 + 3
    q = run["hint"].questions[1]
    assert f"{q.pass_rate:.2f} ({q.correct}/{q.rollouts})" in table and format_summary(q.mean) in table
