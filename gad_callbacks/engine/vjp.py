"""Parameter-space geometry of logit directions: Gram matrices of `J^T d` without materialising all of them.

Every parameter-space vector the method needs is a vector-Jacobian product `J^T d`, `J` the Jacobian of the
student's logits at a node and `d` a logit-space direction. All of them share one forward pass. Cosines only need
the Gram matrix `<J^T d_i, J^T d_j>`, which is a sum over parameter tensors, so it can be accumulated tensor by tensor:

- the backward is cut into segments at the inputs of the transformer blocks (the block's input is replaced by a
  detached leaf during the forward); going back segment by segment, each block's batched parameter gradients
  `[B, *shape]` are reduced into the Gram matrix and freed before the next block is touched. Peak memory is `B`
  copies of *one block's* parameters (plus tied weights, held until their last use), not `B` copies of the model;
- `torch.autograd.grad` is used throughout, never `.backward()`: nothing is accumulated into `.grad`, and DeepSpeed /
  DDP gradient hooks (which fire on accumulation) never see the probe;
- for very large parameter sets a seeded CountSketch of each vector can replace the exact products (`sketch_dim`).
  Its hash is arithmetic on coordinates, so every device and every rank computes the same sketch.
"""

import torch

from ..method.alignment import gram_cosines
from .model_io import eval_mode, grad_enabled_on, model_device, select_parameters


_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer (Weyl-sequence constant)


