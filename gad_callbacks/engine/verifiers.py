"""Verifiers: from TRL-style reward functions to the token-level `score` that targeted rollouts call.

A targeted rollout only knows the tokens it generated after the node; a verifier judges the whole completion. The
adapter glues the completion-so-far (`y_<t`) in front of each continuation, decodes, and calls the reward function
with the prompt and the dataset columns, exactly as TRL's GRPO-style trainers call reward functions.

A reward of `None` (TRL's convention for "this function does not apply to this sample"), NaN or infinity is read as
*unscorable*: NaN here, which everything downstream treats as a missing sample, counted, never as a score of 0.

The built-in verifiers (`numeric`, `choice`, `exact`, `regex` in `alignment_reward_funcs`) compare a completion with
the reference in one dataset column. A completion that holds no recognisable answer scores 0.0, not `None`: not
answering is a failure the ideal gradient should fix, and leaving such continuations out would estimate the success
rate among the continuations that answer instead.
"""

import functools
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


# An explicit answer marker: "answer: ", "the answer is ", "Answer = ", "option", "\boxed{"; Markdown emphasis may
# follow.
_MARKER = r"(?:\b(?:answer|option|choice)(?:\s+is)?\s*[:=]?|\\boxed\{)\s*[*_]*\s*"
_YES_NO_MARKED = re.compile(_MARKER + r"\(?(yes|no)\b", re.IGNORECASE)
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
# After a marker, a capital letter may be followed by more words ("the answer is B because"); a lowercase one only by
# punctuation or the end ("answer: c."), so that "the answer is a prime" reads no letter.
_LETTER_MARKED = re.compile(
    _MARKER + r"(?:[(\[]\s*([a-z])\s*[)\]]|((?-i:[A-Z]))\b|([a-z])(?=[*_]*\s*(?:[^\w\s]|$)))", re.IGNORECASE
)
# Unmarked, a letter counts only when set apart as an option label: "(B)", "[b]", "B)", or at the start of a line
# followed by "." / ":" / the line's end ("B", "c. Paris"); so the "I" of "I think (B)" is no answer.
_LETTER = re.compile(
    r"[(\[]\s*([a-z])\s*[)\]]|(?<![\w'])([a-z])\)|^[\s*_]*([a-z])[*_]*\s*(?:[.:]|$)", re.IGNORECASE | re.MULTILINE
)


def extract_choice(text: str, kind: str) -> str | None:
    """
    The first answer of `kind` in a completion, lowercased: `"yes"`/`"no"` for `kind="yes_no"`, a letter `"a"`-`"z"`
    for `kind="letter"`; `None` when there is none.

    An explicitly marked answer ("answer: B", "the answer is yes", `\\boxed{C}`) wins over an earlier bare one, so "no
    doubt, the answer is yes" reads "yes". Otherwise the first bare one counts: any word "yes" / "no" (so "No idea"
    reads "no"), or a letter set apart as an option label ("(B)", "B)", "B." or "B" at the start of a line).
    """
    if kind not in ("yes_no", "letter"):
        raise ValueError(f"kind must be 'yes_no' or 'letter', got {kind!r}.")
    for pattern in (_YES_NO_MARKED, _YES_NO) if kind == "yes_no" else (_LETTER_MARKED, _LETTER):
        match = pattern.search(text)
        if match:
            return next(g for g in match.groups() if g).lower()
    return None


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


class ReferenceReward:
    """
    Base of the built-in verifiers, with the signature of a TRL reward function:
    `reward(prompts, completions, **columns) -> list[float]`, comparing each completion with the reference answer in
    `columns[answer_column]`. Subclasses define `reference` (read a reference, `ValueError` when it cannot be used)
    and `judge` (score a completion's text against a read reference).

    Args:
        answer_column (`str`, *optional*, defaults to `"answer"`):
            Dataset column holding the reference answer.
    """

    #: the name in `alignment_reward_funcs`
    name = ""

    def __init__(self, answer_column: str = "answer"):
        self.answer_column = answer_column
        self.__name__ = f"{self.name}_answer"

    @property
    def columns(self) -> set[str]:
        """The dataset columns this verifier reads."""
        return {self.answer_column}

    def reference(self, value):
        raise NotImplementedError

    def judge(self, text: str, reference) -> float:
        raise NotImplementedError

    def check_references(self, values) -> None:
        """Read every reference once (at start-up): a `ValueError` naming the first unusable one and its row."""
        for row, value in enumerate(values):
            try:
                self.reference(value)
            except ValueError as err:
                raise ValueError(
                    f"verifier {self.name!r}: row {row} of column {self.answer_column!r}: {err}"
                ) from None

    def __call__(self, prompts, completions, **columns) -> list[float]:
        if self.answer_column not in columns:
            raise ValueError(
                f"{type(self).__name__} needs the reference answer in column {self.answer_column!r}; got columns "
                f"{sorted(columns)}. Set answer_column to the dataset column that holds it."
            )
        return [
            float(self.judge(_text(completion), self.reference(value)))
            for completion, value in zip(completions, columns[self.answer_column], strict=True)
        ]


