"""Verifiers: the built-in numeric answer check and the TRL reward-function adapter."""

import pytest

from gad_callbacks import NumericAnswerReward, extract_final_number, reward_function_score


class CharTokenizer:
    """Token id = character code; enough to test decoding of completion prefix + continuation."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i == 0))


@pytest.mark.parametrize(
    "text,expected",
    [
        ("so 12 + 30 = 42", 42.0),
        ("The answer is 1,234.", 1234.0),
        ("first 3 then \\boxed{-7} and 9", -7.0),
        ("work 5\n#### 17\nextra 99", 17.0),
        ("answer: 2.5 apples", 2.5),
        ("no digits here", None),
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_numeric_reward_and_missing_column():
    reward = NumericAnswerReward(answer_column="solution")
    assert reward(["q", "q"], ["= 42", "= 41"], solution=["42", 42]) == [1.0, 0.0]
    assert reward(["q"], [[{"role": "assistant", "content": "it is 7"}]], solution=["#### 7"]) == [1.0]
    with pytest.raises(ValueError, match="column 'solution'"):
        reward(["q"], ["42"], answer=["42"])


def test_reward_function_score_glues_completion_prefix_and_passes_columns():
    calls = []

    def reward_fn(prompts, completions, completion_ids, **columns):
        calls.append((prompts, completions, completion_ids, columns))
        return [1.0 if c.endswith("42") else 0.0 for c in completions]

    score = reward_function_score(reward_fn, CharTokenizer(), "What is 6*7?", [ord("="), ord(" ")], {"answer": "42"})
    out = score([[ord("4"), ord("2")], [ord("4"), ord("1")]])
    assert out == [1.0, 0.0]
    prompts, completions, ids, columns = calls[0]
    assert prompts == ["What is 6*7?"] * 2
    assert completions == ["= 42", "= 41"]
    assert ids[0] == [ord("="), ord(" "), ord("4"), ord("2")]
    assert columns == {"answer": ["42", "42"]}


def test_conversational_prompts_get_message_completions():
    seen = {}

    def reward_fn(prompts, completions, **kw):
        seen["c"] = completions
        return [0.0] * len(completions)

    prompt = [{"role": "user", "content": "2+2?"}]
    reward_function_score(reward_fn, CharTokenizer(), prompt, [])([[ord("4")]])
    assert seen["c"] == [[{"role": "assistant", "content": "4"}]]
