"""`alignment_reward_funcs`: the built-in verifiers, `trl.rewards` names, dotted paths, combination, start-up checks."""

import importlib.util
import math

import pytest
from datasets import Dataset

from gad_callbacks.engine.reward_funcs import (
    CombinedReward,
    build_reward_func,
    check_reward_dataset,
    required_columns,
    resolve_reward_func,
)
from gad_callbacks.engine.verifiers import (
    ChoiceAnswerReward,
    ExactMatchReward,
    NumericAnswerReward,
    RegexMatchReward,
    extract_choice,
)
from gad_callbacks.integration.config import GradientAlignmentConfig
from tests.engine import reward_module


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Yes", "yes"),
        ("no.", "no"),
        ("**No**, because 4 is even", "no"),
        ("NO", "no"),
        ("Yesterday it rained", None),  # "yes" inside a word is no answer
        ("not sure, nothing", None),
        ("No doubt about it: the answer is yes", "yes"),  # a marked answer wins over an earlier bare word
        ("I have no idea", "no"),  # otherwise the first yes/no word counts
        ("\\boxed{Yes}", "yes"),
        ("Answer = no", "no"),
        ("", None),
    ],
)
def test_extract_choice_yes_no(text, expected):
    assert extract_choice(text, "yes_no") == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("(B)", "b"),
        ("B)", "b"),
        ("b", "b"),
        ("C. Paris", "c"),
        ("Answer: c", "c"),
        ("answer: (d).", "d"),
        ("[a]", "a"),
        ("**D**", "d"),
        ("\\boxed{C}", "c"),
        ("Option B", "b"),
        ("I think (B)", "b"),  # the pronoun "I" is not an option label
        ("I think the answer is B because of the heat", "b"),  # a capital after a marker may be followed by words
        ("The answer is a prime, so (c)", "c"),  # a lowercase one may not: "a" is an article here
        ("A cat sat on the mat", None),
        ("I pick B.", None),  # a letter mid-sentence, unmarked, is not read
        ("x) first\nanswer: b", "b"),
        ("no idea", None),  # yes/no words are no letter answer
    ],
)
def test_extract_choice_letters(text, expected):
    assert extract_choice(text, "letter") == expected


def test_choice_reward_reads_references_like_answers():
    reward = ChoiceAnswerReward("label")
    completions = ["Yes.", "no", "(B)", "answer: b", "Nothing to say", "Yes", "No"]
    labels = ["yes", "No.", "B", "(b)", "yes", True, False]
    assert reward(None, completions, label=labels) == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    # The reference decides what is searched for: "no" is no answer to a letter question, "(A)" none to a yes/no one.
    assert reward(None, ["no doubt: (A)", "(A) yes"], label=["A", "yes"]) == [1.0, 1.0]
    # Conversational completions are read from the assistant's message.
    assert reward(None, [[{"role": "assistant", "content": "Answer: C"}]], label=["Answer: C"]) == [1.0]
    with pytest.raises(ValueError, match="'maybe' is neither yes/no nor a single letter"):
        reward(None, ["yes"], label=["maybe"])


def test_exact_and_regex_rewards():
    exact = ExactMatchReward()
    completions = ["  Paris ", "paris\n", "New   york", "Paris.", "Paris is nice"]
    answers = ["Paris", "Paris", "new york", "Paris", "Paris"]
    assert exact(None, completions, answer=answers) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert exact(None, ["7"], answer=[7]) == [1.0]  # a CSV column may hold numbers
    regex = RegexMatchReward()
    patterns = [r"(?i)\b(paris|lutetia)\b", r"^\d+$", r"^\d+$", "colou?r"]
    assert regex(None, ["It is LUTETIA.", "42", "42 apples", "my color"], answer=patterns) == [1.0, 1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="not a valid regular expression"):
        regex(None, ["x"], answer=["(unclosed"])


def test_builtin_reference_errors_name_the_row_at_start_up():
    dataset = Dataset.from_dict({"prompt": ["a", "b", "c"], "answer": ["yes", "B", "maybe"]})
    with pytest.raises(ValueError, match=r"verifier 'choice': row 2 of column 'answer': reference answer 'maybe'"):
        check_reward_dataset(ChoiceAnswerReward(), dataset)
    with pytest.raises(ValueError, match=r"verifier 'numeric': row 0 of column 'answer'.*holds no number"):
        check_reward_dataset(NumericAnswerReward(), dataset)
    with pytest.raises(ValueError, match=r"verifier 'regex': row 1 of column 'answer'"):
        check_reward_dataset(RegexMatchReward(), Dataset.from_dict({"answer": ["ok", "[z-a]"]}))
    check_reward_dataset(ExactMatchReward(), dataset)


