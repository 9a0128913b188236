"""Targeted rollouts: force each candidate token at a node, let the student finish, score the continuations.

Cost is what decides whether the diagnostic can stay on during training, so the decoding is organised around three
facts:
- every continuation of a node shares the node's prefix, and every node of one rollout shares the rollout's prefix:
  one forward over a rollout yields the KV cache of all its nodes (causal attention: the keys at position `i` do not
  depend on later tokens), so a prefix is never recomputed;
- all candidates x rollouts of many nodes decode together, one batched step per token; prefixes of different lengths
  are left-padded (masked) so that new tokens land at the same cache index;
- a continuation that has emitted EOS leaves the batch (rows are compacted once enough of them are done).

One bad value never sinks the batch: a row whose logits turn non-finite stops there, and a continuation the verifier
scores NaN / infinite / `None` is kept as missing data; both are counted per candidate
(`SuccessEstimate.unscorable`) and left out of the success estimate.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..method.directions import check_candidates
from ..method.success import SuccessEstimate, pad_rows
from .kv_cache import batch_cache, prefix_caches
from .model_io import cache_keyword, eval_mode, model_device, output_cache
from .verifiers import as_score


Score = Callable[[list[list[int]]], Sequence[float | None]]


class ScoreError(ValueError):
    """The verifier of targeted continuations failed (raised, or broke its contract): a verifier problem, not a
    decoding one, so that callers can count it as such."""


@dataclass
class RolloutRequest:
    """
    One node to roll out: the first `prefix_len` tokens of `sequences[sequence]` are the node's prefix `(x, y_<t)`.

    Args:
        sequence (`int`):
            Index of the full token sequence (prompt + completion) this node belongs to.
        prefix_len (`int`):
            Number of tokens before the node.
        candidates (`torch.Tensor`):
            Candidate tokens to force, `[K]`.
        score (`Callable`):
            `score(continuations) -> list[float]`, each continuation the token ids after the prefix (forced candidate
            first, EOS included if produced); `None` or a non-finite score marks a continuation as unscorable.
        max_new_tokens (`int`, *optional*):
            This node's own limit on sampled tokens (e.g. the trainer's remaining completion budget), at most the
            batch's `max_new_tokens`.
        counts (`torch.Tensor`, *optional*):
            Continuations per candidate, `[K]` (adaptive allocation); `num_rollouts` each when omitted.
        generator (`torch.Generator`, *optional*):
            This node's own sampling randomness, on the model's device. With it, the node's continuations draw only
            from it, so they do not depend on which other nodes share the batch (only on the float rounding of a
            batched forward); without it, the batch's shared `generator`.
    """

    sequence: int
    prefix_len: int
    candidates: torch.Tensor
    score: Score
    max_new_tokens: int | None = None
    counts: torch.Tensor | None = None
    generator: torch.Generator | None = None


def _chunk_requests(rows_per_request, max_batch_rows):
    """Consecutive requests grouped so that a group decodes at most `max_batch_rows` rows (at least one request)."""
    chunk, rows = [], 0
    for i, n in enumerate(rows_per_request):
        if chunk and rows + n > max_batch_rows:
            yield chunk
            chunk, rows = [], 0
        chunk.append(i)
        rows += n
    if chunk:
        yield chunk


def _is_eos(tokens: torch.Tensor, eos_ids: torch.Tensor) -> torch.Tensor:
    if eos_ids.numel() == 0:
        return torch.zeros_like(tokens, dtype=torch.bool)
    return torch.isin(tokens, eos_ids)


def _sample(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row by inverse-CDF sampling: exact, one uniform per row (cheaper than `multinomial` on CPU)."""
    cdf = probs.cumsum(-1)
    u = uniforms.to(cdf.dtype)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)


def _uniforms(requests, live_rows, limits, generator, device) -> torch.Tensor:
    """
    The uniform behind every token a chunk may sample, `[rows, max(limits)]`: row `r`'s `t`-th sampled token uses
    `[r, t]`. Each request's block comes from its own generator when it has one, so that its continuations are the same
    whichever requests share the chunk (batching all of a pass's nodes into one decode must not couple them).
    """
    limits = [max(limit, 0) for limit in limits]
    width = max(limits, default=0)
    blocks = []
    for r, rows, limit in zip(requests, live_rows, limits, strict=True):
        own = r.generator if r.generator is not None else generator
        block = torch.rand(rows, limit, generator=own, device=device)
        blocks.append(torch.nn.functional.pad(block, (0, width - limit)))
    return torch.cat(blocks) if blocks else torch.zeros(0, width, device=device)


