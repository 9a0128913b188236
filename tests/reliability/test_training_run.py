"""The callback never crashes the run it observes, never mixes runs, and resumes with each step once."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gad_callbacks import GradientAlignmentCallback
from gad_callbacks.integration import run_outputs
from gad_callbacks.outputs.records import read_records
from gad_callbacks.outputs.runs import find_runs
from tests.integration.helpers import distillation_trainer
from tests.integration.test_callback import attach, config


ROOT = Path(__file__).resolve().parents[2]


def run_steps(run_dir: Path) -> list[int]:
    """Steps of the node records of one run, one entry per step file's rows (duplicates would show)."""
    return sorted(
        {(r["step"], r["rollout_id"], r["position"], r["teacher"]) for r in read_records(run_dir / "records")}
    )


def steps_in(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (run_dir / "records").glob("step_*.parquet"))


def test_a_failing_record_write_is_a_counted_skip(tmp_path, monkeypatch, caplog):
    def full_disk(*args, **kwargs):
        raise OSError(27, "File too large")

    monkeypatch.setattr(run_outputs, "write_records", full_disk)
    trainer = distillation_trainer(tmp_path, steps=2)
    cb = attach(trainer, config(alignment_self_contexts=[]))
    with caplog.at_level(logging.WARNING):
        trainer.train()  # must not raise
    assert cb.pauses == 2 and cb.errors == 0
    assert cb.output_errors == 2  # one per pause
    assert "could not write the records at step 1" in caplog.text
    logged = [r["gad/output_errors"] for r in trainer.state.log_history if "gad/output_errors" in r]
    assert logged == [0.0, 1.0]  # the count is logged with the next pause
    assert [r["loss"] for r in trainer.state.log_history if "loss" in r]


def test_an_uncreatable_output_directory_does_not_stop_training(tmp_path):
    trainer = distillation_trainer(tmp_path, steps=2)
    (tmp_path / "gad").write_text("a file where our directory should go")
    cb = attach(trainer, config(alignment_self_contexts=[]))
    trainer.train()  # must not raise
    assert cb.pauses == 2 and cb.output_errors >= 2
    assert len([r for r in trainer.state.log_history if "gad/nodes" in r]) == 2  # the scalars still reach the log


def test_a_failing_logger_is_a_counted_skip(tmp_path, monkeypatch):
    from transformers import Trainer

    real = Trainer.log

    def broken(self, logs, *args, **kwargs):
        if any(k.startswith("gad/") for k in logs):
            raise RuntimeError("wandb is down")
        return real(self, logs, *args, **kwargs)

    monkeypatch.setattr(Trainer, "log", broken)
    trainer = distillation_trainer(tmp_path, steps=2)
    cb = attach(trainer, config(alignment_self_contexts=[]))
    trainer.train()
    assert cb.output_errors == 2
    assert len(find_runs(tmp_path)) == 1 and steps_in(find_runs(tmp_path)[0]) == [1, 2]  # records still written


def test_two_runs_in_one_output_dir_do_not_mix(tmp_path):
    for seed in (0, 1):
        trainer = distillation_trainer(tmp_path, steps=2, seed=seed)
        attach(trainer, config(alignment_self_contexts=[]))
        trainer.train()
    runs = find_runs(tmp_path)
    assert len(runs) == 2 and runs[0].name != runs[1].name
    for run in runs:
        assert steps_in(run) == [1, 2]
        assert (run / "run.json").is_file()
    first, second = (read_records(run / "records") for run in runs)
    assert [r["token"] for r in first] != [r["token"] for r in second]  # each run kept its own rows


def test_a_second_train_call_is_a_new_run(tmp_path):
    trainer = distillation_trainer(tmp_path, steps=1)
    cb = attach(trainer, config(alignment_self_contexts=[]))
    trainer.train()
    first = cb.run_id
    trainer.train()
    assert cb.run_id != first and cb.pauses == 1
    assert len(find_runs(tmp_path)) == 2


def test_restored_callback_binds_to_its_own_trainer(tmp_path):
    """Two trainers in one process; `restore_callback_states_from_checkpoint` rebuilds A's callback without
    arguments: it must keep observing A (records under A's output_dir), not the trainer built last."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    first = distillation_trainer(a_dir, steps=2, save_strategy="steps", save_steps=2)
    attach(first, config(alignment_self_contexts=[]))
    first.train()

    resumed = distillation_trainer(a_dir, steps=3, restore_callback_states_from_checkpoint=True)
    attach(resumed, config(alignment_self_contexts=[]))
    other = distillation_trainer(b_dir, steps=3)
    attach(other, config(alignment_self_contexts=[]))  # built last: the old code adopted this one
    resumed.train(resume_from_checkpoint=str(a_dir / "checkpoint-2"))

    live = [c for c in resumed.callback_handler.callbacks if isinstance(c, GradientAlignmentCallback)]
    assert len(live) == 1 and live[0].trainer is resumed
    assert live[0].pauses == 3 and live[0].last_step == 3
    (run,) = find_runs(a_dir)
    assert steps_in(run) == [1, 2, 3]
    assert not find_runs(b_dir)  # nothing of A's was written under B


def test_callback_without_trainer_refuses_outside_a_restore():
    with pytest.raises(ValueError, match="needs the trainer"):
        GradientAlignmentCallback()


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from transformers import TrainerCallback
    from tests.integration.helpers import distillation_trainer, parity_reward
    from tests.integration.test_callback import config
    from gad_callbacks import GradientAlignmentCallback

    STEP = {{"now": 0}}

    class Step(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            STEP["now"] = state.global_step

    def reward(*args, **kwargs):
        if STEP["now"] == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of a pause
        return parity_reward(*args, **kwargs)

    trainer = distillation_trainer({out!r}, steps={steps}, save_strategy={save!r}, save_steps=2)
    trainer.add_callback(Step())
    cfg = config(alignment_self_contexts=[])
    trainer.add_callback(GradientAlignmentCallback(trainer, cfg, reward_func=reward))
    trainer.train(resume_from_checkpoint={resume!r})
    """
)


