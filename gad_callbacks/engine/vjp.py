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
- the output and input embedding matrices (`[vocab, hidden]` each, the largest tensors of a real model, and one
  tensor when tied) never get per-vector gradients: a linear layer's gradient is a sum of outer products of its
  inputs and output cotangents, so its Gram entries are inner products of those ("ghost norms", as in per-example
  gradient clipping): `B` copies of a 49k x 576 matrix would be 4.5 GB at `B = 40`, the products need a few MB;
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


class _EmbeddingGhost:
    """
    Gram entries of the embedding weights from activations and cotangents, without per-vector gradients.

    Output embedding `W_out` (logits `z_r = W_out h_r` at the kept rows `r`): vector `i`'s gradient is
    `sum_r c_ir h_r^T`, so `<., .>_ij = sum_{r,r'} (c_ir . c_jr') (h_r . h_r')`. Input embedding `W_in` (row `x_s`
    looked up at position `s`, output cotangent `d_is`): the gradient is `sum_s e_{x_s} d_is^T`, so with
    `D_iu = sum_{s: x_s = u} d_is` the entry is `sum_u D_iu . D_ju`. Tied (`W_out is W_in`): plus the cross terms
    `sum_{r,u} c_ir[u] (h_r . D_ju)` both ways. Only plain `nn.Linear` / `nn.Embedding` modules qualify (a wrapped or
    renormalising one keeps the ordinary path).
    """

    def __init__(self, model, chosen):
        ids = {id(p) for p in chosen}
        out_mod = getattr(model, "get_output_embeddings", lambda: None)()
        in_mod = getattr(model, "get_input_embeddings", lambda: None)()
        self.out_mod = out_mod if type(out_mod) is torch.nn.Linear and id(out_mod.weight) in ids else None
        self.in_mod = (
            in_mod
            if type(in_mod) is torch.nn.Embedding
            and in_mod.max_norm is None
            and not in_mod.scale_grad_by_freq
            and id(in_mod.weight) in ids
            else None
        )
        weight = getattr(out_mod, "weight", None)
        tied = weight is not None and weight is getattr(in_mod, "weight", None)
        if tied and (self.out_mod is None) != (self.in_mod is None):
            self.out_mod = self.in_mod = None  # a tied matrix is handled whole, one way or the other
        self.tied = tied and self.out_mod is not None
        self.h = self.z = self.emb_out = None

    @property
    def weights(self) -> set[int]:
        return {id(m.weight) for m in (self.out_mod, self.in_mod) if m is not None}

    def hooks(self):
        handles = []
        if self.out_mod is not None:

            def keep_input_output(module, args, output):
                self.h, self.z = args[0], output

            handles.append(self.out_mod.register_forward_hook(keep_input_output))
        if self.in_mod is not None:

            def keep_output(module, args, output):
                self.emb_out = output

            handles.append(self.in_mod.register_forward_hook(keep_output))
        return handles

    def ready(self) -> bool:
        """Whether every ghosted weight's activations were seen in the forward (else: the ordinary path)."""
        return (self.out_mod is None or self.h is not None) and (self.in_mod is None or self.emb_out is not None)

    def head_cotangents(self, logits, cot):
        """Cotangents at the output layer's own output: the logits' unless the model post-processes them (a scale,
        a soft cap), then through that step."""
        if self.out_mod is None or self.z is logits:
            return cot
        return torch.autograd.grad(logits, self.z, grad_outputs=cot, retain_graph=True, is_grads_batched=True)[0]

    def gram(self, cot, input_ids, d_emb) -> torch.Tensor:
        """`cot`: `[B, 1, R, V]` cotangents at the output layer's output; `d_emb`: `[B, 1, L, H]` at the lookup's."""
        dtype = torch.promote_types(cot.dtype, torch.float32)
        c = cot[:, 0].to(dtype)  # everything on this device (the head and the lookup may sit on others)
        b = c.shape[0]
        gram = torch.zeros(b, b, dtype=dtype, device=c.device)
        h = self.h[0].detach().to(device=c.device, dtype=dtype) if self.out_mod is not None else None  # [R, H]
        if self.out_mod is not None:
            cc = torch.einsum("brv,csv->bcrs", c, c)
            gram += torch.einsum("bcrs,rs->bc", cc, h @ h.T)
        if self.in_mod is not None:
            x = input_ids.reshape(-1).to(c.device)
            keep = (
                x != self.in_mod.padding_idx if self.in_mod.padding_idx is not None else torch.ones_like(x, dtype=bool)
            )
            tokens, where = torch.unique(x[keep], return_inverse=True)
            d = d_emb[:, 0].to(device=c.device, dtype=dtype)[:, keep]  # [B, L', H]
            grouped = torch.zeros(b, tokens.numel(), d.shape[-1], dtype=dtype, device=d.device)
            grouped.index_add_(1, where, d)  # D_iu
            gram += torch.einsum("bud,cud->bc", grouped, grouped)
            if self.tied:
                cross = torch.einsum("bru,rd,cud->bc", c[:, :, tokens], h, grouped)
                gram += cross + cross.T
        return gram.double()


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