def _find_blocks(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The transformer's block list: the `ModuleList` holding the most parameters (decoder layers)."""
    best, best_size = None, 0
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = module, size
    return best


def _count_sketch(flat: torch.Tensor, dim: int, salt: int, chunk: int = 1 << 20) -> torch.Tensor:
    """CountSketch `[B, n] -> [B, dim]`: coordinate `j` goes to bucket `h(j)` with sign `s(j)`, both from a hash."""
    out = torch.zeros(flat.shape[0], dim, dtype=flat.dtype, device=flat.device)
    offset = torch.tensor(salt + 1, dtype=torch.int64, device=flat.device) * _GOLDEN
    # Coordinates in chunks, so the temporaries stay small next to the gradient being sketched.
    for start in range(0, flat.shape[1], chunk):
        x = torch.arange(start, min(start + chunk, flat.shape[1]), device=flat.device, dtype=torch.int64) + offset
        # splitmix64-style mixing; int64 overflow wraps, which is what a hash wants.
        x = (x ^ (x >> 30)) * -4658895280553007687
        x = (x ^ (x >> 27)) * -7723592293110705685
        x = x ^ (x >> 31)
        sign = 1.0 - 2.0 * ((x >> 40) & 1).to(flat.dtype)
        out.index_add_(1, torch.remainder(x, dim), flat[:, start : start + x.numel()] * sign)
    return out


class _GramAccumulator:
    """Reduces batched per-tensor gradients `[B, *shape]` into a Gram matrix (or sketches), one tensor at a time."""

    def __init__(self, params, batch, device, sketch_dim):
        self.index = {id(p): i for i, p in enumerate(params)}
        self.sketch_dim = sketch_dim
        self.gram = torch.zeros(batch, batch, dtype=torch.float64, device=device)
        self.sketch = (
            None if sketch_dim is None else torch.zeros(batch, sketch_dim, dtype=torch.float64, device=device)
        )

    def add(self, param, grad):
        # Half-precision gradients are reduced in float32; float64 models keep float64 (exactness tests).
        flat = grad.reshape(grad.shape[0], -1)
        flat = flat.to(torch.promote_types(flat.dtype, torch.float32))
        if self.sketch is None:
            self.gram += (flat @ flat.T).double()
        else:
            self.sketch += _count_sketch(flat, self.sketch_dim, self.index[id(param)]).to(self.sketch.dtype)


def _cut_blocks(blocks, records):
    """Forward pre-hooks replacing each block's hidden-state input by a detached leaf, recording (input, leaf)."""

    def hook(module, args, kwargs):
        if args:
            x = args[0]
            leaf = x.detach().requires_grad_(True)
            records.append((x, leaf))
            return (leaf,) + tuple(args[1:]), kwargs
        x = kwargs["hidden_states"]
        leaf = x.detach().requires_grad_(True)
        records.append((x, leaf))
        return args, {**kwargs, "hidden_states": leaf}

    return [block.register_forward_pre_hook(hook, with_kwargs=True) for block in blocks]


def _segmented_gram(logits, cotangents, params, records, acc, shared) -> bool:
    """Backward segment by segment; returns False when a parameter turned out to span two segments (not tied)."""
    # Segments, last first: head (logits back to the last block's input leaf), each block (its output, which is the
    # next block's recorded input, back to its own leaf), then the embedding (the first block's input, no leaf).
    segments = [(logits, records[-1][1])]
    segments += [(records[k + 1][0], records[k][1]) for k in reversed(range(len(records) - 1))]
    segments.append((records[0][0], None))
    held: dict[int, torch.Tensor] = {}
    seen: set[int] = set()
    cot = cotangents
    for outputs, leaf in segments:
        if cot is None or not outputs.requires_grad:
            break  # nothing upstream depends on the chosen parameters (e.g. frozen embeddings under LoRA)
        inputs = list(params) + ([leaf] if leaf is not None else [])
        grads = torch.autograd.grad(
            outputs, inputs, grad_outputs=cot, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
        for p, g in zip(params, grads[: len(params)], strict=True):
            if g is None:
                continue
            if id(p) in shared:
                held[id(p)] = g if id(p) not in held else held[id(p)] + g
            elif id(p) in seen:
                return False
            else:
                seen.add(id(p))
                acc.add(p, g)
        cot = grads[-1] if leaf is not None else None
    for p in params:
        if id(p) in held:
            acc.add(p, held[id(p)])
    return True


def parameter_gram(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    rows: torch.Tensor,
    cotangents: torch.Tensor,
    params="trainable",
    *,
    groups: list[list[int]] | None = None,
    sketch_dim: int | None = None,
    segmented: bool = True,
) -> torch.Tensor:
    """
    Gram matrix of the parameter-space vectors `J^T c_i` for logit cotangents `c_i` read at several positions of one
    sequence, from one shared forward.

    Args:
        model (`torch.nn.Module`):
            Causal LM (plain or PEFT). Eval mode during the probe (no dropout), restored after.
        input_ids (`torch.Tensor`):
            The sequence, 1-D.
        rows (`torch.Tensor`):
            Positions whose logits the cotangents apply to, `[R]` (the logits at position `i` predict token `i + 1`).
        cotangents (`torch.Tensor`):
            `[B, R, V]`: vector `i` is `J^T` applied to `cotangents[i]` (all `R` positions at once, so a vector can
            be a single node's direction or a sum over nodes).
        params (`str` or `list`, *optional*, defaults to `"trainable"`):
            `"trainable"`, `"all"` or a list of parameters.
        groups (`list[list[int]]`, *optional*):
            Vectors whose mutual products are needed, one backward pass per group (bounds memory to the largest
            group); products across groups are NaN. Default: one group holding every vector.
        sketch_dim (`int`, *optional*):
            Replace the exact inner products by those of a CountSketch of this dimension (then every pair is
            estimated, across groups too).
        segmented (`bool`, *optional*, defaults to `True`):
            Block-by-block backward (bounded memory); `False` takes all gradients at once.

    Returns:
        `torch.Tensor`: `[B, B]` float64 Gram matrix, on the CPU.
    """
    input_ids = torch.as_tensor(input_ids).reshape(-1)
    rows = torch.as_tensor(rows).reshape(-1).long()
    if cotangents.dim() != 3 or cotangents.shape[1] != rows.numel():
        raise ValueError(f"cotangents must be [B, R={rows.numel()}, V], got {tuple(cotangents.shape)}.")
    if int(rows.min()) < 0 or int(rows.max()) >= input_ids.numel():
        raise ValueError(f"rows must lie in [0, {input_ids.numel()}), got {rows.tolist()}.")
    chosen = select_parameters(model, params)
    device = model_device(model)
    blocks = _find_blocks(model) if segmented else None
    records: list = []
    handles = _cut_blocks(blocks, records) if blocks is not None else []
    with eval_mode(model), grad_enabled_on(chosen), torch.enable_grad():
        try:
            logits = model(
                input_ids=input_ids.to(device).unsqueeze(0), use_cache=False, logits_to_keep=rows.to(device)
            ).logits
        finally:
            for h in handles:
                h.remove()
        if logits.shape[-1] != cotangents.shape[-1]:
            raise ValueError(
                f"cotangents have {cotangents.shape[-1]} entries per row but the model has {logits.shape[-1]} logits."
            )
        cot = cotangents.to(device=device, dtype=logits.dtype).unsqueeze(1)  # [B, 1, R, V]
        # Tied weights (e.g. embeddings = LM head) get gradient from two segments: hold them until both are in.
        counts: dict[int, int] = {}
        for _, p in model.named_parameters(remove_duplicate=False):
            counts[id(p)] = counts.get(id(p), 0) + 1
        shared = {i for i, c in counts.items() if c > 1}
        batch = cot.shape[0]
        groups = [list(range(batch))] if groups is None else [list(g) for g in groups]
        gram = torch.full((batch, batch), float("nan"), dtype=torch.float64)
        sketches = None if sketch_dim is None else torch.zeros(batch, sketch_dim, dtype=torch.float64)
        for group in groups:
            # The forward graph is retained, so each group is one more backward, never one more forward.
            acc = _GramAccumulator(chosen, len(group), device, sketch_dim)
            ok = (
                blocks is not None
                and len(records) == len(blocks)
                and _segmented_gram(logits, cot[group], chosen, records, acc, shared)
            )
            if not ok:
                # Some architectures reuse a parameter across blocks, or call a block twice: the per-segment
                # reduction would miss cross terms, so take every gradient at once instead (exact, more memory).
                acc = _GramAccumulator(chosen, len(group), device, sketch_dim)
                grads = torch.autograd.grad(
                    logits,
                    chosen,
                    grad_outputs=cot[group],
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
                for p, g in zip(chosen, grads, strict=True):
                    if g is not None:
                        acc.add(p, g)
            idx = torch.tensor(group)
            if sketches is None:
                gram[idx[:, None], idx[None, :]] = acc.gram.cpu()
            else:
                sketches[idx] = acc.sketch.cpu()
        return gram if sketches is None else sketches @ sketches.T


def parameter_cosines(
    model: torch.nn.Module, input_ids: torch.Tensor, position: int, directions: torch.Tensor, params="trainable"
) -> torch.Tensor:
    """
    Cosine matrix of the parameter-space vectors `J^T d_i`, `J` the Jacobian of the logits at `position` of
    `input_ids` with respect to the chosen parameters.

    Args:
        model (`torch.nn.Module`):
            Causal LM (plain or PEFT).
        input_ids (`torch.Tensor`):
            The sequence, 1-D.
        position (`int`):
            Position whose logits the directions apply to.
        directions (`torch.Tensor`):
            Logit-space directions, `[M, V]`.
        params (`str` or `list`, *optional*, defaults to `"trainable"`):
            `"trainable"` (what `requires_grad` selects: LoRA adapters under PEFT), `"all"`, or a list of parameters.

    Returns:
        `torch.Tensor`: `[M, M]` cosines (float64); rows and columns of zero vectors are NaN.
    """
    directions = torch.as_tensor(directions)
    if directions.dim() != 2:
        raise ValueError(f"directions must be [M, V], got {tuple(directions.shape)}.")
    gram = parameter_gram(model, input_ids, torch.tensor([int(position)]), directions.unsqueeze(1), params)
    return gram_cosines(gram)
