"""Train the embedded default world's checkpoints from scratch on CPU; what it writes is what the package ships.

    python scripts/train_default_world.py            # writes gad_callbacks/world/checkpoints/{student,teacher,...}
    python scripts/train_default_world.py --only cross_teacher

- `student`: small (2 layers, width 64) and deliberately under-trained: it solves some 2-digit additions and fails
  others (pass rate 20-70% when sampling at temperature 1). A share of its training prompts carry a privileged
  context (a hint: the first column step; or the answer), in exactly the form of the default self-distillation
  templates, so the student *can use* such a context: self-distillation comparisons are meaningful.
- `teacher`: larger (4 layers, width 128), trained to near-perfect accuracy, never sees a context: the external
  teacher.
- `cross_teacher`: a teacher with *another tokenizer* (numbers in groups of up to three digits, 400 tokens: other
  tokens, other ids) and another architecture (Llama, 3 layers, width 96), trained like `teacher`: GOLD's
  cross-tokenizer (ULD) distillation on the default world.
Deterministic (seeded); run time on 2 CPU cores is printed and recorded in `metrics.json` next to each checkpoint.
"""

import argparse
import json
import random
import time
from pathlib import Path

import torch

from gad_callbacks.engine.rollouts import sample_completions
from gad_callbacks.engine.verifiers import NumericAnswerReward
from gad_callbacks.world import ArithmeticTask, build_tokenizer
from gad_callbacks.world.checkpoints import CHECKPOINT_DIR, CONTEXT_TEMPLATES
from gad_callbacks.world.models import tiny_llama, tiny_qwen2


def example(tokenizer, row, context: str | None):
    question = row["prompt"][0]["content"]
    if context is not None:
        question = CONTEXT_TEMPLATES[context].format(**{**row, "prompt": question})
    prompt_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
    )["input_ids"]
    completion_ids = tokenizer(row["solution"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids, completion_ids


def batch(tokenizer, rng, task, size, context_share, contexts):
    seqs, masks = [], []
    for _ in range(size):
        row = task.problem(rng)
        context = rng.choice(contexts) if rng.random() < context_share else None
        p, c = example(tokenizer, row, context)
        seqs.append(p + c)
        masks.append([0] * len(p) + [1] * len(c))
    width = max(map(len, seqs))
    ids = torch.full((size, width), tokenizer.pad_token_id)
    loss_mask = torch.zeros(size, width)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        ids[i, : len(s)] = torch.tensor(s)
        loss_mask[i, : len(m)] = torch.tensor(m, dtype=torch.float)
    return ids, loss_mask


def pass_rate(model, tokenizer, problems, context=None, temperature=1.0, seed=0):
    prompts = [example(tokenizer, row, context)[0] for row in problems]
    gen = torch.Generator().manual_seed(seed)
    outs = sample_completions(
        model, prompts, 32, temperature=temperature, eos_token_id=tokenizer.eos_token_id, generator=gen
    )
    texts = [tokenizer.decode(o, skip_special_tokens=True) for o in outs]
    rewards = NumericAnswerReward()(None, texts, answer=[row["answer"] for row in problems])
    return sum(rewards) / len(rewards)


def train(name, tokenizer, hidden, layers, phases, lr, eval_every, stop_range, seed, architecture=tiny_qwen2):
    """`phases`: (steps, share of prompts carrying a context, which contexts) in order; the last phase stops early
    once the sampled pass rate without context lands in `stop_range`."""
    torch.manual_seed(seed)
    model = architecture(tokenizer, hidden, layers, seed)
    task, rng = ArithmeticTask(2), random.Random(seed)
    held_out = [ArithmeticTask(2).problem(random.Random(10_000 + i)) for i in range(200)]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    start, history = time.perf_counter(), []
    schedule = [(share, contexts) for steps, share, contexts in phases for _ in range(steps)]
    for step, (context_share, contexts) in enumerate(schedule, start=1):
        model.train()
        ids, mask = batch(tokenizer, rng, task, 64, context_share, contexts)
        logits = model(input_ids=ids).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        loss = (loss * mask[:, 1:]).sum() / mask[:, 1:].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        in_last_phase = step > len(schedule) - phases[-1][0]
        if in_last_phase and (step % eval_every == 0 or step == len(schedule)):
            model.eval()
            rate = pass_rate(model, tokenizer, held_out)
            history.append({"step": step, "loss": loss.item(), "pass_rate": rate})
            print(f"{name} step {step}: loss {loss.item():.3f}, sampled pass rate {rate:.2f}", flush=True)
            if stop_range and stop_range[0] <= rate <= stop_range[1]:
                break
    model.eval()
    metrics = {
        "train_seconds": time.perf_counter() - start,
        "steps": history[-1]["step"],
        "pass_rate": pass_rate(model, tokenizer, held_out, seed=1),
        "greedy_pass_rate": pass_rate(model, tokenizer, held_out, temperature=1e-4, seed=1),
        "pass_rate_with_context": {
            c: pass_rate(model, tokenizer, held_out, context=c, seed=1) for c in CONTEXT_TEMPLATES
        },
        "parameters": sum(p.numel() for p in model.parameters()),
        "history": history,
    }
    return model, metrics


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(CHECKPOINT_DIR))
    parser.add_argument("--only", nargs="*", default=None, help="Train only these checkpoints (default: all).")
    args = parser.parse_args()
    torch.set_num_threads(2)
    contexts = sorted(CONTEXT_TEMPLATES)
    plans = {
        # Copying first (every prompt carries the worked solution), so the student learns to *use* a privileged
        # context before it can solve problems on its own; then mixed prompts (the solution twice as often as the
        # other contexts, which keeps the copying skill) until its own sampled pass rate lands in `stop_range`.
        "student": dict(
            hidden=64,
            layers=2,
            phases=[(700, 1.0, ["solution"]), (2000, 0.6, ["solution", *contexts])],
            lr=3e-3,
            eval_every=20,
            stop_range=(0.3, 0.55),
            seed=0,
        ),
        "teacher": dict(
            hidden=128, layers=4, phases=[(1500, 0.0, [])], lr=2e-3, eval_every=250, stop_range=None, seed=1
        ),
        "cross_teacher": dict(
            tokenizer=build_tokenizer(vocab_size=400, digit_group=3),
            architecture=tiny_llama,
            hidden=96,
            layers=3,
            phases=[(1200, 0.0, [])],
            lr=2e-3,
            eval_every=200,
            stop_range=None,
            seed=2,
        ),
    }
    for name, plan in plans.items():
        if args.only and name not in args.only:
            continue
        plan = dict(plan)
        tokenizer = plan.pop("tokenizer", build_tokenizer())
        model, metrics = train(name, tokenizer, **plan)
        out = Path(args.out) / name
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(f"{name}: {json.dumps({k: v for k, v in metrics.items() if k != 'history'})}")


if __name__ == "__main__":
    main()
