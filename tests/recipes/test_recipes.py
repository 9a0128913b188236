"""Each recipe runs for 2 steps on the embedded default, in a subprocess, and writes what it promises."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gad_callbacks.outputs.records import read_records
from gad_callbacks.outputs.runs import find_runs


ROOT = Path(__file__).resolve().parents[2]
RECIPES = {
    "distill_with_alignment": ("distill_default.yaml", ["teacher", "solution", "answer"]),
    "gkd_with_alignment": ("gkd_default.yaml", ["teacher", "solution"]),
    "self_distill_with_alignment": ("self_distill_default.yaml", ["sdft", "teacher", "answer", "hint"]),
    "gold_with_alignment": ("gold_default.yaml", ["cross_teacher", "teacher", "solution", "answer"]),
    "iw_opd_with_alignment": ("iw_opd_default.yaml", ["teacher", "solution", "answer"]),
    "sdpo_with_alignment": ("sdpo_default.yaml", ["sdpo", "teacher", "solution", "answer"]),
}
ROUTED = {"route_teachers": ("route_teachers_default.yaml", ["solution", "answer", "hint"])}


def tensorboard_tags(output_dir: Path) -> set[str]:
    tags = set()
    for events in output_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags.update(acc.Tags()["scalars"])
    return tags


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}


def recipe_command(recipe: str, output_dir: Path, *extra: str) -> list[str]:
    """The recipe on its default config, shrunk to a few seconds per step."""
    return [
        sys.executable,
        str(ROOT / "recipes" / f"{recipe}.py"),
        "--config",
        str(ROOT / "configs" / {**RECIPES, **ROUTED}[recipe][0]),
        "--output_dir",
        str(output_dir),
        "--max_steps",
        "2",
        "--logging_steps",
        "1",
        "--num_train_questions",
        "32",
        "--alignment_every_n_steps",
        "1",
        "--alignment_rollouts_per_pause",
        "2",
        "--alignment_nodes_per_rollout",
        "2",
        "--alignment_num_bootstrap",
        "20",
        *extra,
    ]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_runs_two_steps_on_the_default(tmp_path, recipe):
    teachers = RECIPES[recipe][1]
    cmd = recipe_command(recipe, tmp_path)
    done = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gad step 2:" in done.stdout + done.stderr
    (run,) = find_runs(tmp_path)  # one training run, under gad/<run_id>/
    rows = read_records(run / "records")
    assert {r["teacher"] for r in rows} == set(teachers)
    assert {r["step"] for r in rows} == {1, 2}
    tags = tensorboard_tags(tmp_path)
    for teacher in teachers:
        assert f"train/gad/alignment/{teacher}/nodes" in tags
    assert "train/loss" in tags
    assert (tmp_path / "model.safetensors").is_file() or list(tmp_path.glob("*.safetensors"))


def test_recipe_resumes_from_a_checkpoint_with_each_step_once(tmp_path):
    first = recipe_command("distill_with_alignment", tmp_path, "--save_strategy", "steps", "--save_steps", "1")
    done = subprocess.run(first, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = find_runs(tmp_path)
    # Resume from step 1 (as after a crash at step 2) and go one step further: steps 2 and 3 are redone / new.
    resumed = recipe_command(
        "distill_with_alignment",
        tmp_path,
        "--resume_from_checkpoint",
        str(tmp_path / "checkpoint-1"),
        "--max_steps",
        "3",
    )
    done = subprocess.run(resumed, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gad step 1:" not in done.stdout + done.stderr  # resumed, not restarted at step 1
    assert find_runs(tmp_path) == [run]  # the same run id
    files = sorted(p.name for p in (run / "records").iterdir())
    assert files == ["step_000001.parquet", "step_000002.parquet", "step_000003.parquet"]
    rows = read_records(run / "records")
    keys = [(r["step"], r["rollout_id"], r["position"], r["teacher"]) for r in rows]
    assert len(keys) == len(set(keys))


def test_router_recipe_trains_the_default_student_with_its_choices(tmp_path):
    cmd = recipe_command("route_teachers", tmp_path)
    done = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = find_runs(tmp_path)
    rows = read_records(run / "records")
    assert {r["teacher"] for r in rows} == set(ROUTED["route_teachers"][1])
    assert {r["step"] for r in rows} == {0, 1, 2}  # measured before the first step, then at every pause
    tags = tensorboard_tags(tmp_path)
    assert {"train/gad/router/choice", "train/loss"} <= tags
    assert {f"train/gad/router/prob/{c}" for c in ROUTED["route_teachers"][1]} <= tags
    assert list(tmp_path.glob("*.safetensors"))
