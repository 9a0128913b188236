"""Per-pause overhead of GradientAlignmentCallback on a tiny DistillationTrainer run, measured side by side.

    python -m benchmarks.bench_callback

The same run (the embedded world's shipped student, 0.16M parameters, and teacher, 1.1M; batch 8; completions of
up to 32 tokens) trains without the callback, then with it pausing every 5 steps with every other knob at its
default (4 rollouts x 4 nodes x 8 targeted rollouts per candidate, entropy-drawn nodes, the trainer's teacher plus
one self-distillation context). Reported: seconds per training step, seconds per pause, and the share of wall time
the diagnostic takes at the default cadence (`alignment_every_n_steps=50`).
"""

import os
import statistics
import tempfile
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from trl import DistillationConfig, DistillationTrainer  # noqa: E402

from benchmarks.common import CPU_TRAINING  # noqa: E402
from gad_callbacks import GradientAlignmentCallback, GradientAlignmentConfig  # noqa: E402
from gad_callbacks.world import make_dataset  # noqa: E402
from gad_callbacks.world.checkpoints import resolve_model  # noqa: E402


STEPS, EVERY = 10, 5


def run(with_callback: bool):
    student, teacher = resolve_model("default:student"), resolve_model("default:teacher")
    tok = AutoTokenizer.from_pretrained(student)
    with tempfile.TemporaryDirectory() as out:
        args = DistillationConfig(
            output_dir=out,
            max_steps=STEPS,
            per_device_train_batch_size=8,
            **CPU_TRAINING,
            max_completion_length=64,
            seed=0,
        )
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            processing_class=tok,
            train_dataset=make_dataset(128).select_columns(["prompt", "answer", "solution"]),
        )
        if with_callback:
            cfg = GradientAlignmentConfig(
                alignment_every_n_steps=EVERY,
                alignment_self_contexts=["solution:base={prompt} Reference solution: {solution}"],
            )
            trainer.add_callback(GradientAlignmentCallback(trainer, cfg))
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
        pauses = [r["gad/seconds"] for r in trainer.state.log_history if "gad/seconds" in r]
        targeted = [r["gad/targeted_rollouts"] for r in trainer.state.log_history if "gad/targeted_rollouts" in r]
        return wall, pauses, targeted


def main():
    torch.set_num_threads(2)
    base_wall, _, _ = run(False)
    wall, pauses, targeted = run(True)
    step = base_wall / STEPS
    pause = statistics.median(pauses)
    default_every = GradientAlignmentConfig().alignment_every_n_steps
    print(f"training step without callback: {step:.3f} s ({STEPS} steps, {base_wall:.1f} s)")
    print(
        f"with callback every {EVERY} steps: {wall:.1f} s, {len(pauses)} pauses, median {pause:.2f} s per pause "
        f"({statistics.median(targeted):.0f} targeted rollouts per pause)"
    )
    print(f"pause / step: {pause / step:.1f}x")
    for every in (EVERY, default_every, 200):
        share = pause / (every * step + pause)
        print(f"share of wall time at alignment_every_n_steps={every}: {share:.1%}")


if __name__ == "__main__":
    main()
