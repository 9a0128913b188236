"""Targeted rollouts: our shared-prefix, batched decoder against the naive loop and the decoding floor.

    python benchmarks/bench_rollouts.py [--device cuda]

Setting (issue #2): a prefix of 256 tokens, 6 candidates x 8 rollouts of up to 64 tokens, a tiny model.
- naive: one `model.generate` per candidate with `num_return_sequences=8` (the prefix is recomputed every call);
- ours: `estimate_success` (prefix KV cache computed once, all 48 continuations decoded together, EOS rows dropped);
- floor: decoding the very same continuation tokens from an already-built, already-expanded cache (no prefix
  forward, no sampling): what any decoder must at least spend.
A second table does the same for 8 nodes of one rollout: one batched call against 8 single-node calls.
"""

import argparse

import torch
from transformers.cache_utils import Cache

from benchmarks.common import bench_model, print_table, timed
from gad_callbacks import RolloutRequest, estimate_success, rollout_requests
from gad_callbacks.engine.kv_cache import PreallocatedLayer
from gad_callbacks.engine.model_io import cache_keyword, output_cache


def floor_decode(model, prefix, continuations, device):
    """Teacher-forced decoding of `continuations` (lists of ids) from a cache built and expanded beforehand."""
    keyword = cache_keyword(model)
    rows, steps = len(continuations), max(len(c) for c in continuations)
    tokens = torch.zeros((rows, steps), dtype=torch.long, device=device)
    for i, c in enumerate(continuations):
        tokens[i, : len(c)] = torch.tensor(c)
    with torch.no_grad():
        cache = output_cache(model(input_ids=prefix.unsqueeze(0).to(device), use_cache=True))
        layers = [
            (layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1)) for layer in cache.layers
        ]

    def run():
        # The same in-place KV storage as ours, filled outside the loop: only the decoding steps remain.
        c = Cache(layers=[PreallocatedLayer(k, v, prefix.numel() + steps) for k, v in layers])
        positions = torch.arange(prefix.numel(), prefix.numel() + steps, device=device)
        with torch.no_grad():
            for t in range(steps - 1):
                out = model(
                    input_ids=tokens[:, t : t + 1],
                    position_ids=positions[t].expand(rows, 1),
                    use_cache=True,
                    **{keyword: c},
                )
                c = output_cache(out)
                torch.softmax(out.logits[:, -1].float(), -1)

    return run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prefix", type=int, default=256)
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 16))
    device = args.device
    model = bench_model(hidden=args.hidden, layers=args.layers, device=device)
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(2, 512, (args.prefix,), generator=g)
    cands = torch.randperm(510, generator=g)[: args.candidates] + 2
    n, t = args.rollouts, args.max_new_tokens
    gen = torch.Generator(device=device)
    seen = []

    def score(conts):
        seen[:] = conts
        return [0.0] * len(conts)

    def ours():
        gen.manual_seed(0)
        return estimate_success(model, prefix, cands, n, t, score, eos_token_id=1, generator=gen)

    def naive():
        outs = []
        with torch.no_grad():
            for c in cands.tolist():
                ids = torch.cat([prefix, torch.tensor([c])]).unsqueeze(0).to(device)
                outs.append(
                    model.generate(
                        ids,
                        do_sample=True,
                        num_return_sequences=n,
                        max_new_tokens=t,
                        temperature=1.0,
                        top_k=0,
                        top_p=1.0,
                        eos_token_id=1,
                        pad_token_id=0,
                    )
                )
        return outs

    t_ours, est = timed(ours, device=device)
    generated = est.generated_tokens
    floor = floor_decode(model, prefix, [list(c) for c in seen], device)
    t_floor, _ = timed(floor, device=device)
    t_naive, _ = timed(naive, device=device)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: hidden={args.hidden} layers={args.layers} vocab=512 ({n_params / 1e6:.2f}M parameters)\n"
        f"device={device} prefix={args.prefix} candidates={args.candidates} rollouts={n} max_new_tokens={t} "
        f"tokens decoded={generated} truncated={int(est.truncated.sum())}/{args.candidates * n}"
    )
    print_table(
        "one node: estimate_success",
        [
            ("floor (same tokens, cache pre-built)", t_floor),
            ("ours: estimate_success", t_ours),
            ("naive: generate per candidate", t_naive),
        ],
        "floor (same tokens, cache pre-built)",
    )
    print(
        f"speed-up over naive: {t_naive / t_ours:.1f}x (target >= 5x); ours / floor: {t_ours / t_floor:.2f} (target <= 1.5)"
    )

    # Many nodes of one rollout: one batched call (one prefix forward, one decode loop) vs one call per node.
    seq = torch.randint(2, 512, (args.prefix + 64,), generator=g)
    positions = [args.prefix + 8 * i for i in range(8)]
    node_cands = [torch.randperm(510, generator=g)[:4] + 2 for _ in positions]

    def batched():
        gen.manual_seed(0)
        reqs = [RolloutRequest(0, p, c, score) for p, c in zip(positions, node_cands)]
        return rollout_requests(model, [seq], reqs, 4, 32, eos_token_id=1, generator=gen)

    def per_node():
        gen.manual_seed(0)
        return [
            estimate_success(model, seq[:p], c, 4, 32, score, eos_token_id=1, generator=gen)
            for p, c in zip(positions, node_cands)
        ]

    t_batched, _ = timed(batched, device=device)
    t_per_node, _ = timed(per_node, device=device)
    print_table(
        "8 nodes x 4 candidates x 4 rollouts x 32 tokens",
        [("ours: one batched call", t_batched), ("one estimate_success per node", t_per_node)],
        "ours: one batched call",
    )


if __name__ == "__main__":
    main()
