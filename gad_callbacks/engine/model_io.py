"""Running a Hugging Face causal LM (plain or PEFT) without disturbing it.

The diagnostic runs inside someone else's training run, so every entry point here leaves the model as it found it:
train/eval flags of every sub-module, `requires_grad` flags and `.grad` are restored, and no global RNG is consumed
(sampling uses an explicit `torch.Generator`; eval mode turns dropout off, which is also what makes targeted rollouts
follow the student's actual policy).
"""

import contextlib
import inspect
import re

import torch


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The underlying `PreTrainedModel` of a PEFT model (the model itself otherwise)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def cache_keyword(model: torch.nn.Module) -> str:
    """Name of the KV-cache argument of the model's forward (`cache` in recent transformers, else `past_key_values`)."""
    params = inspect.signature(base_model(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(outputs):
    """The KV cache returned by a forward, whatever transformers calls it."""
    cache = outputs.get("cache", None)
    return outputs.get("past_key_values", None) if cache is None else cache


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Put every sub-module in eval mode, then restore each one's own flag (not just the root's)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, was_training in flags:
            module.training = was_training


@contextlib.contextmanager
def grad_enabled_on(params: list[torch.nn.Parameter]):
    """Temporarily make `params` require grad (for parameter spaces wider than what is trainable), then restore."""
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield params
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def select_parameters(model: torch.nn.Module, params) -> list[torch.nn.Parameter]:
    """
    The parameter space of the diagnostic: `"trainable"` (what `requires_grad` selects: the LoRA adapters under PEFT,
    every weight in full fine-tuning), `"all"` (every weight, frozen ones included), a regular expression matched
    against parameter names (e.g. `"mlp"` or `"layers\\.(1|2)\\."`), or an explicit list of parameters. Tied
    weights appear once.
    """
    if params == "trainable":
        chosen = [p for p in model.parameters() if p.requires_grad]
    elif params == "all":
        chosen = list(model.parameters())
    elif isinstance(params, str):
        pattern = re.compile(params)
        chosen = [p for name, p in model.named_parameters() if pattern.search(name)]
        if not chosen:
            raise ValueError(
                f"No parameter name matches {params!r}; names look like {next(iter(dict(model.named_parameters())))!r}."
            )
    else:
        chosen = list(params)
    if not chosen:
        raise ValueError(
            "The parameter space is empty: no parameter requires grad. Pass params='all', a name pattern, or a list."
        )
    return chosen


@torch.no_grad()
def logits_at(model: torch.nn.Module, input_ids: torch.Tensor, rows) -> torch.Tensor:
    """Next-token logits of `model` at positions `rows` of one sequence (eval mode, no grad), float32 on the CPU."""
    rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
    device = model_device(model)
    length = int(rows.max()) + 1
    with eval_mode(model):
        ids = torch.as_tensor(input_ids).reshape(-1)[:length].to(device).unsqueeze(0)
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=rows.to(device)).logits[0]
    return logits.float().cpu()


def eos_token_ids(model: torch.nn.Module, tokenizer=None) -> list[int]:
    """
    The token ids that end a completion, by TRL's rule (`DistillationTrainer`, `GRPOTrainer`): every id of the
    model's `generation_config.eos_token_id` (an int or a list: end-of-turn tokens of chat models) plus the
    tokenizer's `eos_token_id`. Without a tokenizer the model config's `eos_token_id` stands in for it. Targeted
    rollouts and our own rollouts both stop at this set, so a continuation ends where the trainer's would.
    """
    base = base_model(model)
    declared = getattr(getattr(base, "generation_config", None), "eos_token_id", None)
    ids = [] if declared is None else [declared] if isinstance(declared, int) else list(declared)
    own = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if own is None and tokenizer is None:
        own = getattr(base.config, "eos_token_id", None)
    for extra in [own] if isinstance(own, int) or own is None else list(own):
        if extra is not None and extra not in ids:
            ids = [extra, *ids]
    return [int(i) for i in ids]
