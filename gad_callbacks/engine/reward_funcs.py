"""`alignment_reward_funcs`: verifiers by name, resolved once at start-up, as TRL's GRPO script resolves `reward_funcs`.

Each entry is a built-in verifier (`numeric`, `choice`, `exact`, `regex`, reading `alignment_answer_column`), a reward
function of `trl.rewards` by name (`think_format_reward`, `accuracy_reward`, ...), or the dotted import path of any
function with TRL's reward signature `f(prompts, completions, **columns) -> list[float | None]` (imported with the
working directory on `sys.path`, as TRL's script does). Several entries are combined as `GRPOTrainer` combines its
reward functions: the (weighted) sum of the rewards that are not `None`, `None` when every function returned `None`.
"""

import importlib
import importlib.util
import inspect
import math
import os
import sys
from collections.abc import Callable, Sequence

from .verifiers import (
    ChoiceAnswerReward,
    ExactMatchReward,
    NumericAnswerReward,
    ReferenceReward,
    RegexMatchReward,
    as_score,
)


BUILTIN_VERIFIERS = {
    cls.name: cls for cls in (NumericAnswerReward, ChoiceAnswerReward, ExactMatchReward, RegexMatchReward)
}

# What TRL's trainers pass a reward function besides the dataset's columns: never a column to look for.
_TRAINER_ARGUMENTS = {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric"}

# `trl.rewards` functions that fail at their first call without an optional package: checked at start-up instead.
# (module, pip name) by function.
_NEEDS_PACKAGE = {name: ("math_verify", "math-verify") for name in ("accuracy_reward", "reasoning_accuracy_reward")}


def trl_reward_names() -> list[str]:
    """The reward functions `trl.rewards` exports (its `get_*` factories build one from arguments: not usable by name)."""
    from trl import rewards

    return sorted(n for n in dir(rewards) if not n.startswith(("_", "get_")) and callable(getattr(rewards, n)))


def reward_func_choices() -> str:
    return f"{', '.join([*BUILTIN_VERIFIERS, *trl_reward_names()])}, or a dotted import path (my_lib.rewards.fn)"


def name_of(func) -> str:
    return getattr(func, "__name__", type(func).__name__)


class MessageCompletions:
    """
    A `trl.rewards` function made to accept text completions too: TRL's packaged rewards read
    `completion[0]["content"]`, i.e. conversational completions only, while a dataset of text prompts gets text
    completions. Each text completion is handed over as one assistant message.

    Args:
        func (`Callable`):
            The TRL reward function.
    """

    def __init__(self, func: Callable):
        self.func = func
        self.__name__ = name_of(func)
        self.columns = signature_columns(func)

    def __call__(self, prompts, completions, **columns):
        messages = [[{"role": "assistant", "content": c}] if isinstance(c, str) else c for c in completions]
        return self.func(prompts=prompts, completions=messages, **columns)


class CombinedReward:
    """
    Several reward functions as one, combined as TRL's `GRPOTrainer` combines them: per completion, the weighted sum
    of the rewards that are not `None` (or NaN), and `None` (unscorable) when every function returned `None`.

    Args:
        funcs (`Sequence[Callable]`):
            TRL-style reward functions.
        weights (`Sequence[float]`, *optional*):
            One weight per function; 1.0 each when omitted.
    """

    def __init__(self, funcs: Sequence[Callable], weights: Sequence[float] | None = None):
        self.funcs = list(funcs)
        self.weights = [1.0] * len(self.funcs) if weights is None else [float(w) for w in weights]
        self.__name__ = "+".join(name_of(f) for f in self.funcs)
        self.columns = set().union(*(required_columns(f) for f in self.funcs))

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        per_func = [f(prompts=prompts, completions=completions, **columns) for f in self.funcs]
        combined = []
        for rewards in zip(*per_func, strict=True):
            scored = [w * s for w, s in zip(self.weights, map(as_score, rewards), strict=True) if not math.isnan(s)]
            combined.append(sum(scored) if scored else None)
        return combined


def signature_columns(func: Callable) -> set[str]:
    """The parameters `func` requires (no default) that TRL does not pass itself: dataset columns it reads."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: nothing to read
        return set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    required = {p.name for p in parameters if p.kind in kinds and p.default is inspect.Parameter.empty}
    return required - _TRAINER_ARGUMENTS


def required_columns(func: Callable) -> set[str]:
    """The dataset columns a reward function needs: its declared `columns`, else its required parameters."""
    columns = getattr(func, "columns", None)
    return set(columns) if columns is not None else signature_columns(func)


def _import_path(path: str) -> Callable:
    module_path, _, attribute = path.rpartition(".")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # TRL's GRPO script does the same: a rewards module next to the run imports
    try:
        module = importlib.import_module(module_path)
    except ImportError as err:
        raise ValueError(f"alignment_reward_funcs: cannot import {module_path!r} for {path!r} ({err}).") from None
    func = getattr(module, attribute, None)
    if not callable(func):
        what = "has no" if func is None else "has a non-callable"
        raise ValueError(f"alignment_reward_funcs: module {module_path!r} {what} {attribute!r} (from {path!r}).")
    return func


def resolve_reward_func(name: str, answer_column: str = "answer") -> Callable:
    """
    One `alignment_reward_funcs` entry as a reward function: a built-in verifier reading `answer_column`, a
    `trl.rewards` function (given text completions as messages, see [`MessageCompletions`]), or the function at a
    dotted import path. Anything else is a `ValueError` listing the choices.
    """
    if name in BUILTIN_VERIFIERS:
        return BUILTIN_VERIFIERS[name](answer_column)
    if "." in name:
        return _import_path(name)
    from trl import rewards

    if name in trl_reward_names():
        module, package = _NEEDS_PACKAGE.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise ValueError(f"alignment_reward_funcs: {name} needs the {module!r} package (pip install {package}).")
        return MessageCompletions(getattr(rewards, name))
    if name.startswith("get_") and hasattr(rewards, name):
        raise ValueError(
            f"alignment_reward_funcs: trl.rewards.{name} builds a reward function from arguments; build it in your "
            f"own module (e.g. `penalty = {name}(...)` in my_rewards.py) and give its dotted path (my_rewards.penalty)."
        )
    raise ValueError(f"alignment_reward_funcs: unknown reward function {name!r}; choose {reward_func_choices()}.")


def build_reward_func(
    names: Sequence[str], answer_column: str = "answer", weights: Sequence[float] | None = None
) -> Callable:
    """
    The reward function of an `alignment_reward_funcs` list (and optional `weights`): the one function itself when
    there is one and no weight, else a [`CombinedReward`].
    """
    if not names:
        raise ValueError(f"alignment_reward_funcs is empty; choose one or more of {reward_func_choices()}.")
    funcs = [resolve_reward_func(name, answer_column) for name in names]
    if weights is not None and len(weights) != len(funcs):
        raise ValueError(
            f"alignment_reward_weights has {len(weights)} weight(s) for {len(funcs)} alignment_reward_funcs."
        )
    if len(funcs) == 1 and weights is None:
        return funcs[0]
    return CombinedReward(funcs, weights)


def _parts(func: Callable) -> list[Callable]:
    return list(func.funcs) if isinstance(func, CombinedReward) else [func]


def check_reward_dataset(func: Callable, dataset) -> None:
    """
    Start-up check of a reward function against the dataset it will verify: a one-line `ValueError` when a column it
    needs is missing, or when a built-in verifier cannot read one of the references (naming the row).
    """
    columns = getattr(dataset, "column_names", None)
    if columns is None:  # a streamed dataset: its columns are only known row by row
        return
    missing = sorted(required_columns(func) - set(columns))
    if missing:
        listed = ", ".join(repr(c) for c in missing)
        raise ValueError(
            f"the dataset has no column{'s' if len(missing) > 1 else ''} {listed}, which the verifier "
            f"{name_of(func)!r} reads (columns: {list(columns)}). Set alignment_answer_column to the column with the "
            "reference answers, or choose alignment_reward_funcs that do not need it."
        )
    for part in _parts(func):
        if isinstance(part, ReferenceReward):
            part.check_references(dataset[part.answer_column])
