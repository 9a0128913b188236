"""Which nodes of a rollout to diagnose, and which tokens to roll out at each (METHOD.md, step 1).

Node selection decides what the averages mean: `uniform` estimates the per-token average over a rollout; `entropy`
over-samples uncertain tokens (where `a` is non-trivial), so its averages are entropy-weighted; `depth_windows` takes
nodes spread over exponentially growing windows `[2^i, 2^(i+1))` of depth, so early tokens of long chains of thought
are not drowned out by the many late ones.
"""

import torch

from .directions import check_logits


STRATEGIES = ("uniform", "entropy", "depth_windows")


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy (nats) of `softmax(logits / temperature)` over the last dimension."""
    log_p = torch.log_softmax(logits.to(torch.float32) / temperature, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def candidate_set(
    student_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    mass: float = 0.95,
    max_candidates: int = 8,
    sampled_token: int | None = None,
    teacher_logits: list[torch.Tensor] | tuple = (),
    teacher_top: int = 1,
) -> torch.Tensor:
    """
    The candidate set `K(u)`: the student's most likely tokens until their cumulative probability reaches `mass` (the
    token that crosses it included) or `max_candidates` tokens, plus the sampled token, plus each teacher's
    `teacher_top` most likely tokens, so that every teacher's proposal is scored. Order: the student's tokens by
    decreasing probability, then the additions in the order given, without repeats.

    Args:
        student_logits (`torch.Tensor`):
            Student logits at the node, `[V]`.
        temperature (`float`, *optional*, defaults to `1.0`):
            Student sampling temperature.
        mass (`float`, *optional*, defaults to `0.95`):
            Cumulative probability to cover with the student's own top tokens.
        max_candidates (`int`, *optional*, defaults to `8`):
            Cap on the student's own top tokens (the additions come on top of it).
        sampled_token (`int`, *optional*):
            The token the student actually emitted at the node.
        teacher_logits (`list[torch.Tensor]`, *optional*):
            Each teacher's logits at the node, `[V]`.
        teacher_top (`int`, *optional*, defaults to `1`):
            How many of each teacher's top tokens to add.

    Returns:
        `torch.Tensor`: candidate ids, `[K]`, long.
    """
    check_logits("student_logits", student_logits)
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1], got {mass}.")
    if max_candidates < 1:
        raise ValueError(f"max_candidates must be >= 1, got {max_candidates}.")
    z = student_logits.reshape(-1)
    probs, order = torch.sort(torch.softmax(z.to(torch.float32) / temperature, dim=-1), descending=True)
    # Number of tokens needed so that the mass *before* the last one is still short of `mass`.
    needed = int((torch.cumsum(probs, 0) - probs < mass).sum())
    chosen = order[: max(1, min(needed, max_candidates))].tolist()
    extras = [] if sampled_token is None else [int(sampled_token)]
    for t_logits in teacher_logits:
        if t_logits.numel() != z.numel():
            raise ValueError(
                f"Teacher logits have {t_logits.numel()} entries, the student's {z.numel()}: a teacher must share the "
                "student's vocabulary."
            )
        check_logits("teacher_logits", t_logits)
        extras.extend(torch.topk(t_logits.reshape(-1), k=teacher_top).indices.tolist())
    for tok in extras:
        if not 0 <= tok < z.numel():
            raise ValueError(f"Token id {tok} is outside the vocabulary [0, {z.numel()}).")
        if tok not in chosen:
            chosen.append(tok)
    return torch.tensor(chosen, dtype=torch.long)


def select_nodes(
    num_positions: int,
    num_nodes: int,
    strategy: str = "uniform",
    *,
    entropies: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """
    Choose `num_nodes` distinct positions among `range(num_positions)` of one rollout's completion.

    Args:
        num_positions (`int`):
            Completion length (positions `0 .. num_positions - 1` are nodes).
        num_nodes (`int`):
            How many to pick; all positions when there are fewer (or fewer with positive entropy).
        strategy (`str`, *optional*, defaults to `"uniform"`):
            `"uniform"`, `"entropy"` (probability proportional to the student's entropy, needs `entropies`), or
            `"depth_windows"` (round-robin over windows `[2^i, 2^(i+1))` of 1-based depth, uniform within a window).
        entropies (`torch.Tensor`, *optional*):
            Student entropy at each position, `[num_positions]`.
        generator (`torch.Generator`, *optional*):
            Source of randomness (the global RNG is never touched).

    Returns:
        `torch.Tensor`: sorted positions, long.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown node selection strategy {strategy!r}; expected one of {STRATEGIES}.")
    if num_positions <= 0 or num_nodes <= 0:
        return torch.zeros(0, dtype=torch.long)
    if strategy == "uniform":
        picked = torch.randperm(num_positions, generator=generator)[:num_nodes]
    elif strategy == "entropy":
        if entropies is None or entropies.numel() != num_positions:
            raise ValueError("strategy='entropy' needs `entropies` with one value per position.")
        weights = entropies.to(torch.float64).clamp_min(0.0)
        n = min(num_nodes, int((weights > 0).sum()))
        if n == 0:
            return torch.zeros(0, dtype=torch.long)
        picked = torch.multinomial(weights, n, replacement=False, generator=generator)
    else:
        windows, start = [], 1
        while start <= num_positions:
            # 1-based depth d in [start, 2 start) is position d - 1.
            window = torch.arange(start - 1, min(2 * start, num_positions + 1) - 1)
            windows.append(window[torch.randperm(window.numel(), generator=generator)].tolist())
            start *= 2
        picked = []
        while len(picked) < min(num_nodes, num_positions):
            for window in windows:
                if window and len(picked) < num_nodes:
                    picked.append(window.pop())
        picked = torch.tensor(picked, dtype=torch.long)
    return torch.sort(picked).values
