"""Cost of a pause at 1 vs 2 processes (nodes diagnosed per second), measured side by side in one run.

    python -m benchmarks.bench_distributed

A GKD run on the embedded world with learning rate 0 (so both settings diagnose the very same rollouts and nodes)
pauses at each of 3 steps, 8 rollouts x 4 nodes per pause. One process uses both cores (2 threads); two processes
(DDP over gloo) use one thread each, so the comparison is at equal hardware.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile


WORKER = r"""
import json, os, sys, warnings
warnings.filterwarnings("ignore")
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.experimental.gkd import GKDConfig, GKDTrainer
from gad_callbacks import GradientAlignmentCallback, GradientAlignmentConfig
from gad_callbacks.world import make_dataset
from gad_callbacks.world.checkpoints import resolve_model
torch.set_num_threads(int(os.environ["THREADS"]))
s, t = resolve_model("default:student"), resolve_model("default:teacher")
trainer = GKDTrainer(
    model=AutoModelForCausalLM.from_pretrained(s, dtype=torch.float32),
    teacher_model=AutoModelForCausalLM.from_pretrained(t, dtype=torch.float32),
    processing_class=AutoTokenizer.from_pretrained(s),
    train_dataset=make_dataset(64).select_columns(["messages", "answer", "solution"]),
    args=GKDConfig(output_dir=sys.argv[1], max_steps=3, learning_rate=0.0, lmbda=1.0, max_new_tokens=24, bf16=False,
                   use_cpu=True, report_to="none", save_strategy="no", per_device_train_batch_size=2, seed=0),
)
trainer.add_callback(GradientAlignmentCallback(trainer, GradientAlignmentConfig(
    alignment_every_n_steps=1, alignment_rollouts_per_pause=8, alignment_nodes_per_rollout=4,
    alignment_self_contexts=["solution:base={prompt} Reference solution: {solution}"])))
trainer.train()
if trainer.accelerator.is_main_process:
    rows = [r for r in trainer.state.log_history if "gad/seconds" in r]
    print("RESULT", json.dumps([(r["gad/seconds"], r["gad/nodes"]) for r in rows]))
"""


def run(nproc: int, threads: int) -> list:
    with tempfile.TemporaryDirectory() as out:
        script = os.path.join(out, "worker.py")
        with open(script, "w") as f:
            f.write(WORKER)
        launcher = (
            [sys.executable]
            if nproc == 1
            else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        )
        env = {
            **os.environ,
            "THREADS": str(threads),
            "OMP_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1",
            "TRL_EXPERIMENTAL_SILENCE": "1",
        }
        done = subprocess.run(launcher + [script, out], capture_output=True, text=True, env=env, check=True)
        line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
        return json.loads(line[len("RESULT ") :])


def main():
    print(f"{'processes':>10}{'threads each':>14}{'s / pause':>12}{'nodes / pause':>15}{'nodes / s':>12}")
    rates = {}
    for nproc, threads in ((1, 2), (2, 1)):
        pauses = run(nproc, threads)
        seconds = statistics.median(s for s, _ in pauses)
        nodes = statistics.median(n for _, n in pauses)
        rates[nproc] = nodes / seconds
        print(f"{nproc:>10}{threads:>14}{seconds:>12.2f}{nodes:>15.0f}{nodes / seconds:>12.1f}")
    print(f"2 processes / 1 process: {rates[2] / rates[1]:.2f}x nodes per second")


if __name__ == "__main__":
    main()