def _segmented_gram(logits, cotangents, params, records, acc, shared, ghost=None, input_ids=None) -> bool:
    """Backward segment by segment; returns False when a parameter turned out to span two segments (not tied)."""
    # Segments, last first: head (logits back to the last block's input leaf), each block (its output, which is the
    # next block's recorded input, back to its own leaf), then the embedding (the first block's input, no leaf).
    segments = [(logits, records[-1][1])]
    segments += [(records[k + 1][0], records[k][1]) for k in reversed(range(len(records) - 1))]
    segments.append((records[0][0], None))
    ghosted = ghost.weights if ghost is not None else set()
    params = [p for p in params if id(p) not in ghosted]
    # A ghosted input embedding needs the cotangent at the lookup's output: the embedding segment ends there.
    emb_out = ghost.emb_out if ghost is not None and ghost.in_mod is not None else None
    held: dict[int, torch.Tensor] = {}
    seen: set[int] = set()
    cot, d_emb = cotangents, None
    for outputs, leaf in segments:
        if cot is None or not outputs.requires_grad:
            break  # nothing upstream depends on the chosen parameters (e.g. frozen embeddings under LoRA)
        if leaf is None and emb_out is not None:
            if outputs is emb_out:  # the first block reads the lookup's output as it is
                d_emb = cot
                break
            leaf = emb_out
        inputs = list(params) + ([leaf] if leaf is not None else [])
        grads = torch.autograd.grad(
            outputs, inputs, grad_outputs=cot, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
        if leaf is not None and leaf is emb_out:
            d_emb = grads[-1]
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
    if ghosted:
        if emb_out is not None and d_emb is None:  # the backward never reached the embedding: no gradient there
            d_emb = torch.zeros(cotangents.shape[0], *emb_out.shape, dtype=emb_out.dtype, device=emb_out.device)
        acc.gram += ghost.gram(ghost.head_cotangents(logits, cotangents), input_ids, d_emb)
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
    ghost = _EmbeddingGhost(model, chosen) if blocks is not None and sketch_dim is None else None
    if ghost is not None and ghost.weights:
        handles += ghost.hooks()
    else:
        ghost = None
    with eval_mode(model), grad_enabled_on(chosen), torch.enable_grad():
        try:
            logits = model(
                input_ids=input_ids.to(device).unsqueeze(0), use_cache=False, logits_to_keep=rows.to(device)
            ).logits
        finally:
            for h in handles:
                h.remove()
        if ghost is not None and not ghost.ready():
            ghost = None
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
                and _segmented_gram(logits, cot[group], chosen, records, acc, shared, ghost, input_ids.to(device))
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
