"""Parameter-space products of one pass: the per-node Gram of candidate and teacher vectors, and rollout cosines.

A node's vectors are `J^T e_k` for each candidate `k` and `J^T b_T` for each teacher `T` (`J`: the Jacobian of the
node's logits in the chosen parameters). Every product the estimator needs is an entry of their Gram, so one
segmented backward per rollout (`engine.vjp.parameter_gram`) serves all nodes of that rollout and every teacher at
once; vectors are grouped so that at most `max_vectors` share a backward (probe memory).
"""

import torch

from ..engine.vjp import parameter_gram
from ..method.alignment import span_cosines
from .results import RolloutAlignment


def _vector_layout(nodes_of_seq, num_teachers, max_vectors):
    """Row index of every vector of one rollout, and groups of vectors that need their mutual products."""
    layout, groups, current, b = [], [], [], 0
    for k in nodes_of_seq:
        size = k + num_teachers
        idx = list(range(b, b + size))
        b += size
        layout.append(idx)
        if current and len(current) + size > max_vectors:
            groups.append(current)
            current = []
        current = current + idx
    groups.append(current)
    return layout, groups


def by_sequence(nodes):
    out: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        out.setdefault(node.sequence, []).append(i)
    return out


def _candidates_in_gram(prep) -> torch.Tensor:
    """The candidates that get a parameter-space vector: none at a node stopped by screening (its ideal is flat)."""
    return prep["candidates"][:0] if prep.get("screened_out") else prep["candidates"]


def _weight(prep) -> float:
    return prep.get("pool_weight", 1.0)


def param_grams(model, sequences, nodes, prepared, names, config):
    """
    Per node: Gram of `[J^T e_k for k in K] + [J^T b_T]` (candidate rows NaN at a node stopped by screening, which
    has no candidate vectors). Per rollout: the whole Gram when all its nodes fit in one backward group (the
    rollout-level cosine then needs no other pass), else None.
    """
    node_grams: list[torch.Tensor | None] = [None] * len(nodes)
    rollout_grams: dict[int, tuple[torch.Tensor, list] | None] = {}
    m = len(names)
    for seq, idxs in by_sequence(nodes).items():
        vocab = prepared[idxs[0]]["student"].numel()
        sizes = [_candidates_in_gram(prepared[i]).numel() for i in idxs]
        if sum(sizes) + m == 0:  # every node stopped by screening and no teacher: no vector at all
            for i in idxs:
                k = prepared[i]["candidates"].numel()
                node_grams[i] = torch.full((k, k), float("nan"), dtype=torch.float64)
            rollout_grams[seq] = (torch.zeros(0, 0, dtype=torch.float64), [[] for _ in idxs])
            continue
        layout, groups = _vector_layout(sizes, m, config.max_vectors)
        cot = torch.zeros(sum(len(rows) for rows in layout), len(idxs), vocab)
        for r, (i, rows) in enumerate(zip(idxs, layout, strict=True)):
            cand = _candidates_in_gram(prepared[i])
            cot[torch.tensor(rows[: cand.numel()], dtype=torch.long), r, cand] = 1.0
            for t, name in enumerate(names):
                cot[rows[cand.numel() + t], r] = prepared[i]["directions"][name]
        positions = torch.tensor([nodes[i].prefix_len - 1 for i in idxs])
        length = max(nodes[i].prefix_len for i in idxs)
        gram = parameter_gram(
            model, sequences[seq][:length], positions, cot, config.params, groups=groups, sketch_dim=config.sketch_dim
        )
        for i, rows in zip(idxs, layout, strict=True):
            sel = torch.tensor(rows, dtype=torch.long)
            k = prepared[i]["candidates"].numel()
            node_grams[i] = torch.full((k + m, k + m), float("nan"), dtype=gram.dtype)
            own = torch.arange(k + m - len(rows), k + m)  # the candidates' rows come first, or not at all
            node_grams[i][own[:, None], own[None, :]] = gram[sel[:, None], sel[None, :]]
        rollout_grams[seq] = (gram, layout) if len(groups) == 1 else None
    return node_grams, rollout_grams


def rollout_cosines(model, sequences, nodes, prepared, names, config, rollout_grams):
    """`cos(sum_u g_ideal(u), sum_u g_T(u))` per rollout, from its Gram, or from one more backward when it was split."""
    out = []
    m = len(names)
    for seq, idxs in by_sequence(nodes).items():
        whole = rollout_grams[seq]
        if whole is not None:
            gram, layout = whole
            ideal = torch.zeros(gram.shape[0], dtype=torch.float64)
            teachers = torch.zeros(m, gram.shape[0], dtype=torch.float64)
            for i, rows in zip(idxs, layout, strict=True):
                k = len(rows) - m  # 0 at a node stopped by screening: its ideal is flat
                if k:
                    # A node finished after a flat screen stands for 1 / screen_keep such nodes (its pool weight):
                    # the summed ideal keeps the expectation it has without screening.
                    ideal[torch.tensor(rows[:k], dtype=torch.long)] = prepared[i]["a_k"] * _weight(prepared[i])
                for t in range(m):
                    teachers[t, rows[k + t]] = 1.0
            cos = span_cosines(gram, ideal[None], teachers)[0]
        else:
            vocab = prepared[idxs[0]]["student"].numel()
            cot = torch.zeros(1 + m, len(idxs), vocab)
            for r, i in enumerate(idxs):
                cot[0, r] = prepared[i]["ideal"] * _weight(prepared[i])
                for t, name in enumerate(names):
                    cot[1 + t, r] = prepared[i]["directions"][name]
            positions = torch.tensor([nodes[i].prefix_len - 1 for i in idxs])
            length = max(nodes[i].prefix_len for i in idxs)
            gram = parameter_gram(
                model, sequences[seq][:length], positions, cot, config.params, sketch_dim=config.sketch_dim
            )
            cos = span_cosines(gram, torch.eye(1 + m)[:1], torch.eye(1 + m)[1:])[0]
        out.append(RolloutAlignment(seq, len(idxs), {n: float(c) for n, c in zip(names, cos, strict=True)}))
    return out
