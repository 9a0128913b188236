"""`gad`'s expected failures are one line on stderr and exit status 2, found before anything is computed; help exits 0."""

from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gad_callbacks.cli import diagnose as diagnose_module
from gad_callbacks.cli import main
from gad_callbacks.cli import report as report_module
from gad_callbacks.diagnosis.rollout_pass import PassResult
from gad_callbacks.outputs.records import write_records
from gad_callbacks.outputs.runs import write_run_info
from gad_callbacks.world.datasets import load_questions
from tests.reliability.test_files_and_runs import SMALL


def one_error_line(capsys) -> str:
    """The whole of stderr, which must be exactly one `gad: error:` line."""
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("gad: error: "), err
    return err[0]


@pytest.fixture
def no_compute(monkeypatch):
    """Records any attempt to read the dataset or load a model (neither may happen before the cheap checks)."""
    calls = []
    monkeypatch.setattr(diagnose_module, "load_questions", lambda *a, **k: calls.append("dataset") or 1 / 0)
    monkeypatch.setattr(diagnose_module, "load_model", lambda *a, **k: calls.append("model") or 1 / 0)
    return calls


def test_abbreviated_keys_are_unknown_not_expanded(tmp_path, capsys, no_compute):
    code = main(["diagnose", "--num_q", "3", "--output_dir", str(tmp_path / "o")])
    assert code == 2 and one_error_line(capsys) == "gad: error: unknown config key(s): num_q"
    assert no_compute == []


def test_unavailable_device_is_one_line_naming_the_fix(tmp_path, capsys, monkeypatch, no_compute):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["diagnose", "--device", "cuda", "--output_dir", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys)
    assert "'cuda'" in line and "CUDA is not available" in line and "--device cpu" in line
    assert main(["diagnose", "--device", "gpu:x", "--output_dir", str(tmp_path / "o")]) == 2
    assert "'gpu:x'" in (line := one_error_line(capsys)) and "--device cpu" in line
    assert no_compute == [] and not (tmp_path / "o").exists()


def test_unwritable_output_dir_fails_before_any_compute(tmp_path, capsys, no_compute):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = blocker / "out"
    assert main(["diagnose", *SMALL, "--output_dir", str(out)]) == 2
    line = one_error_line(capsys)
    assert str(out) in line and "not writable" in line
    assert no_compute == []


