"""The shipped default world: checkpoints load offline, the student is weak but not hopeless, contexts help it."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gad_callbacks.engine.rollouts import sample_completions
from gad_callbacks.engine.verifiers import NumericAnswerReward
from gad_callbacks.world import make_dataset
from gad_callbacks.world.checkpoints import CHECKPOINT_DIR, resolve_model


def pass_rate(name, rows, template=None):
    path = resolve_model(f"default:{name}")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    prompts = []
    for row in rows:
        q = row["prompt"][0]["content"]
        if template:
            q = template.format(**{**row, "prompt": q})
        prompts.append(
            tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)[
                "input_ids"
            ]
        )
    outs = sample_completions(
        model, prompts, 32, eos_token_id=tok.eos_token_id, generator=torch.Generator().manual_seed(0)
    )
    texts = [tok.decode(o, skip_special_tokens=True) for o in outs]
    return sum(NumericAnswerReward()(None, texts, answer=[r["answer"] for r in rows])) / len(rows)


def test_checkpoints_are_small_and_documented():
    total = sum(p.stat().st_size for p in CHECKPOINT_DIR.rglob("*.safetensors"))
    assert 0 < total < 8 * 2**20, f"{total / 2**20:.1f} MB of checkpoints"
    for name in ("student", "teacher"):
        metrics = json.loads((CHECKPOINT_DIR / name / "metrics.json").read_text())
        assert metrics["train_seconds"] > 0 and metrics["steps"] > 0


def test_student_is_weak_teacher_strong_and_context_helps():
    rows = [make_dataset(128, seed=77)[i] for i in range(128)]  # questions the training script never evaluated on
    student, teacher = pass_rate("student", rows), pass_rate("teacher", rows)
    with_solution = pass_rate("student", rows, "{prompt} Reference solution: {solution}")
    assert 0.2 <= student <= 0.7, student
    assert teacher >= 0.9, teacher
    assert with_solution >= student + 0.2, (student, with_solution)


def test_unknown_checkpoint_names_the_fix():
    with pytest.raises(FileNotFoundError, match="train_default_world"):
        resolve_model("default:nope")


def test_tokenizer_in_memory_equals_tokenizer_loaded_from_a_checkpoint(tmp_path):
    # AutoTokenizer loads a Qwen2 checkpoint's tokenizer as Qwen2Tokenizer with Qwen2's own pre-tokenizer; the
    # world's tokenizer must tokenize exactly as that, or models see different ids in training and at inference.
    from gad_callbacks.world import build_tokenizer
    from gad_callbacks.world.models import tiny_qwen2
    from gad_callbacks.world.tokenizer import _corpus

    built = build_tokenizer()
    tiny_qwen2(built).save_pretrained(tmp_path)
    built.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in _corpus()[:300] + ["<|user|>12+34=?<|end|><|assistant|>", "multi\nline  text 1,234.5"]:
        assert built(text)["input_ids"] == loaded(text)["input_ids"], text
    messages = [{"role": "user", "content": "59+63=? Reference solution: 9+3=12 5+6+1=12 #### 122"}]
    assert (
        built.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
        == (loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])
    )
