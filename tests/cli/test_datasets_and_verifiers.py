"""Datasets in TRL's formats (files, text or conversational prompts) and `alignment_reward_funcs` in `gad diagnose`
and the callback: prompt ids as TRL makes them, start-up checks, a yes/no task end to end."""

import json
from types import SimpleNamespace

import pytest
from tokenizers.processors import TemplateProcessing

from gad_callbacks import GradientAlignmentCallback, GradientAlignmentConfig
from gad_callbacks.cli import diagnose as diagnose_module
from gad_callbacks.cli import main
from gad_callbacks.diagnosis.sampling import tokenize_prompts
from gad_callbacks.engine.verifiers import ChoiceAnswerReward, NumericAnswerReward
from gad_callbacks.outputs.records import read_records
from gad_callbacks.world import build_tokenizer
from gad_callbacks.world.datasets import load_questions
from tests.engine import reward_module
from tests.integration.helpers import distillation_trainer, parity_reward
from tests.reliability.test_files_and_runs import SMALL


YES_NO = [
    {"prompt": "Is 7 odd? Answer yes or no.", "answer": "yes"},
    {"prompt": "Is 4 odd? Answer yes or no.", "answer": "No"},
    {"prompt": "Is 10 greater than 3? Answer yes or no.", "answer": "Yes."},
]
# The reliability tests' small run, on 3 questions, without interval search and with few candidates.
TINY = ["--num_questions", "3", *SMALL[2:], "--alignment_num_bootstrap", "0", "--alignment_max_candidates", "3"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def trl_prompt_ids(tokenizer, prompts):
    """TRL's own `DistillationTrainer._tokenize_prompts`, on a stand-in for the trainer (a text-only model)."""
    from trl import DistillationTrainer

    trainer = SimpleNamespace(
        processing_class=tokenizer, _is_vlm=False, tools=None, chat_template=None, chat_template_kwargs={}
    )
    return DistillationTrainer._tokenize_prompts(trainer, prompts)[0]


def with_bos(tokenizer):
    """The embedded tokenizer, made to prepend a special token to text as Llama's adds a BOS."""
    bos = tokenizer.convert_tokens_to_ids("<|system|>")
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|system|> $A", special_tokens=[("<|system|>", bos)]
    )
    return tokenizer


@pytest.mark.parametrize("make_tokenizer", [build_tokenizer, lambda: with_bos(build_tokenizer())])
def test_prompt_ids_match_trl_distillation_trainer(make_tokenizer):
    tokenizer = make_tokenizer()
    conversational = [
        [{"role": "user", "content": "Is 7 odd?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is 4 odd?"}],
    ]
    standard = ["Is 7 odd?", "Question: is 4 odd? Answer:"]
    for prompts in (conversational, standard):
        ours = tokenize_prompts(tokenizer, prompts)
        assert ours == [list(ids) for ids in trl_prompt_ids(tokenizer, prompts)]
    first = tokenize_prompts(tokenizer, conversational[:1])[0]
    assert tokenizer.decode(first) == "<|user|>Is 7 odd?<|end|><|assistant|>"  # the generation prompt, no BOS


def test_csv_dataset_with_text_prompts_and_choice_references(tmp_path):
    path = tmp_path / "quiz.csv"
    path.write_text('prompt,answer\n"Is 7 odd? yes or no",yes\n"Capital of France? (A) Paris (B) Rome",(A)\n')
    dataset = load_questions(str(path))
    assert dataset["prompt"] == ["Is 7 odd? yes or no", "Capital of France? (A) Paris (B) Rome"]
    reward = GradientAlignmentConfig(alignment_reward_funcs=["choice"]).reward_func
    assert reward(dataset["prompt"], ["Yes!", "The answer is A."], answer=dataset["answer"]) == [1.0, 1.0]


