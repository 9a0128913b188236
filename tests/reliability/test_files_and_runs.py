"""Files are written atomically and read whole; runs are found, picked and replaced without mixing or losing one."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gad_callbacks.cli import diagnose as diagnose_module
from gad_callbacks.cli import main
from gad_callbacks.outputs.files import atomic_write, atomic_write_text
from gad_callbacks.outputs.records import drop_steps_after, read_records, write_records
from gad_callbacks.outputs.runs import (
    clear_run_files,
    find_runs,
    new_run_id,
    resolve_run,
    write_run_info,
)
from tests.outputs.test_aggregate import make_rows


ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "--num_questions",
    "2",
    "--rollouts_per_question",
    "1",
    "--alignment_targeted_rollouts",
    "2",
    "--alignment_nodes_per_rollout",
    "1",
    "--max_completion_length",
    "8",
]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (hidden ones too) by relative path, with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def error_lines(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


# -- atomic files -------------------------------------------------------------------------------------------------


def test_a_writer_failing_halfway_leaves_the_previous_file_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    atomic_write_text(target, "old")

    def half_then_fail(tmp):
        Path(tmp).write_text("ne")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["run.json"]

    # The same through `write_records`: pyarrow writing half a file, then failing.
    rows = make_rows(questions=2, nodes=4)
    path = write_records(rows, tmp_path / "records", 3)

    def torn_write(table, where, **kwargs):
        Path(where).write_bytes(path.read_bytes()[:100])
        raise OSError(27, "File too large")

    monkeypatch.setattr(pq, "write_table", torn_write)
    with pytest.raises(OSError, match="too large"):
        write_records(make_rows(questions=5, nodes=4), tmp_path / "records", 3)
    assert os.listdir(tmp_path / "records") == [path.name]
    assert len(read_records(tmp_path / "records")) == len(rows)


def test_a_file_size_limit_mid_write_keeps_the_old_step_file_whole(tmp_path):
    rows = make_rows(questions=2, nodes=4)
    write_records(rows, tmp_path, 0)
    # A process whose files may not exceed 4 KiB rewrites step 0 with far more rows: the write fails (EFBIG; SIGXFSZ
    # ignored, as a full disk would), and the old file must still be read in full.
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from gad_callbacks.outputs.records import write_records
        from tests.outputs.test_aggregate import make_rows
        rows = make_rows(questions=40, nodes=8)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            write_records(rows, {str(tmp_path)!r}, 0)
        except OSError as err:
            print("raised:", err)
            sys.exit(3)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stdout + done.stderr[-2000:]
    assert os.listdir(tmp_path) == ["step_000000.parquet"]
    back = read_records(tmp_path)
    assert len(back) == len(rows) and back[0]["rollout_id"] == rows[0]["rollout_id"]


def test_an_unreadable_step_file_is_skipped_with_one_warning(tmp_path, caplog, capsys):
    records = tmp_path / "records"
    write_records(make_rows(questions=6, nodes=4, step=0), records, 0)
    torn = write_records(make_rows(questions=6, nodes=4, step=1), records, 1)
    torn.write_bytes(torn.read_bytes()[:-50])  # a torn parquet (no footer)
    (records / "step_000002.jsonl").write_text('{"step": 2, "teach')  # a torn jsonl line
    (records / ".step_000003.parquet.tmp-99-abcd").write_bytes(b"partial")  # a killed writer's temp file
    with caplog.at_level(logging.WARNING):
        rows = read_records(records)
    assert {r["step"] for r in rows} == {0} and len(rows) == len(make_rows(questions=6, nodes=4))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "2 unreadable" in warnings[0] and "step_000001.parquet" in warnings[0]
    assert "step_000002.jsonl" in warnings[0] and ".tmp-" not in warnings[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["report", str(tmp_path)]) == 0
    assert "step_000001.parquet" in " ".join(r.getMessage() for r in caplog.records)
    assert "\nbig " in capsys.readouterr().out and (tmp_path / "report.html").is_file()


def test_drop_steps_after_removes_only_later_steps(tmp_path):
    for step in (0, 5, 10):
        write_records(make_rows(questions=1, nodes=2, step=step), tmp_path, step)
    (tmp_path / "step_000012.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("mine")
    assert drop_steps_after(tmp_path, 5) == 2
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "step_000000.parquet", "step_000005.parquet"]
    assert drop_steps_after(tmp_path, 5) == 0 and drop_steps_after(tmp_path / "absent", 0) == 0


# -- runs ---------------------------------------------------------------------------------------------------------


def test_run_ids_are_time_ordered_and_unique():
    ids = [new_run_id() for _ in range(300)]
    assert len(set(ids)) == 300
    assert all(re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", i) for i in ids)
    assert [i[:15] for i in ids] == sorted(i[:15] for i in ids)


def test_write_run_info_adds_id_and_keeps_creation_time(tmp_path):
    info = {"status": "running"}
    write_run_info(tmp_path / "abc", info)
    first = (tmp_path / "abc" / "run.json").read_text()
    write_run_info(tmp_path / "abc", {"status": "done"})
    saved = json.loads((tmp_path / "abc" / "run.json").read_text())
    assert saved["run_id"] == "abc" and saved["status"] == "done" and info == {"status": "running"}
    assert saved["created"] == json.loads(first)["created"]
    assert os.listdir(tmp_path / "abc") == ["run.json"]


def make_training_output_dir(out: Path) -> dict[str, Path]:
    """
    A training `output_dir` with a legacy run (`gad/records/`, no run.json) and two runs under `gad/<id>/` whose
    teacher "big" is renamed "first" / "second", plus a staging directory that must never count as a run.
    """
    legacy = out / "gad"
    write_records(make_rows(questions=4, nodes=4), legacy / "records", 0)
    os.utime(legacy / "records", (1_000_000_000, 1_000_000_000))  # older than both runs below
    runs = {"gad": legacy}
    for run_id, created, teacher in (
        ("20260101-000000-aaaaaa", "2026-01-01T00:00:00+00:00", "first"),
        ("20260301-000000-bbbbbb", "2026-03-01T00:00:00+00:00", "second"),
    ):
        runs[run_id] = legacy / run_id
        rows = [{**r, "teacher": teacher if r["teacher"] == "big" else r["teacher"]} for r in make_rows(4, nodes=4)]
        write_records(rows, runs[run_id] / "records", 2)
        write_run_info(runs[run_id], {"created": created, "alignment": {"alignment_seed": 1}})
    write_run_info(out / ".gad-staging-1", {"created": "2027-01-01T00:00:00+00:00"})
    return runs


def test_find_and_resolve_runs_in_every_layout(tmp_path, capsys):
    out = tmp_path / "out"
    runs = make_training_output_dir(out)
    expected = list(runs.values())  # legacy (oldest mtime), then by `created`
    assert find_runs(out) == expected
    assert find_runs(out / "gad") == expected
    assert find_runs(runs["20260101-000000-aaaaaa"]) == [runs["20260101-000000-aaaaaa"]]

    chosen, message = resolve_run(out)
    assert chosen == runs["20260301-000000-bbbbbb"]
    assert "run 20260301-000000-bbbbbb" in message and "latest of 3" in message and "--run ID" in message
    assert "\n" not in message
    assert resolve_run(out, "20260101-000000-aaaaaa")[0] == runs["20260101-000000-aaaaaa"]
    assert resolve_run(out, "gad")[0] == runs["gad"]
    with pytest.raises(ValueError, match="20260101-000000-aaaaaa, 20260301-000000-bbbbbb"):
        resolve_run(out, "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty"))):
        resolve_run(tmp_path / "empty")

    # `gad report` reads one run, the latest unless --run picks another, and says which.
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("gad report: run 20260301-000000-bbbbbb")
    assert "\nsecond " in printed and "\nfirst " not in printed and "\nbig " not in printed
    assert main(["report", "--run", "20260101-000000-aaaaaa", str(out), "--confidence", "0.8"]) == 0
    printed = capsys.readouterr().out
    assert "\nfirst " in printed and "\nsecond " not in printed and "80% bootstrap" in printed
    assert (runs["20260101-000000-aaaaaa"] / "report.html").is_file()


def test_clear_run_files_removes_exactly_ours(tmp_path):
    for name in ("records", "rollouts", "tensorboard", "data"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
    for name in ("run.json", "report.html", "notes.txt", "config.yaml"):
        (tmp_path / name).write_text("x")
    clear_run_files(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.yaml", "data", "notes.txt"]


# -- gad diagnose: one run per output directory, replaced only on request and only once complete -----------------


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("first") / "out"
    assert main(["diagnose", *SMALL, "--output_dir", str(out)]) == 0
    (out / "notes.txt").write_text("the user's own file")
    return out


def test_diagnose_refuses_a_run_dir_and_replaces_it_on_request(first_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    shutil.copytree(first_run, out)
    before = snapshot(out)
    old_events = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert old_events and "run.json" in before
    loaded = []
    monkeypatch.setattr(diagnose_module, "load_model", lambda *a: loaded.append(a))
    capsys.readouterr()
    assert main(["diagnose", *SMALL, "--output_dir", str(out)]) == 2
    (line,) = error_lines(capsys)
    assert line.startswith("gad: error:") and str(out) in line and "--overwrite_output_dir true" in line
    assert loaded == [] and snapshot(out) == before

    monkeypatch.undo()
    assert main(["diagnose", *SMALL, "--output_dir", str(out), "--overwrite_output_dir", "true"]) == 0
    events = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert len(events) == 1 and events[0] not in old_events
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["notes.txt", "records", "rollouts", "tensorboard", "run.json", "report.html"]
    )
    assert (out / "run.json").read_bytes() != before["run.json"]
    assert find_runs(out) == [out]


def test_a_failure_while_overwriting_leaves_the_old_run_byte_identical(first_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    shutil.copytree(first_run, out)
    before = snapshot(out)

    def fail(*args, **kwargs):
        raise OSError("injected: TensorBoard cannot write")

    # Late: after the records are written, before run.json and the report.
    monkeypatch.setattr(diagnose_module.AlignmentBoard, "log", fail)
    capsys.readouterr()
    assert main(["diagnose", *SMALL, "--output_dir", str(out), "--overwrite_output_dir", "true"]) == 2
    errors = [line for line in error_lines(capsys) if line.startswith("gad: error:")]
    assert len(errors) == 1 and "injected" in errors[0]
    assert snapshot(out) == before
