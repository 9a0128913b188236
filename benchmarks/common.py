"""Shared helpers of the benchmark scripts: a bench-sized model and a side-by-side timer."""

import os
import statistics
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402


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
