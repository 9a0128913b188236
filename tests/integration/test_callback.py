"""GradientAlignmentCallback on real TRL trainers: logs, records, no perturbation, clear errors."""

import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gad_callbacks import GradientAlignmentCallback, GradientAlignmentConfig
from gad_callbacks.integration.adapters import adapter_for
from gad_callbacks.method.stats import pooled_ratio, rank_correlation
from gad_callbacks.outputs.records import read_records
from gad_callbacks.outputs.runs import find_runs
from tests.integration.helpers import (
    distillation_trainer,
    gkd_trainer,
    parity_reward,
    save_tiny,
    sdft_trainer,
    tiny_lm,
)


def config(**overrides):
    base = dict(
        alignment_every_n_steps=1,
        alignment_rollouts_per_pause=2,
        alignment_nodes_per_rollout=3,
        alignment_targeted_rollouts=4,
        alignment_num_bootstrap=50,
        alignment_self_contexts=["hint:base={prompt} Hint: {hint}", "answer:live={prompt} The answer is {answer}."],
    )
    base.update(overrides)
    return GradientAlignmentConfig(**base)


def attach(trainer, cfg=None, **kwargs):
    cb = GradientAlignmentCallback(trainer, cfg or config(), reward_func=parity_reward, **kwargs)
    trainer.add_callback(cb)
    return cb


def scalars(output_dir):
    """Every scalar tag -> {step: value} from the TensorBoard event files under output_dir."""
    out = {}
    for events in output_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "histograms": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
        for tag in acc.Tags()["histograms"]:
            out.setdefault("histograms", set()).add(tag)
        out.setdefault("tensors", set()).update(acc.Tags()["tensors"])
    return out


def losses_and_weights(trainer):
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return losses, weights


def check_logged(trainer, output_dir, teachers, steps):
    tb = scalars(output_dir)
    for teacher in teachers:
        key = f"train/gad/alignment/{teacher}/nodes"
        assert key in tb, f"missing {key}; have {sorted(k for k in tb if 'gad' in k)[:20]}"
        assert sorted(tb[key]) == list(range(1, steps + 1))
    assert {f"gad/alignment_hist/{t}" for t in teachers} <= tb["histograms"]
    assert "custom_scalars__config__" in tb["tensors"], "the one-chart-per-view layout is missing"
    (run,) = find_runs(output_dir)  # one training run, under gad/<run_id>/
    rows = read_records(run / "records")
    assert {r["teacher"] for r in rows} == set(teachers)
    assert sorted({r["step"] for r in rows}) == list(range(1, steps + 1))
    # The scalars are what the records say: recompute the per-teacher mean and node count from the records.
    for teacher in teachers:
        for step in range(1, steps + 1):
            part = [r for r in rows if r["teacher"] == teacher and r["step"] == step]
            # A node finished after a flat screen weighs 1 / screen_keep in the mean and in the pooled sums.
            defined = [(r["param_cos"], r["pool_weight"]) for r in part if not math.isnan(r["param_cos"])]
            assert tb[f"train/gad/alignment/{teacher}/nodes"][step] == len(defined)
            assert tb[f"train/gad/alignment/{teacher}/undefined"][step] == len(part) - len(defined)
            if defined:
                mean = sum(v * w for v, w in defined) / sum(w for _, w in defined)
                assert tb[f"train/gad/alignment/{teacher}"][step] == pytest.approx(mean, abs=1e-5)
            # Pooled alignment: every node with both pooling terms enters (flat-success nodes included).
            pooled = pooled_ratio(
                [r["param_proj"] for r in part],
                [r["ideal_norm2_param"] for r in part],
                weights=[r["pool_weight"] for r in part],
            )
            assert tb[f"train/gad/pooled/{teacher}/nodes"][step] == pooled.n
            if not math.isnan(pooled.mean):
                assert tb[f"train/gad/pooled/{teacher}"][step] == pytest.approx(pooled.mean, abs=1e-5)
        assert f"train/gad/pooled/{teacher}" in tb, "the pooled alignment was never defined"
    # Cheap statistics: recorded at every node, and their rank correlation with alignment logged per teacher.
    labels = {(r["rollout_id"], r["step"]): ("rollout", r["step"], r["rollout_id"]) for r in rows}
    for teacher in teachers:
        for step in range(1, steps + 1):
            part = [r for r in rows if r["teacher"] == teacher and r["step"] == step]
            assert all(r["student_entropy"] >= 0 for r in part)
            for name in ("kl_student_teacher", "rel_position"):
                want = rank_correlation(
                    [r[name] for r in part],
                    [r["param_cos"] for r in part],
                    clusters=[labels[(r["rollout_id"], r["step"])] for r in part],
                    weights=[r["pool_weight"] for r in part],
                )
                key = f"train/gad/proxy/{teacher}/{name}"
                assert tb[f"{key}/nodes"][step] == want.n
                if not math.isnan(want.mean):
                    assert tb[key][step] == pytest.approx(want.mean, abs=1e-5)
    for step in range(1, steps + 1):
        nodes = {(r["rollout_id"], r["position"]): r for r in rows if r["step"] == step}
        assert tb["train/gad/rollouts_spent"][step] == sum(r["rollouts_spent"] for r in nodes.values())
        assert tb["train/gad/screened_out"][step] == sum(r["screened_out"] for r in nodes.values())
    return tb, rows