@torch.no_grad()
def _decode_chunk(model, keyword, cache, mask, first, positions, limits, temperature, eos_ids, uniforms):
    """
    Sample up to `limits[r]` tokens after each row's forced first token, the `t`-th from `uniforms[r, t]`. Returns the
    tokens, `[R, max(limits)]` (-1 = none), and which rows stopped on non-finite logits, `[R]` (their continuation
    cannot be finished, nor scored).
    """
    rows, max_new_tokens = first.shape[0], int(limits.max())
    out_tokens = torch.full((rows, max_new_tokens), -1, dtype=torch.long, device=first.device)
    broken = torch.zeros(rows, dtype=torch.bool, device=first.device)
    alive = torch.arange(rows, device=first.device)  # original row of each batch row
    done = torch.zeros(rows, dtype=torch.bool, device=first.device)  # per batch row: finished but still present
    # Without left padding (one prefix length in the chunk) no mask is needed: a single new query attends to every
    # cached key, and skipping the mask keeps attention on its fastest kernel.
    padded = not bool(mask.all())
    current = first
    for step in range(max_new_tokens):
        kwargs = {keyword: cache}
        if padded:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            kwargs["attention_mask"] = mask
        out = model(input_ids=current[:, None], position_ids=(positions + step)[:, None], use_cache=True, **kwargs)
        cache = output_cache(out)
        logits = out.logits[:, -1].float()
        bad = ~torch.isfinite(logits).all(-1)
        if bool(bad.any()):
            # One row overflowing (half precision, a broken prefix) must not take the other rows down with it.
            broken[alive[bad & ~done]] = True
            done = done | bad
            logits = torch.where(bad[:, None], torch.zeros_like(logits), logits)  # sampled, then discarded
        nxt = _sample(torch.softmax(logits / temperature, dim=-1), uniforms[alive, step])
        keep = ~done
        out_tokens[alive[keep], step] = nxt[keep]
        done = done | _is_eos(nxt, eos_ids) | (limits <= step + 1)
        if bool(done.all()):
            break
        # Compact once a meaningful share of rows is finished: each compaction copies the cache once, which would not
        # pay for every single finished row.
        if int(done.sum()) * 8 >= done.numel():
            keep_idx = (~done).nonzero().squeeze(1)
            for layer in cache.layers:
                layer.batch_select_indices(keep_idx)
            alive, mask, positions, nxt = alive[keep_idx], mask[keep_idx], positions[keep_idx], nxt[keep_idx]
            limits = limits[keep_idx]
            done = done[keep_idx]
        current = nxt
    return out_tokens, broken


def checked_scores(score: Score, continuations: list[list[int]]) -> torch.Tensor:
    """
    `score(continuations)` as float64, NaN where the verifier gave `None` or a non-finite number; [`ScoreError`] when it
    raises or breaks its contract (not one number per continuation).
    """
    if not continuations:
        return torch.zeros(0, dtype=torch.float64)
    try:
        scores = list(score(continuations))
    except Exception as err:  # a verifier's failure must name itself, not surface as a decoding error
        raise ScoreError(f"The score function raised {type(err).__name__}: {err}") from err
    if len(scores) != len(continuations):
        raise ScoreError(
            f"The score function returned {len(scores)} scores for {len(continuations)} continuations; it must "
            "return exactly one score per continuation."
        )
    values = []
    for i, s in enumerate(scores):
        try:
            values.append(as_score(s))
        except (TypeError, ValueError) as err:  # name the first offender, not the whole (possibly long) list
            raise ScoreError(
                f"The score function must return numbers (or None: unscorable); score {i} of {len(scores)} is "
                f"{type(s).__name__} {s!r:.80}."
            ) from err
    return torch.tensor(values, dtype=torch.float64)


