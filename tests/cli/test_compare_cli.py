"""`gad compare RUN_DIR` on a saved run: what it prints, the run's settings, the same block in `gad report`, errors."""

import json

import pytest

from gad_callbacks.cli import main
from gad_callbacks.outputs.records import write_records
from tests.outputs.test_compare import node_rows


@pytest.fixture
def saved_run(tmp_path):
    """A saved run of three teachers (two far apart, one a near twin of the best) recorded at an 80% level."""
    run = tmp_path / "run"
    write_records(node_rows({"strong": 0.6, "close": 0.57, "weak": 0.0}, questions=24, seed=2), run / "records", 0)
    info = {"run_id": "run", "alignment": {"alignment_confidence": 0.8}, "arguments": {"run_seed": 5}}
    (run / "run.json").write_text(json.dumps(info))
    return run


def test_compare_prints_the_ranking_pairs_slices_and_answer(saved_run, capsys):
    assert main(["compare", str(saved_run)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].startswith(f"gad compare: run run at {saved_run}")
    ranks = [line.split()[1] for line in lines if line[:1].isdigit()]
    assert ranks[2] == "weak" and set(ranks[:2]) == {"strong", "close"}
    assert "80% bootstrap" in printed and "95%" not in printed  # the run's level
    assert "pairs on the same nodes" in printed and "by slice" in printed and "incorrect rollouts" in printed
    words = next(line for line in lines if line.startswith("in words: "))
    assert "P(best)" in words and "weak" in words
    assert not (saved_run / "report.html").exists(), "gad compare writes nothing"
    # The run's seed: the same records and settings print the same block every time; --confidence overrides.
    assert main(["compare", str(saved_run)]) == 0 and capsys.readouterr().out == printed
    assert main(["compare", str(saved_run), "--confidence", "0.9"]) == 0 and "90% bootstrap" in capsys.readouterr().out


def test_report_ends_with_the_same_comparison(saved_run, capsys):
    assert main(["compare", str(saved_run)]) == 0
    block = capsys.readouterr().out.split("\n", 1)[1]
    assert main(["report", str(saved_run)]) == 0
    printed = capsys.readouterr().out
    assert block.strip() in printed
    page = (saved_run / "report.html").read_text()
    assert "<h2>Comparison</h2>" in page and 'id="pairs"' in page


def test_compare_errors_are_one_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("gad: error: no records")
    assert main(["compare", str(tmp_path), "--confidence", "1.5"]) == 2
    assert "(0, 1)" in capsys.readouterr().err
    assert main(["compare", "--help"]) == 0 and "usage: gad compare" in capsys.readouterr().out
    assert main(["--help"]) == 0 and "compare RUN_DIR" in capsys.readouterr().out