def script(out: Path, steps: int, kill_at: int = -1, resume: str | None = None, save: str = "steps") -> list[str]:
    code = KILLED_RUN.format(root=str(ROOT), out=str(out), steps=steps, kill_at=kill_at, resume=resume, save=save)
    return [sys.executable, "-c", code]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "PYTHONPATH": str(ROOT)}


def run_script(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(script(*args, **kwargs), env=ENV, capture_output=True, text=True, timeout=300)


def test_two_runs_at_once_in_one_output_dir_keep_their_records(tmp_path):
    procs = [
        subprocess.Popen(script(tmp_path, steps=3, save="no"), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    runs = find_runs(tmp_path)
    assert len(runs) == 2 and runs[0].name != runs[1].name
    for run in runs:
        assert steps_in(run) == [1, 2, 3]
        assert len(run_steps(run)) == len(read_records(run / "records"))


def test_resume_after_a_kill_mid_pause_has_each_step_once(tmp_path):
    killed = run_script(tmp_path, steps=6, kill_at=6, resume=None)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (run,) = find_runs(tmp_path)
    assert steps_in(run) == [1, 2, 3, 4, 5]  # step 6 died mid-pause; checkpoints at 2 and 4
    assert all(p.name.startswith("step_") for p in (run / "records").iterdir())  # nothing torn left behind
    before = {r["rollout_id"] for r in read_records(run / "records") if r["step"] == 5}

    resumed = run_script(tmp_path, steps=6, kill_at=-1, resume=str(tmp_path / "checkpoint-4"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (same,) = find_runs(tmp_path)  # the resumed run writes on under the same run id
    assert same == run
    assert steps_in(run) == [1, 2, 3, 4, 5, 6]
    keys = run_steps(run)
    assert len(keys) == len(read_records(run / "records"))  # no row twice
    assert {r["rollout_id"] for r in read_records(run / "records") if r["step"] == 5} == before


def test_a_nan_teacher_costs_only_its_own_numbers(tmp_path):
    import math

    import torch

    from tests.integration.helpers import TOKENIZER, tiny_lm

    broken = tiny_lm(2)
    with torch.no_grad():
        broken.get_output_embeddings().weight[5] = float("nan")  # NaN logits at every position
    trainer = distillation_trainer(tmp_path, steps=1)
    cb = attach(trainer, config(alignment_self_contexts=[]), teachers={"broken": (broken, TOKENIZER)})
    trainer.train()
    assert cb.errors == 0 and cb.pauses == 1  # the pause was not thrown away
    (run,) = find_runs(tmp_path)
    rows = read_records(run / "records")
    assert {r["undefined"] for r in rows if r["teacher"] == "broken"} == {"non_finite_teacher"}
    assert any(not math.isnan(r["param_cos"]) for r in rows if r["teacher"] == "teacher")


def test_a_broken_console_is_a_counted_skip(tmp_path, monkeypatch):
    class BrokenConsole:  # our console only: the trainer's own progress printing stays as it is
        @staticmethod
        def write(*args, **kwargs):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(run_outputs, "tqdm", BrokenConsole)
    trainer = distillation_trainer(tmp_path, steps=2)
    cb = attach(trainer, config(alignment_self_contexts=[]))
    trainer.train()  # must not raise
    assert cb.pauses == 2 and cb.output_errors == 2


def test_two_callbacks_on_one_trainer_resume_their_own_runs(tmp_path):
    """transformers appends the states of same-type callbacks at every checkpoint: each must find its own."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def build(steps):
        trainer = distillation_trainer(tmp_path, steps=steps, save_strategy="steps", save_steps=2, report_to="none")
        return trainer, [attach(trainer, config(alignment_self_contexts=[], alignment_seed=s)) for s in (0, 1)]

    first, callbacks = build(4)
    first.train()
    ids = [cb.run_id for cb in callbacks]
    resumed, again = build(4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert [cb.run_id for cb in again] == ids and [cb.pauses for cb in again] == [4, 4]
    assert sorted(run.name for run in find_runs(tmp_path)) == sorted(ids)
    for run in find_runs(tmp_path):
        assert steps_in(run) == [1, 2, 3, 4]
        # The callback's own TensorBoard events: the steps the resumed run redid are not there twice.
        acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
        acc.Reload()
        assert [e.step for e in acc.Scalars("train/gad/nodes")] == [1, 2, 3, 4]