@pytest.mark.parametrize("peft", [False, True])
def test_distillation_trainer_logs_every_teacher(tmp_path, peft):
    trainer = distillation_trainer(tmp_path, peft=peft)
    cb = attach(trainer)
    trainer.train()
    tb, rows = check_logged(trainer, tmp_path, ["teacher", "hint", "answer"], steps=3)
    assert cb.pauses == 3 and cb.errors == 0
    assert any(not math.isnan(r["param_cos"]) for r in rows), "parity reward should give defined cosines"
    # 4 per candidate, or the one screening continuation at a node stopped by screening.
    assert all(r["targeted_per_candidate"] == (1 if r["screened_out"] else 4) for r in rows)
    assert "train/loss" in tb, "the trainer's own logging must be intact"


@pytest.mark.parametrize("peft", [False, True])
def test_gkd_trainer_logs_every_teacher(tmp_path, peft):
    trainer = gkd_trainer(tmp_path, peft=peft)
    attach(trainer, config(alignment_self_contexts=["hint:live={prompt} Hint: {hint}"]))
    trainer.train()
    check_logged(trainer, tmp_path, ["teacher", "hint"], steps=3)


@pytest.mark.parametrize("peft", [False, True])
def test_sdft_trainer_logs_every_teacher(tmp_path, peft):
    trainer = sdft_trainer(tmp_path / "run", save_tiny(tmp_path / "student"), peft=peft)
    attach(trainer, config(alignment_trainer_teacher="sdft"))
    trainer.train()
    check_logged(trainer, tmp_path / "run", ["sdft", "hint", "answer"], steps=3)


@pytest.mark.parametrize("kind", ["distillation", "distillation-lora-checkpointing", "gkd", "sdft"])
def test_training_is_bit_identical_with_and_without_callback(tmp_path, kind):
    def run(with_callback):
        out = tmp_path / f"{kind}-{with_callback}"
        if kind == "distillation":
            trainer = distillation_trainer(out, report_to="none")
        elif kind == "distillation-lora-checkpointing":
            trainer = distillation_trainer(out, peft=True, report_to="none", gradient_checkpointing=True)
        elif kind == "gkd":
            trainer = gkd_trainer(out, report_to="none")
        else:
            trainer = sdft_trainer(out, save_tiny(tmp_path / "student"), report_to="none")
        if with_callback:
            attach(trainer, config(alignment_node_strategy="entropy"))
        return trainer

    assert_bit_identical(run)


def assert_bit_identical(build, steps=3):
    """`build(with_callback)` -> a trainer; its losses and final weights must not depend on the callback."""
    runs = []
    for with_callback in (False, True):
        trainer = build(with_callback)
        trainer.train()
        runs.append(losses_and_weights(trainer))
    (losses_a, weights_a), (losses_b, weights_b) = runs
    assert len(losses_a) == steps
    assert losses_a == losses_b
    for name, w in weights_a.items():
        assert torch.equal(w, weights_b[name]), name