def rollout_requests(
    model: torch.nn.Module,
    sequences: Sequence[torch.Tensor],
    requests: Sequence[RolloutRequest],
    num_rollouts: int,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    max_batch_rows: int = 512,
) -> list[SuccessEstimate]:
    """
    Targeted rollouts for many nodes at once (the batched form of [`estimate_success`]).

    Args:
        model (`torch.nn.Module`):
            The student (causal LM, plain or PEFT). Put in eval mode for the duration, then restored.
        sequences (`Sequence[torch.Tensor]`):
            Full token sequences (1-D) the nodes' prefixes are taken from; one forward each.
        requests (`Sequence[RolloutRequest]`):
            The nodes.
        num_rollouts (`int`):
            Continuations per candidate.
        max_new_tokens (`int`):
            Tokens sampled after the forced candidate, at most.
        temperature (`float`, *optional*, defaults to `1.0`):
            Student sampling temperature.
        eos_token_id (`int` or `Sequence[int]`, *optional*):
            Token(s) that end a continuation.
        generator (`torch.Generator`, *optional*):
            Sampling randomness of the requests without their own, on the model's device; the global RNG is never
            used.
        max_batch_rows (`int`, *optional*, defaults to `512`):
            Most continuations decoded in one batch (bounds the memory of the expanded KV cache); whole nodes are kept
            together.

    Returns:
        `list[SuccessEstimate]`: one per request, in order; unscorable continuations are counted in `unscorable`,
        not scored. A score function that raises or returns the wrong number of scores raises [`ScoreError`].
    """
    if num_rollouts < 1 or max_new_tokens < 0 or temperature <= 0:
        raise ValueError(
            f"Need num_rollouts >= 1, max_new_tokens >= 0, temperature > 0; got {num_rollouts}, {max_new_tokens}, "
            f"{temperature}."
        )
    device = model_device(model)
    vocab = model.get_output_embeddings().weight.shape[0]
    counts = []
    for r in requests:
        r.candidates = check_candidates(r.candidates, vocab)
        if not 1 <= r.prefix_len <= sequences[r.sequence].numel():
            raise ValueError(f"prefix_len {r.prefix_len} is outside [1, {sequences[r.sequence].numel()}].")
        c = torch.full_like(r.candidates, num_rollouts) if r.counts is None else torch.as_tensor(r.counts).long()
        if c.shape != r.candidates.shape or bool((c < 0).any()):
            raise ValueError(f"counts must give a non-negative count per candidate; got {c.tolist()}.")
        counts.append(c.cpu())
    eos_ids = torch.as_tensor([] if eos_token_id is None else eos_token_id, dtype=torch.long, device=device).reshape(
        -1
    )
    keyword = cache_keyword(model)
    results: list[SuccessEstimate | None] = [None] * len(requests)
    with eval_mode(model), torch.no_grad():
        caches = prefix_caches(model, sequences, requests)
        active = [i for i, c in enumerate(counts) if int(c.sum()) > 0]
        for i in set(range(len(requests))) - set(active):  # nothing to roll out (e.g. a node already decided)
            k = requests[i].candidates.numel()
            results[i] = SuccessEstimate(
                requests[i].candidates.cpu(), pad_rows([torch.zeros(0)] * k), torch.zeros(k, dtype=torch.long)
            )
        for chunk in _chunk_requests([int(counts[i].sum()) for i in active], max(1, max_batch_rows)):
            chunk = [active[j] for j in chunk]
            chunk_requests = [requests[i] for i in chunk]
            firsts = [
                r.candidates.to(device).repeat_interleave(counts[i].to(device)) for i, r in zip(chunk, chunk_requests)
            ]
            limit = [
                min(max_new_tokens, r.max_new_tokens if r.max_new_tokens is not None else max_new_tokens)
                for r in chunk_requests
            ]
            first_done = [_is_eos(f, eos_ids) | (lim <= 0) for f, lim in zip(firsts, limit, strict=True)]
            cache, mask = batch_cache(chunk_requests, caches, first_done, max_new_tokens)
            live_first = torch.cat([f[~d] for f, d in zip(firsts, first_done, strict=True)])
            live_pos = torch.cat(
                [
                    torch.full((int((~d).sum()),), r.prefix_len, device=device)
                    for r, d in zip(chunk_requests, first_done, strict=True)
                ]
            )
            live_limits = torch.cat(
                [torch.full((int((~d).sum()),), lim, device=device) for lim, d in zip(limit, first_done, strict=True)]
            )
            tokens = torch.full((live_first.numel(), 0), -1, dtype=torch.long, device=device)
            broken = [False] * live_first.numel()
            if cache is not None:
                live_rows = [int((~d).sum()) for d in first_done]
                uniforms = _uniforms(chunk_requests, live_rows, limit, generator, device)
                tokens, broken = _decode_chunk(
                    model, keyword, cache, mask, live_first, live_pos, live_limits, temperature, eos_ids, uniforms
                )
                broken = broken.tolist()
            offset, eos_set = 0, set(eos_ids.tolist())
            for i, r, first, done in zip(chunk, chunk_requests, firsts, first_done, strict=True):
                k = r.candidates.numel()
                continuations, truncated, scorable = [], torch.zeros(k, dtype=torch.long), [True] * len(first)
                owner = torch.arange(k).repeat_interleave(counts[i]).tolist()
                generated = 0
                for row, (tok, is_done) in enumerate(zip(first.tolist(), done.tolist(), strict=True)):
                    if is_done:  # EOS forced, or no budget left after the forced token
                        continuations.append([tok])
                        truncated[owner[row]] += int(tok not in eos_set)
                        continue
                    sampled, scorable[row] = tokens[offset], not broken[offset]
                    offset += 1
                    sampled = sampled[sampled >= 0].tolist()
                    generated += len(sampled)
                    ended = bool(sampled) and sampled[-1] in eos_set
                    if not ended and scorable[row]:
                        truncated[owner[row]] += 1
                    continuations.append([tok] + sampled)
                # A continuation the student could not finish is never shown to the verifier.
                flat = torch.full((len(continuations),), float("nan"), dtype=torch.float64)
                flat[torch.tensor(scorable, dtype=torch.bool)] = checked_scores(
                    r.score, [c for c, ok in zip(continuations, scorable, strict=True) if ok]
                )
                unscorable = torch.bincount(torch.tensor(owner, dtype=torch.long)[torch.isnan(flat)], minlength=k)
                scores = pad_rows(list(flat.split(counts[i].tolist())))
                results[i] = SuccessEstimate(r.candidates.cpu(), scores, truncated, generated, unscorable=unscorable)
    return results


