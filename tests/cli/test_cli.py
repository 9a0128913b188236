"""`gad diagnose` / `gad report` on the embedded default: outputs, the headline finding, errors, the HTML report."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from gad_callbacks.cli import main
from gad_callbacks.outputs.records import read_records
from gad_callbacks.outputs.summary import summarize_teachers


ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "diagnose_default.yaml")
TEACHERS = ["teacher", "solution", "answer", "hint"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The default diagnostic, a little smaller than the configured one so that the suite stays fast."""
    out = tmp_path_factory.mktemp("diagnose")
    code = main(["diagnose", "--config", CONFIG, "--num_questions", "16", "--output_dir", str(out)])
    assert code == 0
    return out


def test_diagnose_writes_records_tensorboard_and_report(default_run, capsys):
    rows = read_records(default_run / "records")
    rollouts = read_records(default_run / "rollouts")
    assert {r["teacher"] for r in rows} == set(TEACHERS)
    assert len(rollouts) == 32
    assert 0 < sum(r["correct"] for r in rollouts) < 32, "the default student should both succeed and fail"
    assert list((default_run / "tensorboard").glob("events.out.tfevents.*"))
    assert (default_run / "report.html").stat().st_size > 10_000
    info = json.loads((default_run / "run.json").read_text())
    assert info["kind"] == "diagnose" and info["created"] and info["arguments"]["num_questions"] == 16
    assert not [p.name for p in default_run.iterdir() if p.name.startswith(".")], "staging or probe files left"
    # `gad report` rebuilds the same summary from the saved records, and says which run it read.
    assert main(["report", str(default_run)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"gad report: run {info['run_id']} at {default_run} (the only run under")
    for teacher in TEACHERS:
        assert f"\n{teacher} " in printed
    assert "on incorrect rollouts" in printed and "paired difference" in printed
    # Both numbers per teacher, and the legend naming the configured level.
    assert "pooled" in printed and "mean of node cosines" in printed and "95% bootstrap over" in printed


def test_outcome_split_partitions_the_nodes_and_reports_each_side(default_run):
    """Alignment by rollout outcome (the method's headline comparison) is computed on every node of each side, each
    with its own count and interval. Which side is higher is a finding, not a property: on the default world it goes
    either way from one sample to the next (README, "Reading it"), so it is printed, not asserted."""
    rows = read_records(default_run / "records")
    rollouts = read_records(default_run / "rollouts")
    correct = {r["rollout_id"] for r in rollouts if r["correct"]}
    for s in summarize_teachers(rows):
        mine = [r for r in rows if r["teacher"] == s.teacher]
        on_correct = sum(r["rollout_id"] in correct for r in mine)
        assert s.pooled_correct.n + s.pooled_correct.n_undefined == on_correct
        assert s.pooled_incorrect.n + s.pooled_incorrect.n_undefined == len(mine) - on_correct
        assert s.pooled.n == s.pooled_correct.n + s.pooled_incorrect.n
        for side in (s.pooled_incorrect, s.pooled_correct):
            assert side.lower <= side.mean <= side.upper
        print(f"{s.teacher}: pooled on incorrect {s.pooled_incorrect} vs on correct {s.pooled_correct}")


def test_compare_ranks_the_teachers_of_the_default_run(default_run, capsys):
    """`gad compare` answers "which teacher, and how sure" from the saved records; `gad report` ends with the same."""
    assert main(["compare", str(default_run)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert sorted(line.split()[1] for line in lines if line[:1].isdigit()) == sorted(TEACHERS)
    pairs = [line for line in lines if " - " in line.split("[")[0] and line.split()[0] in TEACHERS]
    assert len(pairs) == 6 and all("resolved" in line or "no significant difference" in line for line in pairs)
    words = next(line for line in lines if line.startswith("in words: "))
    assert "P(best)" in words and "Best: " in words
    assert main(["report", str(default_run)]) == 0
    assert printed.split("\n", 1)[1].strip() in capsys.readouterr().out


def error_line(capsys) -> str:
    """The one line `gad` prints for a user error (library progress bars may precede it on stderr)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gad: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_config_errors_are_one_line_and_name_the_problem(tmp_path, capsys):
    assert main(["diagnose", "--config", CONFIG, "--num_questionz", "3"]) == 2
    assert "num_questionz" in error_line(capsys)
    out = ["--output_dir", str(tmp_path / "o")]  # not the config's runs/ in the working directory
    assert main(["diagnose", "--config", CONFIG, "--student", str(tmp_path / "missing"), *out]) == 2
    line = error_line(capsys)
    assert "student" in line and "missing" in line
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "1+1=?", "solution": "2"}\n')
    assert main(["diagnose", "--config", CONFIG, "--dataset", str(data), *out]) == 2
    assert "'answer'" in error_line(capsys)
    data.write_text('{"prompt": "1+1=?", "answer": "2"}\n')
    assert main(["diagnose", "--config", CONFIG, "--dataset", str(data), *out]) == 2
    assert "['solution']" in error_line(capsys)
    assert main(["report", str(tmp_path)]) == 2
    assert "no records" in capsys.readouterr().err


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_html_report_renders_without_errors_in_headless_chromium(default_run):
    browser = chromium()
    assert browser is not None, "headless Chromium is needed for this test: apt-get install chromium (.ci/run does)"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={default_run / 'chrome-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        "--dump-dom",
    ]
    done = subprocess.run(
        [browser, *flags, (default_run / "report.html").as_uri()], capture_output=True, text=True, timeout=120
    )
    dom = done.stdout
    assert 'data-rendered="yes"' in dom, "the report's script did not finish"
    assert '<div id="errors"></div>' in dom, "the page recorded a script error"
    assert "Uncaught" not in done.stderr, done.stderr[-2000:]
    for teacher in TEACHERS:
        assert f'<option value="{teacher}">' in dom
    assert "background: rgba(" in dom, "diagnosed tokens were not coloured"
