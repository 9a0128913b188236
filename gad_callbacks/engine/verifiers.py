"""Verifiers: from TRL-style reward functions to the token-level `score` that targeted rollouts call.

A targeted rollout only knows the tokens it generated after the node; a verifier judges the whole completion. The
adapter glues the completion-so-far (`y_<t`) in front of each continuation, decodes, and calls the reward function
with the prompt and the dataset columns, exactly as TRL's GRPO-style trainers call reward functions.

A reward of `None` (TRL's convention for "this function does not apply to this sample"), NaN or infinity is read as
*unscorable*: NaN here, which everything downstream treats as a missing sample, counted, never as a score of 0.
"""

import math
import re
from collections.abc import Callable, Sequence


_NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"


def extract_final_number(text: str) -> float | None:
    """
    The final numeric answer of a completion: the content of the last `\\boxed{...}`, else what follows the last
    `####`, else what follows the last "answer is" / "answer:", else the last number in the text. Commas are read as
    thousands separators. `None` when there is no number.
    """
    for pattern in (r"\\boxed\{([^{}]*)\}", r"####\s*([^\n]*)", r"answer(?: is|:)\s*([^\n]*)"):
        hits = re.findall(pattern, text, flags=re.IGNORECASE)
        if hits:
            numbers = re.findall(_NUMBER, hits[-1])
            if numbers:
                return float(numbers[0].replace(",", ""))
    numbers = re.findall(_NUMBER, text)
    return float(numbers[-1].replace(",", "")) if numbers else None


def as_score(value) -> float:
    """A reward as a float, NaN when it is unscorable (`None`, NaN, infinite); raises on anything not a number."""
    if value is None:
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def _text(completion) -> str:
    # Conversational completions are lists of messages; the verifier reads the assistant's text.
    if isinstance(completion, str):
        return completion
    return "\n".join(str(m.get("content", "")) for m in completion)


class NumericAnswerReward:
    """
    Built-in verifier for final numeric answers, with the signature of a TRL reward function:
    `reward(prompts, completions, **columns) -> list[float]`, 1.0 when a completion's final number equals the
    reference in `columns[answer_column]` (within `tolerance`), else 0.0.

    Args:
        answer_column (`str`, *optional*, defaults to `"answer"`):
            Dataset column holding the reference answer (a number, or text whose final number is the answer).
        tolerance (`float`, *optional*, defaults to `1e-6`):
            Absolute tolerance of the comparison.
    """

    def __init__(self, answer_column: str = "answer", tolerance: float = 1e-6):
        self.answer_column = answer_column
        self.tolerance = tolerance
        self.__name__ = "numeric_answer"

    def __call__(self, prompts, completions, **columns) -> list[float]:
        if self.answer_column not in columns:
            raise ValueError(
                f"NumericAnswerReward needs the reference answer in column {self.answer_column!r}; got columns "
                f"{sorted(columns)}. Set answer_column to the dataset column that holds it."
            )
        rewards = []
        for completion, reference in zip(completions, columns[self.answer_column], strict=True):
            ref = reference if isinstance(reference, (int, float)) else extract_final_number(str(reference))
            if ref is None:
                raise ValueError(f"Reference answer {reference!r} holds no number.")
            got = extract_final_number(_text(completion))
            rewards.append(float(got is not None and math.isclose(got, float(ref), rel_tol=0, abs_tol=self.tolerance)))
        return rewards


def reward_function_score(
    reward_fn: Callable,
    tokenizer,
    prompt,
    completion_prefix_ids: Sequence[int],
    columns: dict | None = None,
    *,
    skip_special_tokens: bool = True,
) -> Callable[[list[list[int]]], list[float]]:
    """
    Turn a TRL-style reward function into the `score(continuations)` of targeted rollouts at one node.

    Args:
        reward_fn (`Callable`):
            `reward_fn(prompts, completions, **columns) -> list[float]` (TRL's reward-function signature).
        tokenizer:
            The student's tokenizer, used to decode completions.
        prompt (`str` or `list[dict]`):
            The question as the dataset holds it (text, or a list of messages for conversational data; then
            completions are passed as `[{"role": "assistant", "content": ...}]`, as TRL does).
        completion_prefix_ids (`Sequence[int]`):
            The completion tokens before the node (`y_<t`), glued in front of every continuation.
        columns (`dict`, *optional*):
            The dataset row's other columns (e.g. the reference answer); each is repeated once per completion.
        skip_special_tokens (`bool`, *optional*, defaults to `True`):
            Passed to `tokenizer.decode`.

    Returns:
        `Callable`: `score(continuations) -> list[float]`, NaN for a reward of `None`, NaN or infinity (unscorable:
        targeted rollouts leave it out of the estimate and count it).
    """
    prefix = [int(t) for t in completion_prefix_ids]
    columns = dict(columns or {})
    conversational = isinstance(prompt, list)

    def score(continuations: list[list[int]]) -> list[float]:
        texts = [tokenizer.decode(prefix + list(c), skip_special_tokens=skip_special_tokens) for c in continuations]
        completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
        n = len(texts)
        repeated = {k: [v] * n for k, v in columns.items()}
        ids = [prefix + list(c) for c in continuations]
        rewards = reward_fn(prompts=[prompt] * n, completions=completions, completion_ids=ids, **repeated)
        return [as_score(r) for r in rewards]

    return score
