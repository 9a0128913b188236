"""Parameter-space cosines: our segmented, batched VJP Gram against the floor and the naive loop; memory; sketch error.

    python benchmarks/bench_gradients.py [--device cuda]

Setting (issue #2): M = 4 teachers + the ideal = 5 logit directions, at one node and at 8 nodes of one rollout
(40 vectors), full parameters and LoRA, sequence of 256 tokens.
- floor: one shared forward, then the bare vector-Jacobian products in one batched call (`is_grads_batched`); no
  inner products at all;
- ours: `parameter_gram` (same single forward; backward block by block, reducing each block's gradients into the Gram
  matrix before touching the next);
- naive: a separate forward and backward per direction per node, flattened vectors, then dot products.
Memory: peak resident memory of each method in a fresh process, on a larger model, against the analytic size of the
gradient copies each must hold. Sketch: error of CountSketch cosines against the exact ones.
"""

import argparse
import json
import resource
import subprocess
import sys
import threading
import time

import torch

from benchmarks.common import bench_model, print_table, timed
from gad_callbacks import parameter_gram
from gad_callbacks.method.alignment import gram_cosines


def lora_model(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))


def cotangents(num_nodes, num_dirs, vocab, generator):
    """[num_nodes * num_dirs, num_nodes, V]: each vector is one direction at one node (zero at the other nodes)."""
    cot = torch.zeros(num_nodes * num_dirs, num_nodes, vocab)
    for n in range(num_nodes):
        cot[n * num_dirs : (n + 1) * num_dirs, n] = torch.randn(num_dirs, vocab, generator=generator)
    return cot


def floor_fn(model, ids, rows, cot, params):
    def run():
        logits = model(input_ids=ids.unsqueeze(0), logits_to_keep=rows).logits
        return torch.autograd.grad(
            logits, params, grad_outputs=cot.unsqueeze(1).to(logits.dtype), is_grads_batched=True
        )

    return run


def naive_fn(model, ids, rows, cot, params):
    def run():
        vecs = []
        for b in range(cot.shape[0]):
            n = int(cot[b].abs().sum(-1).argmax())  # the node this vector lives at
            logits = model(input_ids=ids.unsqueeze(0), logits_to_keep=rows[n : n + 1]).logits[0, 0]
            grads = torch.autograd.grad(logits, params, grad_outputs=cot[b, n].to(logits.dtype))
            vecs.append(torch.cat([g.reshape(-1) for g in grads]))
        v = torch.stack(vecs).double()
        return v @ v.T

    return run


def speed(device, use_lora):
    model = bench_model(device=device)
    if use_lora:
        model = lora_model(model)
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 512, (256,), generator=g, device="cpu").to(device)
    label = "LoRA r=16" if use_lora else "full parameters"
    n_params = sum(p.numel() for p in params)
    for num_nodes in (1, 8):
        rows = torch.linspace(40, 250, num_nodes).long().to(device)
        cot = cotangents(num_nodes, 5, 512, g).to(device)
        t_floor, _ = timed(floor_fn(model, ids, rows, cot, params), device=device)
        t_ours, gram = timed(lambda rows=rows, cot=cot: parameter_gram(model, ids, rows, cot), device=device)
        t_naive, ref = timed(naive_fn(model, ids, rows, cot, params), device=device)
        err = float((gram_cosines(gram) - gram_cosines(ref.cpu())).abs().max())
        print_table(
            f"{label} ({n_params / 1e6:.2f}M trainable), {num_nodes} node(s) x 5 directions, max |cos error| vs naive {err:.1e}",
            [
                ("floor: shared forward + batched VJPs", t_floor),
                ("ours: parameter_gram", t_ours),
                ("naive: fwd+bwd per vector", t_naive),
            ],
            "floor: shared forward + batched VJPs",
        )


def memory_probe(method):
    """Run one method in this (fresh) process on a larger model and print its peak RSS growth as JSON."""
    torch.set_num_threads(2)
    model = bench_model(hidden=256, layers=8, vocab=8192)
    params = [p for p in model.parameters()]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 8192, (128,), generator=g)
    rows = torch.linspace(20, 120, 8).long()
    cot = cotangents(8, 5, 8192, g)
    with torch.no_grad():
        model(input_ids=ids.unsqueeze(0))
    run = {
        "floor": floor_fn(model, ids, rows, cot, params),
        "ours": lambda: parameter_gram(model, ids, rows, cot),
        "unsegmented": lambda: parameter_gram(model, ids, rows, cot, segmented=False),
        "sketch": lambda: parameter_gram(model, ids, rows, cot, sketch_dim=4096),
    }[method]
    # Resident memory sampled every millisecond while the method runs; growth over the level just before it.
    page = resource.getpagesize()

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    before, peak, stop = rss(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)

    thread = threading.Thread(target=sample)
    thread.start()
    run()
    stop.set()
    thread.join()
    total = sum(p.numel() for p in params)
    block = max(sum(p.numel() for p in layer.parameters()) for layer in model.model.layers)
    embed = model.model.embed_tokens.weight.numel()
    print(json.dumps({"peak_mb": (peak[0] - before) / 2**20, "params": total, "block": block, "embed": embed}))


def memory():
    print(
        "\nmemory: 8 nodes x 5 directions = 40 vectors, 256-wide 8-layer model, vocabulary 8192 (fresh process each)"
    )
    rows = []
    for method in ("floor", "unsegmented", "ours", "sketch"):
        out = (
            subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_gradients", "--memory-probe", method],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        rows.append((method, json.loads(out)))
    info = rows[0][1]
    all_copies = 40 * info["params"] * 4 / 2**20
    one_block = 40 * max(info["block"], info["embed"]) * 4 / 2**20
    print(
        f"{info['params'] / 1e6:.1f}M parameters; 40 gradient copies of all of them = {all_copies:.0f} MB; "
        f"of the largest segment (a block or the embedding) = {one_block:.0f} MB"
    )
    print(f"{'method':<16}{'peak RSS growth (MB)':>24}")
    for method, r in rows:
        print(f"{method:<16}{r['peak_mb']:>24.0f}")


def sketch_error(device):
    model = bench_model(device=device)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 512, (128,), generator=g).to(device)
    rows = torch.tensor([30, 60, 90, 120], device=device)
    cot = cotangents(4, 5, 512, g).to(device)
    groups = [list(range(5 * n, 5 * n + 5)) for n in range(4)]
    exact = gram_cosines(parameter_gram(model, ids, rows, cot, groups=groups))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\nCountSketch cosine error ({n_params / 1e6:.2f}M parameters, 4 nodes x 5 directions, within-node pairs)")
    print(f"{'sketch_dim':>12}{'mean |err|':>14}{'max |err|':>14}{'seconds':>10}")
    for dim in (1024, 4096, 16384, 65536):
        t, gram = timed(
            lambda dim=dim: parameter_gram(model, ids, rows, cot, sketch_dim=dim), repeats=1, device=device
        )
        err = (gram_cosines(gram) - exact).abs()
        err = err[~torch.isnan(err)]
        print(f"{dim:>12}{float(err.mean()):>14.4f}{float(err.max()):>14.4f}{t:>10.3f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-probe", default=None)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe)
        return
    speed(args.device, use_lora=False)
    speed(args.device, use_lora=True)
    if args.device == "cpu":
        memory()
    sketch_error(args.device)


if __name__ == "__main__":
    main()