def test_conversational_datasets_prompt_and_messages(tmp_path):
    question = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is 7 odd?"}]
    answer = {"role": "assistant", "content": "Yes"}
    prompts = load_questions(write_jsonl(tmp_path / "p.jsonl", [{"prompt": question, "answer": "yes"}]))
    assert prompts[0]["prompt"] == question
    # GKD's convention: a `messages` conversation ends with the assistant's answer, which is not part of the prompt.
    rows = [{"messages": [*question, answer], "answer": "yes"}, {"messages": question, "answer": "no"}]
    messages = load_questions(write_jsonl(tmp_path / "m.jsonl", rows))
    assert messages["prompt"] == [question, question]
    ids = tokenize_prompts(build_tokenizer(), messages["prompt"][:1])[0]
    assert build_tokenizer().decode(ids).endswith("<|user|>Is 7 odd?<|end|><|assistant|>")
    # Another prompt column holding conversations is read the same way.
    other = load_questions(str(tmp_path / "m.jsonl"), prompt_column="messages")
    assert other["prompt"] == [question, question]
    (tmp_path / "none.jsonl").write_text(json.dumps({"question": "Is 7 odd?"}) + "\n")
    with pytest.raises(ValueError, match=r"no column 'prompt' or 'messages' \(columns: \['question'\]\)"):
        load_questions(str(tmp_path / "none.jsonl"))


def test_gad_diagnose_on_a_yes_no_jsonl_task(tmp_path, monkeypatch, capsys):
    data = write_jsonl(tmp_path / "yes_no.jsonl", YES_NO)
    calls = []
    judge = ChoiceAnswerReward.judge
    monkeypatch.setattr(ChoiceAnswerReward, "judge", lambda self, *a: calls.append(a) or judge(self, *a))
    out = tmp_path / "out"
    argv = ["diagnose", *TINY, "--dataset", data, "--alignment_reward_funcs", "choice", "--output_dir", str(out)]
    assert main(argv) == 0
    rows, rollouts = read_records(out / "records"), read_records(out / "rollouts")
    assert len(rollouts) == 3 and rows and {r["teacher"] for r in rows} == {"teacher"}
    assert {r["reward"] for r in rollouts} <= {0.0, 1.0}
    assert calls, "the choice verifier judged rollouts and targeted continuations"
    assert json.loads((out / "run.json").read_text())["alignment"]["alignment_reward_funcs"] == ["choice"]


def test_gad_diagnose_checks_verifiers_before_loading_models(tmp_path, monkeypatch, capsys):
    loaded = []
    monkeypatch.setattr(diagnose_module, "load_model", lambda *a, **k: loaded.append(a) or 1 / 0)
    data = write_jsonl(tmp_path / "yes_no.jsonl", YES_NO)

    def error(*flags):
        assert main(["diagnose", *TINY, "--dataset", data, "--output_dir", str(tmp_path / "o"), *flags]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("gad: error: ")
        return lines[0]

    line = error("--alignment_reward_funcs", "choice", "yes_or_no")
    assert "unknown reward function 'yes_or_no'" in line and "numeric, choice, exact, regex" in line
    line = error()  # the default verifier is numeric: "yes" holds no number
    assert "verifier 'numeric': row 0 of column 'answer'" in line and "holds no number" in line
    line = error("--alignment_reward_funcs", "choice", "--alignment_answer_column", "label")
    assert "no column 'label'" in line and "choice_answer" in line
    assert loaded == []


def test_callback_takes_the_key_and_a_python_reward_func_wins(tmp_path):
    trainer = distillation_trainer(tmp_path)  # arithmetic: the answers are numbers
    config = dict(alignment_trainer_teacher="teacher", alignment_nodes_per_rollout=1)
    callback = GradientAlignmentCallback(trainer, GradientAlignmentConfig(**config))
    assert isinstance(callback.reward_func, NumericAnswerReward)
    with pytest.raises(ValueError, match=r"verifier 'choice': row 0 of column 'answer'.*neither yes/no"):
        GradientAlignmentCallback(trainer, GradientAlignmentConfig(alignment_reward_funcs=["choice"], **config))
    dotted = GradientAlignmentConfig(alignment_reward_funcs=["tests.engine.reward_module.mentions_reference"])
    with pytest.raises(ValueError, match="no column 'reference'"):
        GradientAlignmentCallback(trainer, dotted)
    callback = GradientAlignmentCallback(trainer, dotted, reward_func=parity_reward)
    assert callback.reward_func is parity_reward
    assert dotted.reward_func is reward_module.mentions_reference