def estimate_success(
    model: torch.nn.Module,
    prefix_ids: torch.Tensor,
    candidates: torch.Tensor,
    num_rollouts: int,
    max_new_tokens: int,
    score: Score,
    *,
    temperature: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> SuccessEstimate:
    """
    Targeted rollouts at one node: for each candidate token, force it after `prefix_ids`, sample `num_rollouts`
    continuations of at most `max_new_tokens` further tokens from `model` at `temperature`, and score them.

    Args:
        model (`torch.nn.Module`):
            The student (causal LM, plain or PEFT).
        prefix_ids (`torch.Tensor`):
            The node's prefix (prompt + completion so far), 1-D.
        candidates (`torch.Tensor`):
            Candidate tokens, `[K]`.
        num_rollouts (`int`):
            Continuations per candidate.
        max_new_tokens (`int`):
            Tokens sampled after the forced candidate, at most.
        score (`Callable`):
            `score(sequences) -> list[float]`, each sequence the token ids generated after the prefix (forced
            candidate first, EOS included if produced); truncated continuations are scored as they stand.
        temperature (`float`, *optional*, defaults to `1.0`):
            Student sampling temperature.
        eos_token_id (`int` or `Sequence[int]`, *optional*):
            Token(s) that end a continuation.
        generator (`torch.Generator`, *optional*):
            Sampling randomness, on the model's device.

    Returns:
        [`SuccessEstimate`]: per-candidate mean, count, interval and truncation counts.
    """
    prefix_ids = torch.as_tensor(prefix_ids).reshape(-1)
    request = RolloutRequest(0, prefix_ids.numel(), candidates, score)
    (estimate,) = rollout_requests(
        model,
        [prefix_ids],
        [request],
        num_rollouts,
        max_new_tokens,
        temperature=temperature,
        eos_token_id=eos_token_id,
        generator=generator,
    )
    return estimate


def sample_completions(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """
    Fresh on-policy completions of `prompts` (token ids), one each, with the same decoder as targeted rollouts: a
    prompt is a node whose prefix is the prompt minus its last token and whose single "candidate" is that last token.
    """
    if any(len(p) < 2 for p in prompts):
        raise ValueError("Every prompt needs at least two tokens to sample a completion from it.")
    completions: list[list[int]] = [[] for _ in prompts]

    def keeper(i):
        def score(continuations):
            completions[i] = list(continuations[0][1:])
            return [0.0]

        return score

    sequences = [torch.as_tensor(list(p), dtype=torch.long) for p in prompts]
    requests = [RolloutRequest(i, len(p) - 1, torch.tensor([int(p[-1])]), keeper(i)) for i, p in enumerate(prompts)]
    rollout_requests(
        model,
        sequences,
        requests,
        1,
        max_new_tokens,
        temperature=temperature,
        eos_token_id=eos_token_id,
        generator=generator,
    )
    return completions
