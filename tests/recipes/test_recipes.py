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
}


def tensorboard_tags(output_dir: Path) -> set[str]:
    tags = set()
    for events in output_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags.update(acc.Tags()["scalars"])
    return tags


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_runs_two_steps_on_the_default(tmp_path, recipe):
    config, teachers = RECIPES[recipe]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / f"{recipe}.py"),
        "--config",
        str(ROOT / "configs" / config),
        "--output_dir",
        str(tmp_path),
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
    ]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
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