def test_a_failed_diagnose_leaves_no_directory_it_created(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("")
    out = tmp_path / "new" / "out"
    assert main(["diagnose", *SMALL, "--dataset", str(data), "--output_dir", str(out)]) == 2
    line = one_error_line(capsys)
    assert str(data) in line and "empty" in line
    assert not (tmp_path / "new").exists()


def test_empty_and_corrupt_dataset_files_name_the_file(tmp_path, capsys):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "answer": pa.array([], pa.string())}), empty)
    assert main(["diagnose", *SMALL, "--dataset", str(empty), "--output_dir", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys)
    assert str(empty) in line and "no rows" in line

    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 torn")
    with pytest.raises(ValueError, match="corrupt.parquet.*not a readable parquet"):
        load_questions(str(corrupt))
    for name, text in (("blank.jsonl", "\n\n"), ("none.json", "[]"), ("header.csv", "prompt,answer\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=f"{name}.*(empty|no rows)"):
            load_questions(str(tmp_path / name))
    (tmp_path / "ok.csv").write_text("prompt,answer\n1+1=?,2\n2+2=?,4\n")
    assert load_questions(str(tmp_path / "ok.csv"))["answer"] == [2, 4]


def test_help_exits_zero_and_bare_gad_prints_the_commands(capsys):
    assert main(["diagnose", "--help"]) == 0
    captured = capsys.readouterr()
    assert "usage: gad diagnose" in captured.out and "--overwrite_output_dir" in captured.out and not captured.err
    assert main(["report", "--help"]) == 0
    captured = capsys.readouterr()
    assert "usage: gad report" in captured.out and "--run ID" in captured.out and not captured.err
    assert main([]) == 2
    usage = capsys.readouterr().err.splitlines()
    assert len(usage) >= 4 and any(line.split()[:1] == ["diagnose"] for line in usage)
    assert any(line.split()[:1] == ["report"] for line in usage)
    assert main(["--help"]) == 0 and "diagnose" in capsys.readouterr().out
    assert main(["bogus"]) == 2 and "'bogus'" in one_error_line(capsys)


def test_every_failure_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(report_module, "write_report", broken)
    assert main(["report", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "RuntimeError: boom second line" in line and "--debug" in line
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "report", str(tmp_path)])
    with pytest.raises(ValueError, match="num_q"):
        main(["diagnose", "--num_q", "3", "--debug"])
    monkeypatch.undo()
    assert main(["report", str(tmp_path), "--confidence", "1.5"]) == 2
    assert "(0, 1)" in one_error_line(capsys)
    assert main(["report", str(tmp_path), "--confidence", "high"]) == 2
    assert "--confidence" in one_error_line(capsys)


def test_report_tells_no_records_from_zero_rows(tmp_path, capsys):
    run = tmp_path / "run"
    write_run_info(run, {"skipped": {"verifier_error": 12}})
    assert main(["report", str(run)]) == 2
    line = one_error_line(capsys)
    assert "no records" in line and str(run) in line and "verifier_error=12" in line

    write_records([], run / "records", 0)
    assert main(["report", str(run)]) == 2
    line = one_error_line(capsys)
    assert "run run: 1 record file(s) but zero node rows; skipped: verifier_error=12" in line

    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no records" in (line := one_error_line(capsys)) and "nowhere" in line


def test_diagnose_with_every_node_skipped_keeps_the_run_and_says_why(tmp_path, capsys, monkeypatch):
    skipped = PassResult(skipped=Counter(verifier_error=2))
    monkeypatch.setattr(diagnose_module, "diagnose_rollouts", lambda *a, **k: skipped)
    out = tmp_path / "out"
    assert main(["diagnose", *SMALL, "--output_dir", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gad: error:")]
    assert len(errors) == 1 and "zero node rows; skipped: verifier_error=2" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == ["records", "rollouts", "run.json", "tensorboard"]


def test_a_running_diagnose_holds_its_output_dir(tmp_path, capsys):
    import os
    import subprocess
    import sys

    out = tmp_path / "o"
    out.mkdir()
    (out / ".gad-lock").write_text(str(os.getpid()))  # a live process holds it
    assert main(["diagnose", *SMALL, "--output_dir", str(out)]) == 2
    assert "in use by another gad diagnose" in one_error_line(capsys)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".gad-lock").write_text(dead.stdout.strip())  # left by a process that died: taken over
    assert main(["diagnose", *SMALL, "--output_dir", str(out)]) == 0
    assert not (out / ".gad-lock").exists() and (out / "run.json").is_file()


def test_stray_arguments_missing_teachers_and_config_equals(tmp_path, capsys):
    assert main(["diagnose", "stray", "--output_dir", str(tmp_path / "a")]) == 2
    assert one_error_line(capsys) == "gad: error: unexpected argument(s): stray (keys are given as --key value)"
    assert main(["diagnose", *SMALL, "--teachers", "t=/nonexistent", "--output_dir", str(tmp_path / "b")]) == 2
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("gad")]
    assert len(line) == 1 and "teacher 't'" in line[0] and "/nonexistent" in line[0]  # no tokenizer warning first
    config = tmp_path / "c.yaml"
    config.write_text("num_questions: 1\nnum_q: 2\n")
    assert main(["diagnose", f"--config={config}", "--output_dir", str(tmp_path / "c")]) == 2
    assert "num_q" in one_error_line(capsys)  # the file was read (same as --config FILE)


def test_a_torn_step_drops_its_rollouts_from_the_totals(tmp_path, capsys):
    from tests.outputs.test_aggregate import make_rows

    for step in (0, 1):
        write_records(make_rows(questions=3, nodes=2, step=step), tmp_path / "records", step)
        rollouts = [
            {
                "step": step,
                "rollout_id": f"{step}-{q}",
                "question_id": q,
                "prompt_text": "p",
                "completion_tokens": ["a"],
                "reward": 1.0,
                "correct": True,
            }
            for q in range(3)
        ]
        write_records(rollouts, tmp_path / "rollouts", step)
    torn = tmp_path / "records" / "step_000001.parquet"
    torn.write_bytes(torn.read_bytes()[:-50])
    assert main(["report", str(tmp_path)]) == 0
    assert "3 rollouts diagnosed" in capsys.readouterr().out