def test_attach_time_errors_name_the_fix(tmp_path):
    trainer = distillation_trainer(tmp_path)
    with pytest.raises(ValueError, match=r"column\(s\) \['reference'\]"):
        GradientAlignmentCallback(trainer, config(alignment_self_contexts=["ref:base={prompt} {reference}"]))
    with pytest.raises(ValueError, match="vocabulary of 100 tokens"):
        GradientAlignmentCallback(trainer, config(), teachers={"other": tiny_lm(2, vocab_size=100)})
    with pytest.raises(ValueError, match="no column 'final'"):
        GradientAlignmentCallback(trainer, config(alignment_answer_column="final"))
    with pytest.raises(ValueError, match="names must be unique"):
        GradientAlignmentConfig(alignment_self_contexts=["teacher:base={prompt}"])

    trainer.is_fsdp_enabled = True
    with pytest.raises(ValueError, match="does not support FSDP"):
        GradientAlignmentCallback(trainer, config())
    trainer.is_fsdp_enabled = False

    from transformers import Trainer, TrainingArguments

    plain = Trainer(
        model=tiny_lm(0), args=TrainingArguments(output_dir=str(tmp_path / "plain"), use_cpu=True, report_to="none")
    )
    with pytest.raises(ValueError, match="does not support Trainer"):
        GradientAlignmentCallback(plain, config())


@pytest.mark.parametrize(
    "module, name",
    [
        ("trl.experimental.server_distillation", "ServerDistillationTrainer"),
        ("trl.experimental.async_distillation", "AsyncDistillationTrainer"),
    ],
)
def test_trainers_with_a_remote_teacher_or_rollouts_are_refused_with_the_reason(module, name):
    # ServerDistillationTrainer subclasses DistillationTrainer: it must not be taken for one (it has no local teacher).
    # Neither can be built without a vLLM server; the refusal depends on the class alone.
    import importlib

    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(ValueError, match=f"does not support {name}: its .*vLLM server.*gad diagnose --config"):
        adapter_for(cls.__new__(cls))


def test_failing_verifier_is_a_counted_skip_not_a_crash(tmp_path):
    calls = {"n": 0}

    def flaky(prompts, completions, **columns):
        calls["n"] += 1
        raise RuntimeError("verifier service down")

    trainer = distillation_trainer(tmp_path, steps=2)
    cb = GradientAlignmentCallback(trainer, config(), reward_func=flaky)
    trainer.add_callback(cb)
    trainer.train()  # must not raise
    assert calls["n"] > 0
    assert cb.skipped.get("verifier_error", 0) == 4  # 2 rollouts x 2 pauses
    rows = [r for r in trainer.state.log_history if "gad/skipped/verifier_error" in r]
    assert [r["gad/skipped/verifier_error"] for r in rows] == [2.0, 2.0]
    assert [r["loss"] for r in trainer.state.log_history if "loss" in r]


def test_counters_survive_checkpoint_resume(tmp_path):
    trainer = distillation_trainer(tmp_path, steps=2, save_strategy="steps", save_steps=2)
    attach(trainer)
    trainer.train()
    resumed = distillation_trainer(tmp_path, steps=3)
    cb = attach(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert cb.pauses == 3  # 2 restored from the checkpoint + 1 after resuming
    assert cb.last_step == 3


def test_config_parses_from_yaml_with_trl_parser(tmp_path):
    from trl import DistillationConfig, TrlParser

    path = tmp_path / "config.yaml"
    path.write_text(
        "output_dir: out\nbf16: false\nuse_cpu: true\n"
        "beta: 0.5\n"
        "alignment_every_n_steps: 25\n"
        "alignment_params: mlp\n"
        "alignment_extra_teachers:\n  - big=some/model\n"
        "alignment_self_contexts:\n  - 'answer:base={prompt} The answer is {answer}.'\n"
    )
    train_args, gad_args = TrlParser((DistillationConfig, GradientAlignmentConfig)).parse_args_and_config(
        ["--config", str(path), "--alignment_nodes_per_rollout", "6"]
    )
    assert train_args.beta == 0.5 and gad_args.alignment_every_n_steps == 25
    assert gad_args.alignment_nodes_per_rollout == 6 and gad_args.alignment_params == "mlp"
    assert gad_args.extra_teachers == {"big": "some/model"}
    assert [(c.name, c.weights, c.template) for c in gad_args.self_contexts] == [
        ("answer", "base", "{prompt} The answer is {answer}.")
    ]
    with pytest.raises(ValueError, match="alignment_node_strategy"):
        GradientAlignmentConfig(alignment_node_strategy="random")
