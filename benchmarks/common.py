"""Shared helpers of the benchmark scripts: a bench-sized model and a side-by-side timer."""

import os
import statistics
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402


#: The training arguments every trainer benchmark shares: CPU, float32, no logging backend, no checkpoints.
CPU_TRAINING = dict(
    bf16=False,
    use_cpu=True,
    report_to="none",
    logging_steps=1,
    save_strategy="no",
    gradient_checkpointing=False,
)


def bench_model(hidden=128, layers=4, vocab=512, intermediate=None, seed=0, device="cpu"):
    """A Qwen2-architecture model, randomly initialised: big enough that compute, not Python, dominates."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=4096,
        eos_token_id=1,
        pad_token_id=0,
    )
    return Qwen2ForCausalLM(config).to(device).eval()


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats=3, device="cpu"):
    """Median wall time of `fn()` over `repeats` runs after one warm-up; returns (seconds, last result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def print_table(title, rows, baseline):
    """Rows of (name, seconds); ratios are against the row named `baseline`, all measured in this run."""
    base = dict(rows)[baseline]
    print(f"\n{title}")
    print(f"{'method':<48}{'seconds':>10}{'x ' + baseline:>22}")
    for name, seconds in rows:
        print(f"{name:<48}{seconds:>10.3f}{seconds / base:>22.2f}")


# -- tiny models whose success probabilities can be enumerated exactly (bench_calibration) ----------------------------
def tiny_model(kind="qwen2", vocab_size=8, layers=2, seed=0, logit_scale=1.0, eos_token_id=1, dtype=torch.float64):
    """The tests' tiny causal LM (`tests/conftest.py::tiny_model`), float64 and in eval mode by default."""
    threads = torch.get_num_threads()  # importing the tests' conftest sets 2 threads; keep the benchmark's choice
    from tests.conftest import tiny_model as build

    torch.set_num_threads(threads)
    model = build(kind, vocab_size, layers, seed=seed, logit_scale=logit_scale, eos_token_id=eos_token_id, dtype=dtype)
    return model.eval()


def lora(model, seed=0):
    """LoRA adapters with non-zero B, as the tests build them (`tests/conftest.py::lora`)."""
    from tests.conftest import lora as wrap

    return wrap(model, seed=seed)


def exact_success_all(model, prefix, candidates, max_new_tokens, temperature, target, eos=1):
    """
    `P(target = 1 | candidate forced at the node)` for every candidate, by enumerating every continuation with its
    probability: `tests/engine/test_rollouts.py::exact_success`, with all candidates' frontiers in one batch per step.
    """
    prefix = list(prefix)
    out = [0.0] * len(candidates)
    frontier = []  # (candidate index, continuation, probability)
    for i, c in enumerate(candidates):
        if c == eos or max_new_tokens == 0:
            out[i] = target([c])
        else:
            frontier.append((i, [c], 1.0))
    for step in range(max_new_tokens):
        if not frontier:
            break
        ids = torch.tensor([prefix + seq for _, seq, _ in frontier])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, -1].double()
        probs = torch.softmax(logits / temperature, dim=-1).tolist()
        new = []
        for (i, seq, pr), row in zip(frontier, probs):
            for tok, pt in enumerate(row):
                if tok == eos or step == max_new_tokens - 1:
                    out[i] += pr * pt * target(seq + [tok])
                else:
                    new.append((i, seq + [tok], pr * pt))
        frontier = new
    return out
