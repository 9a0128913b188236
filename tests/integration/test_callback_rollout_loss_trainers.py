"""GradientAlignmentCallback on GOLD (incl. a cross-tokenizer teacher), IW-OPD and SDPO: logs and records read back,
no perturbation of the observed run (full and LoRA), and the tokenizer and teacher-server rules at attach time."""

import math

import pytest

from gad_callbacks import GradientAlignmentCallback
from gad_callbacks.integration.adapters import adapter_for
from tests.integration.helpers import (
    alternating_reward,
    gold_trainer,
    iw_opd_trainer,
    save_other_teacher,
    save_tiny,
    sdpo_trainer,
)
from tests.integration.test_callback import assert_bit_identical, attach, check_logged, config


CONTEXTS = dict(alignment_self_contexts=["answer:live={prompt} The answer is {answer}."])


def build(kind, out, tmp_path, peft=False, **extra):
    if kind == "gold":
        return gold_trainer(out, peft=peft, **extra)
    if kind.startswith("gold-uld"):
        if kind == "gold-uld-hybrid":  # ULD's cross-entropy term and hybrid loss (whose state the trainer logs)
            extra.update(uld_crossentropy_weight=0.2, uld_use_hybrid_loss=True)
        return gold_trainer(out, peft=peft, teacher_dir=save_other_teacher(tmp_path / "other"), **extra)
    if kind == "iw_opd":
        return iw_opd_trainer(out, save_tiny(tmp_path / "teacher", seed=1), peft=peft, **extra)
    weight = 1.0 if kind == "sdpo-w1" else 0.5  # 1: SDPO's default, distillation only
    return sdpo_trainer(
        out, save_tiny(tmp_path / "student"), peft=peft, reward=alternating_reward, distillation_weight=weight, **extra
    )


@pytest.mark.parametrize(
    "kind, peft",
    [("gold", False), ("gold", True), ("gold-uld", False), ("iw_opd", True), ("sdpo", False), ("sdpo-w1", True)],
)
def test_rollout_loss_trainers_log_every_teacher(tmp_path, kind, peft):
    trainer = build(kind, tmp_path / "run", tmp_path, peft=peft)
    cb = attach(trainer, config(**CONTEXTS))
    trainer.train()
    assert cb.pauses == 3 and cb.errors == 0
    tb, rows = check_logged(trainer, tmp_path / "run", ["teacher", "answer"], steps=3)
    assert "train/loss" in tb, "the trainer's own logging must be intact"
    own = [r for r in rows if r["teacher"] == "teacher"]
    assert any(not math.isnan(r["param_cos"]) for r in own)
    if kind == "gold-uld":  # another vocabulary: no teacher distribution over the student's tokens, no advantage
        assert all(math.isnan(r["advantage"]) for r in own)
        assert cb.teachers[0].loss.loss == "trainer" and cb.teachers[1].loss.loss == "jsd"
    if kind == "sdpo-w1":  # a rollout without a successful sibling gives SDPO's teacher no signal; the context has one
        assert {r["undefined"] for r in own} >= {"no_signal"}
        assert all(r["undefined"] != "no_signal" for r in rows if r["teacher"] == "answer")


@pytest.mark.parametrize(
    "kind, peft",
    [
        ("gold", False),
        ("gold", True),
        ("gold-uld", False),
        ("gold-uld-hybrid", True),
        ("iw_opd", False),
        ("iw_opd", True),
        ("sdpo", False),
        ("sdpo", True),
    ],
)
def test_observed_run_is_bit_identical_with_and_without_callback(tmp_path, kind, peft):
    def run(with_callback):
        trainer = build(kind, tmp_path / f"{kind}-{with_callback}", tmp_path, peft=peft, report_to="none")
        if with_callback:
            attach(trainer, config(alignment_node_strategy="entropy", **CONTEXTS))
        return trainer

    assert_bit_identical(run)


def test_a_teacher_with_another_tokenizer_only_through_gold_uld(tmp_path):
    from transformers import AutoModelForCausalLM

    other = save_other_teacher(tmp_path / "other")
    # GOLD without ULD resizes such a teacher to the student's vocabulary and compares logits id for id: wrong
    # targets, silently. Refused, pointing to ULD.
    plain = gold_trainer(tmp_path / "plain", teacher_dir=other, uld=False)
    with pytest.raises(ValueError, match="another tokenizer than the student.*use_uld_loss=True"):
        GradientAlignmentCallback(plain, config())
    # With ULD the trainer's own teacher is accepted; an extra teacher with that tokenizer still is not.
    uld = gold_trainer(tmp_path / "uld", teacher_dir=other)
    with pytest.raises(ValueError, match="vocabulary of 400 tokens.*use_uld_loss=True"):
        GradientAlignmentCallback(uld, config(), teachers={"extra": AutoModelForCausalLM.from_pretrained(other)})
    assert GradientAlignmentCallback(uld, config()).adapter.cross_tokenizer_teacher


@pytest.mark.parametrize(
    "module, name", [("trl.experimental.iw_opd", "IWOPDTrainer"), ("trl.experimental.sdpo", "SDPOTrainer")]
)
def test_a_teacher_server_is_refused_with_the_reason(module, name):
    import importlib

    cls = getattr(importlib.import_module(module), name)
    trainer = cls.__new__(cls)
    trainer.use_teacher_server = True  # the refusal depends on this setting alone (no server is needed to test it)
    with pytest.raises(ValueError, match=f"does not support {name} with a teacher server.*gad diagnose --config"):
        adapter_for(trainer)