def test_missing_columns_are_one_line_start_up_errors():
    dataset = Dataset.from_dict({"prompt": ["q"], "label": ["yes"]})
    with pytest.raises(ValueError, match=r"^the dataset has no column 'answer', which the verifier 'choice_answer'"):
        check_reward_dataset(build_reward_func(["choice"]), dataset)
    check_reward_dataset(build_reward_func(["choice"], answer_column="label"), dataset)
    # A function's required parameters are the columns it reads (TRL's own arguments aside).
    dotted = build_reward_func(["tests.engine.reward_module.mentions_reference"])
    assert required_columns(dotted) == {"reference"}
    with pytest.raises(ValueError, match="no column 'reference'"):
        check_reward_dataset(dotted, dataset)
    both = build_reward_func(["choice", "tests.engine.reward_module.mentions_reference"])
    with pytest.raises(ValueError, match=r"no columns 'answer', 'reference'"):
        check_reward_dataset(both, dataset)


def test_trl_reward_names_resolve_and_accept_text_completions():
    think = resolve_reward_func("think_format_reward")
    text = ["<think>\nhm\n</think>\nyes", "yes"]
    assert think(prompts=["q", "q"], completions=text) == [1.0, 0.0]  # TRL's own function reads messages only
    assert think(prompts=None, completions=[[{"role": "assistant", "content": text[0]}]]) == [1.0]
    if importlib.util.find_spec("math_verify") is None:
        with pytest.raises(ValueError, match="accuracy_reward needs the 'math_verify' package"):
            resolve_reward_func("accuracy_reward")
    else:
        assert required_columns(resolve_reward_func("accuracy_reward")) == {"solution"}
    with pytest.raises(ValueError, match="get_repetition_penalty_reward builds a reward function from arguments"):
        resolve_reward_func("get_repetition_penalty_reward")


def test_dotted_paths_import_any_reward_function():
    func = resolve_reward_func("tests.engine.reward_module.mentions_reference")
    assert func is reward_module.mentions_reference
    assert func(None, ["it is 42", "41"], reference=["42", ""]) == [1.0, None]
    with pytest.raises(ValueError, match="cannot import 'tests.engine.no_such_module'"):
        resolve_reward_func("tests.engine.no_such_module.fn")
    with pytest.raises(ValueError, match="has no 'missing'"):
        resolve_reward_func("tests.engine.reward_module.missing")
    with pytest.raises(ValueError, match="has a non-callable 'NOT_CALLABLE'"):
        resolve_reward_func("tests.engine.reward_module.NOT_CALLABLE")


def test_unknown_names_fail_in_the_config_listing_the_choices():
    with pytest.raises(ValueError, match="unknown reward function 'chioce'") as err:
        GradientAlignmentConfig(alignment_reward_funcs=["chioce"])
    for choice in ("numeric", "choice", "exact", "regex", "think_format_reward", "dotted import path"):
        assert choice in str(err.value)
    with pytest.raises(ValueError, match="alignment_reward_funcs is empty"):
        GradientAlignmentConfig(alignment_reward_funcs=[])
    with pytest.raises(ValueError, match="2 weight"):
        GradientAlignmentConfig(alignment_reward_funcs=["choice"], alignment_reward_weights=[1.0, 2.0])


def test_config_resolves_the_key_default_numeric():
    default = GradientAlignmentConfig().reward_func
    assert isinstance(default, NumericAnswerReward) and default.answer_column == "answer"
    one = GradientAlignmentConfig(alignment_reward_funcs="choice", alignment_answer_column="label").reward_func
    assert isinstance(one, ChoiceAnswerReward) and one.answer_column == "label"  # YAML's `key: choice` is one entry


def test_several_reward_funcs_sum_like_grpo():
    """GRPO's combination: weighted sum over the functions that scored, None when none did."""

    def half(prompts, completions, **columns):
        return [None if c == "skip" else 0.5 for c in completions]

    def nothing(prompts, completions, **columns):
        return [None if c != "nan" else math.nan for c in completions]

    combined = CombinedReward([ChoiceAnswerReward(), half], weights=[2.0, 1.0])
    assert combined(None, ["yes", "no", "skip"], answer=["yes"] * 3) == [2.5, 0.5, 0.0]
    assert CombinedReward([nothing, nothing])(None, ["a", "nan"]) == [None, None]  # unscorable, not 0
    assert CombinedReward([nothing, half])(None, ["a", "skip"]) == [0.5, None]
    cfg = GradientAlignmentConfig(
        alignment_reward_funcs=["choice", "think_format_reward"], alignment_reward_weights=[1.0, 0.5]
    )
    assert cfg.reward_func(None, ["<think>x</think> yes", "no"], answer=["yes", "yes"]) == [1.5, 0.0]
