"""Several processes and DeepSpeed: who does which part of a pause, and how parameters are made whole.

A pause is split by rollout: every process builds the same list of rollouts (buffers are gathered; fresh rollouts
come from a seed all processes share), takes every `world_size`-th one, diagnoses it with seeds that belong to the
rollout (not to the process), and the rows are gathered back. Every process therefore makes the same collective
calls in the same order, whatever fails locally: the only collectives are entering / leaving the ZeRO-3 parameter
gathering and the two `gather_object` calls.

Under ZeRO-3 the probe needs whole parameters. `full_parameters` gathers every DeepSpeed engine the pause uses (the
student, and teachers prepared as TRL prepares its teacher) with `deepspeed.zero.GatheredParameters` and removes
ZeRO-3's forward hooks for the duration (TRL's `remove_hooks` / `add_hooks`, as in `unwrap_model_for_generation`,
without its gradient-checkpointing toggle). Memory: one full copy of each gathered model per process for the length
of the pause, the same cost as TRL's `ds3_gather_for_generation=True`. The alternative (hooks left on, products
accumulated shard by shard and all-reduced) would keep memory at one layer but make every forward and backward a
collective that all processes must run in lock-step on the same nodes; not built.

Gradients are always taken with `torch.autograd.grad` on the unwrapped module: `.backward()` or a forward through
the engine would fire DeepSpeed's reduction hooks and add the probe's gradient to the next optimizer step.
"""

import contextlib

from accelerate.utils import gather_object


def deepspeed_engines(*models) -> list:
    """The distinct DeepSpeed engines among `models` (None and plain modules are skipped)."""
    try:
        from deepspeed import DeepSpeedEngine
    except ImportError:
        return []
    seen, out = set(), []
    for m in models:
        if isinstance(m, DeepSpeedEngine) and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


def is_zero3(accelerator) -> bool:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


@contextlib.contextmanager
def full_parameters(engines: list, accelerator):
    """ZeRO-3: whole parameters and no ZeRO hooks in every engine for the duration (collective). Otherwise a no-op."""
    if not engines or not is_zero3(accelerator):
        yield
        return
    import deepspeed
    from trl.models.utils import add_hooks, remove_hooks

    with contextlib.ExitStack() as stack:
        for engine in engines:
            stack.enter_context(deepspeed.zero.GatheredParameters(list(engine.parameters())))
            remove_hooks(engine)
            stack.callback(add_hooks, engine)
        yield


def gather_lists(items: list, world_size: int) -> list:
    """Concatenate every process's `items` in process order, on every process (collective when `world_size > 1`)."""
    if world_size == 1:
        return list(items)
    return [x for part in gather_object([items]) for x in part]


def prepare_teacher(model, trainer):
    """Prepare an extra teacher exactly as TRL prepares its own (`prepare_deepspeed` / `prepare_model`)."""
    model = model.requires_grad_(False).eval()
    if trainer.is_deepspeed_enabled:
        from trl.models import prepare_deepspeed

        return prepare_deepspeed(model, trainer.accelerator)
    return trainer.accelerator.prepare_model(model, evaluation_mode=True)
