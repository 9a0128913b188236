"""
Does routing by alignment help? The student's pass rate after a fixed number of SDFT steps on the embedded default,
trained with each fixed privileged context, with the `AlignmentRouter` (Thompson, greedy, and Thompson over the
latest three pauses), and with a uniformly random context per pause; mean and 95% interval over seeds, paired
differences, and the router's wall-time cost. The "best fixed" arm is picked after the fact, on the same seeds: a
comparison slightly tilted against the router.

    python benchmarks/bench_router.py --seeds 6 --steps 80

Every arm runs `recipes/route_teachers.py`'s settings (`configs/route_teachers_default.yaml`, parsed the same way),
in this process, on one thread. Within a seed, every arm trains on the same questions in the same order and is
evaluated on the same held-out questions with the same sampling seed, so differences are paired by seed.
"""

import argparse
import math
import os
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import ModelConfig, TrlParser  # noqa: E402

from gad_callbacks import AlignmentRouter, AlignmentRouterConfig  # noqa: E402
from gad_callbacks.engine.model_io import eos_token_ids  # noqa: E402
from gad_callbacks.engine.rollouts import sample_completions  # noqa: E402
from gad_callbacks.engine.verifiers import NumericAnswerReward  # noqa: E402
from gad_callbacks.integration.context_route import ContextRoute  # noqa: E402
from gad_callbacks.world import ArithmeticTask  # noqa: E402
from gad_callbacks.world.recipe_support import DataArguments, prepare_student  # noqa: E402


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "route_teachers_default.yaml"


class FixedOrRandomContext(TrainerCallback):
    """The baselines: one context throughout (`name`), or a uniformly random one drawn at every pause step."""

    def __init__(self, trainer, contexts, every: int, name: str | None, seed: int):
        self.route = ContextRoute(trainer, {c.name: c for c in contexts})
        self.names, self.every, self.name = [c.name for c in contexts], every, name
        self.rng = random.Random(seed)
        self.choices = []
        self._pick()

    def _pick(self):
        choice = self.name or self.rng.choice(self.names)
        self.choices.append(choice)
        self.route.apply(choice)

    def on_step_end(self, args, state, control, **kwargs):
        if self.name is None and state.global_step % self.every == 0:
            self._pick()


def parse(overrides: list[str]):
    parser = TrlParser((DataArguments, SDFTConfig, ModelConfig, AlignmentRouterConfig), allow_abbrev=False)
    return parser.parse_args_and_config(args=["--config", str(CONFIG), *overrides])


def pass_rate(model, tokenizer, problems, seed: int) -> float:
    """Pass rate of sampled completions (temperature 1, as the world's checkpoints report it), no context."""
    prompts = [
        tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)["input_ids"]
        for row in problems
    ]
    model.eval()
    with torch.no_grad():
        outs = sample_completions(
            model,
            prompts,
            32,
            temperature=1.0,
            eos_token_id=eos_token_ids(model, tokenizer),
            generator=torch.Generator().manual_seed(seed),
        )
    texts = [tokenizer.decode(o, skip_special_tokens=True) for o in outs]
    rewards = NumericAnswerReward()(None, texts, answer=[row["answer"] for row in problems])
    return sum(rewards) / len(rewards)


def run_arm(arm: str, seed: int, steps: int, problems, out: Path):
    data_args, training_args, model_args, router_args = parse(
        [
            "--seed",
            str(seed),
            "--alignment_seed",
            str(seed),
            "--max_steps",
            str(steps),
            "--output_dir",
            str(out),
            "--report_to",
            "none",
            "--logging_steps",
            str(steps),
            "--disable_tqdm",
            "true",
        ]
    )
    if arm == "router-greedy":
        router_args.router_strategy = "greedy"
    if arm == "router-window3":  # Thompson on the latest three pauses' nodes: steadier, but older evidence
        router_args.router_window = 3
    student, tokenizer = prepare_student(model_args, training_args)
    trainer = SDFTTrainer(
        model=student, args=training_args, train_dataset=data_args.load(seed=seed), processing_class=tokenizer
    )
    if arm.startswith("router"):
        callback = AlignmentRouter(trainer, router_args)
    else:
        name = None if arm == "random" else arm.split(":", 1)[1]
        callback = FixedOrRandomContext(
            trainer, router_args.self_contexts, router_args.alignment_every_n_steps, name, seed
        )
    trainer.add_callback(callback)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    rate = pass_rate(trainer.model, tokenizer, problems, seed)
    return rate, seconds, callback


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval over seeds."""
    t975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, math.nan, math.nan
    half = t975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def main():
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--seeds", type=int, default=6)
    cli.add_argument("--steps", type=int, default=80)
    cli.add_argument("--eval_questions", type=int, default=500)
    args = cli.parse_args()
    torch.set_num_threads(1)
    contexts = [c.name for c in parse([])[3].self_contexts]
    arms = [f"fixed:{c}" for c in contexts] + ["random", "router-thompson", "router-greedy", "router-window3"]
    task = ArithmeticTask()
    results = {arm: [] for arm in arms}
    seconds = {arm: [] for arm in arms}
    routed = {}
    baseline = []
    for seed in range(args.seeds):
        rng = random.Random(10_000 + seed)  # held-out questions: another stream than the training set's
        problems = [task.problem(rng) for _ in range(args.eval_questions)]
        for arm in arms:
            with tempfile.TemporaryDirectory() as out:
                rate, secs, cb = run_arm(arm, seed, args.steps, problems, Path(out))
            results[arm].append(rate)
            seconds[arm].append(secs)
            if arm.startswith("router"):
                routed.setdefault(arm, []).extend(choice for _, choice in cb.history)
            print(f"seed {seed} {arm:<18} pass {rate:.3f}  train {secs:.1f}s", flush=True)
        if not baseline:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from gad_callbacks.world.checkpoints import resolve_model

            path = resolve_model("default:student")
            model = AutoModelForCausalLM.from_pretrained(path)
            baseline.append(pass_rate(model, AutoTokenizer.from_pretrained(path), problems, seed))
    print(
        f"\n{args.seeds} seeds x {args.steps} SDFT steps; pass rate on {args.eval_questions} held-out questions "
        f"(untrained student: {baseline[0]:.3f} on seed 0's questions)"
    )
    print(f"{'arm':<18} {'pass rate, mean [95% CI over seeds]':<38} {'train s/run':>11}")
    for arm in arms:
        m, lo, hi = interval(results[arm])
        print(f"{arm:<18} {m:.3f} [{lo:.3f}, {hi:.3f}]{'':<18} {statistics.fmean(seconds[arm]):>11.1f}")
    best = max((a for a in arms if a.startswith("fixed")), key=lambda a: statistics.fmean(results[a]))
    print("\npaired differences over seeds, mean [95% CI]:")
    for router in ("router-thompson", "router-greedy", "router-window3"):
        for other in (best, "random"):
            diffs = [a - b for a, b in zip(results[router], results[other], strict=True)]
            m, lo, hi = interval(diffs)
            verdict = "resolved" if lo > 0 or hi < 0 else "no significant difference"
            print(f"  {router} - {other:<16} {m:+.3f} [{lo:+.3f}, {hi:+.3f}]  {verdict}")
        ratio = statistics.fmean(seconds[router]) / statistics.fmean(seconds[best])
        share = {c: routed[router].count(c) / len(routed[router]) for c in contexts}
        print(
            f"  {router}: wall time {ratio:.2f}x {best}'s; decisions: "
            + ", ".join(f"{c} {p:.0%}" for c, p in share.items())
        )


if __name__ == "__main__":
    main()