class NumericAnswerReward(ReferenceReward):
    """
    Built-in verifier `numeric`: 1.0 when a completion's final number ([`extract_final_number`]) equals the reference
    (a number, or text whose final number is the answer) within `tolerance`, else 0.0.

    Args:
        answer_column (`str`, *optional*, defaults to `"answer"`):
            Dataset column holding the reference answer.
        tolerance (`float`, *optional*, defaults to `1e-6`):
            Absolute tolerance of the comparison.
    """

    name = "numeric"

    def __init__(self, answer_column: str = "answer", tolerance: float = 1e-6):
        super().__init__(answer_column)
        self.tolerance = tolerance

    def reference(self, value) -> float:
        number = value if isinstance(value, (int, float)) else extract_final_number(str(value))
        if number is None:
            raise ValueError(f"reference answer {value!r} holds no number.")
        return float(number)

    def judge(self, text: str, reference: float) -> float:
        got = extract_final_number(text)
        return float(got is not None and math.isclose(got, reference, rel_tol=0, abs_tol=self.tolerance))


class ChoiceAnswerReward(ReferenceReward):
    """
    Built-in verifier `choice`, for yes/no and multiple-choice questions: 1.0 when the completion's first answer
    ([`extract_choice`], case-insensitive) is the reference, else 0.0 (also when it holds no answer). A reference is
    "yes" / "no" (a boolean reads as yes / no) or one letter, possibly written "(B)", "B)", "b." or "Answer: B";
    it decides what the completion is searched for, so "no" in "no doubt, (B)" is no answer to a letter question.

    Args:
        answer_column (`str`, *optional*, defaults to `"answer"`):
            Dataset column holding the reference answer.
    """

    name = "choice"

    def reference(self, value) -> str:
        if isinstance(value, bool):
            return "yes" if value else "no"
        text = str(value).strip() if isinstance(value, str) else ""
        text = re.sub(r"^answer(?:\s+is)?\s*[:=]?\s*", "", text, flags=re.IGNORECASE)
        text = re.sub(r"^[\s(\[*_]+|[\s)\]*_.:]+$", "", text).lower()  # "(B)", "**b**", "Yes." -> b, b, yes
        if text in ("yes", "no") or (len(text) == 1 and "a" <= text <= "z"):
            return text
        raise ValueError(f"reference answer {value!r} is neither yes/no nor a single letter A-Z.")

    def judge(self, text: str, reference: str) -> float:
        return float(extract_choice(text, "yes_no" if reference in ("yes", "no") else "letter") == reference)


def _normalized(text: str) -> str:
    return " ".join(str(text).split()).casefold()


class ExactMatchReward(ReferenceReward):
    """
    Built-in verifier `exact`, for tasks whose whole completion is the answer: 1.0 when the completion equals the
    reference once both are stripped, their whitespace runs collapsed to one space and their case folded, else 0.0.

    Args:
        answer_column (`str`, *optional*, defaults to `"answer"`):
            Dataset column holding the reference answer.
    """

    name = "exact"

    def reference(self, value) -> str:
        text = _normalized(value)
        if not text:
            raise ValueError(f"reference answer {value!r} is empty.")
        return text

    def judge(self, text: str, reference: str) -> float:
        return float(_normalized(text) == reference)


@functools.lru_cache(maxsize=4096)
def _compile(pattern: str) -> re.Pattern:
    # Every targeted rollout of a question reads the same pattern: compile it once.
    return re.compile(pattern)


class RegexMatchReward(ReferenceReward):
    """
    Built-in verifier `regex`: the reference is a Python regular expression, and a completion scores 1.0 when the
    pattern is found anywhere in it (`re.search`), else 0.0. Anchor it (`^...$`, `\\A...\\Z`) to match the whole
    completion; flags go inline (`(?i)` for any case, `(?s)` for `.` across lines). Each row may hold its own pattern
    (e.g. `(?i)\\b(paris|lutetia)\\b`), so accepted variants of an answer need no custom code.

    Args:
        answer_column (`str`, *optional*, defaults to `"answer"`):
            Dataset column holding the pattern.
    """

    name = "regex"

    def reference(self, value) -> re.Pattern:
        try:
            return _compile(str(value))
        except re.error as err:
            raise ValueError(f"reference pattern {value!r} is not a valid regular expression ({err}).") from None

    def judge(self, text: str, reference: re.Pattern) -> float:
        return float(reference.search(text) is not None)


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
