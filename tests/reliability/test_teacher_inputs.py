"""Wrong teachers and bad inputs are refused at attach time, with the fix named; warnings for runs that would be
empty."""

import json
import logging

import pytest
import torch

from gad_callbacks import GradientAlignmentCallback, GradientAlignmentConfig
from gad_callbacks.diagnosis.teacher_checks import check_tokenizers
from tests.integration.helpers import TOKENIZER, distillation_trainer, parity_reward, tiny_lm
from tests.integration.test_callback import config


def swapped_tokenizer(a: str = "1", b: str = "2"):
    """The student's tokenizer with the ids of two tokens exchanged: same size, same special tokens, other tokens
    (what Llama-2 vs Mistral looks like to a size check)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(TOKENIZER.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    other = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), pad_token="<|pad|>", eos_token="<|end|>"
    )
    assert len(other) == len(TOKENIZER)
    return other


def test_same_size_other_tokenizer_is_refused_naming_the_tokens(tmp_path):
    other = swapped_tokenizer()
    with pytest.raises(ValueError, match=r"2 of \d+ token ids differ; id \d+: student '1' vs teacher '2'"):
        check_tokenizers("other", other, TOKENIZER)
    check_tokenizers("same", TOKENIZER, TOKENIZER)  # the student's own tokenizer passes

    trainer = distillation_trainer(tmp_path)
    # A (model, tokenizer) pair ...
    with pytest.raises(ValueError, match="another tokenizer than the student"):
        GradientAlignmentCallback(
            trainer, config(), teachers={"other": (tiny_lm(2), other)}, reward_func=parity_reward
        )
    # ... and a saved teacher given by path: its tokenizer is loaded from the same directory.
    saved = tmp_path / "other_teacher"
    tiny_lm(2).save_pretrained(saved)
    other.save_pretrained(saved)
    with pytest.raises(ValueError, match="another tokenizer than the student"):
        GradientAlignmentCallback(trainer, config(), teachers={"other": str(saved)}, reward_func=parity_reward)
    TOKENIZER.save_pretrained(saved)  # the same teacher with the student's tokenizer is accepted
    cb = GradientAlignmentCallback(trainer, config(), teachers={"other": str(saved)}, reward_func=parity_reward)
    assert "other" in [t.name for t in cb.teachers]


def test_a_teacher_on_the_meta_device_is_refused(tmp_path):
    trainer = distillation_trainer(tmp_path)
    with torch.device("meta"):
        empty = tiny_lm(2)
    with pytest.raises(ValueError, match="meta device"):
        GradientAlignmentCallback(trainer, config(), teachers={"empty": (empty, TOKENIZER)}, reward_func=parity_reward)


def test_a_template_with_a_bad_format_spec_fails_at_attach(tmp_path):
    trainer = distillation_trainer(tmp_path)
    with pytest.raises(ValueError, match=r"template '\{prompt\} \{answer:d\}' cannot be formatted"):
        GradientAlignmentCallback(
            trainer, config(alignment_self_contexts=["ans:base={prompt} {answer:d}"]), reward_func=parity_reward
        )


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("alignment_targeted_rollouts", 0, "alignment_targeted_rollouts=0"),
        ("alignment_candidate_mass", 1.5, "alignment_candidate_mass=1.5"),
        ("alignment_confidence", 1.0, "alignment_confidence=1.0"),
    ],
)
def test_config_errors_name_the_key_the_user_wrote(key, value, message):
    with pytest.raises(ValueError, match=message) as err:
        GradientAlignmentConfig(**{key: value})
    assert "num_rollouts" not in str(err.value) and "DiagnosisConfig" not in str(err.value)


def test_recipes_refuse_argument_prefixes(tmp_path):
    """`--alignment_every 3` must not silently set alignment_every_n_steps (TrlParser with allow_abbrev=False)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    recipe = root / "recipes" / "distill_with_alignment.py"
    done = subprocess.run(
        [sys.executable, str(recipe), "--config", str(root / "configs" / "distill_default.yaml")]
        + ["--output_dir", str(tmp_path), "--max_steps", "1", "--alignment_every", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"},
    )
    assert done.returncode != 0
    assert "not used by the HfArgumentParser: ['--alignment_every', '3']" in done.stderr


def test_empty_runs_are_warned_at_start(tmp_path, caplog):
    trainer = distillation_trainer(tmp_path, steps=2)
    trainer.add_callback(
        GradientAlignmentCallback(trainer, config(alignment_every_n_steps=5), reward_func=parity_reward)
    )
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert "alignment_every_n_steps=5 is larger than max_steps=2" in caplog.text

    caplog.clear()
    trainer = distillation_trainer(tmp_path)
    trainer.args.max_completion_length = 0
    with caplog.at_level(logging.WARNING):
        GradientAlignmentCallback(trainer, config(), reward_func=parity_reward)
    assert "completion length is 0" in caplog.text


def test_cli_refuses_a_teacher_with_another_tokenizer_and_a_bad_template(tmp_path, capsys):
    from gad_callbacks.cli import main
    from gad_callbacks.world.checkpoints import resolve_model
    from tests.reliability.test_files_and_runs import SMALL

    other = tmp_path / "other"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(resolve_model("default:teacher")).save_pretrained(other)
    swapped_tokenizer().save_pretrained(other)
    capsys.readouterr()  # progress bars of the save above
    assert main(["diagnose", *SMALL, "--teachers", f"other={other}", "--output_dir", str(tmp_path / "a")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gad:")]  # no progress bars
    assert len(err) == 1 and "Teacher 'other' has another tokenizer than the student" in err[0]
    assert "student '1' vs teacher '2'" in err[0]

    bad = ["--alignment_self_contexts", "ans:base={prompt} {answer:d}", "--output_dir", str(tmp_path / "b")]
    assert main(["diagnose", *SMALL, *bad]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gad:")]
    assert len(err) == 1 and "cannot be formatted with the dataset's first row" in err[0]


def test_cli_warns_about_an_empty_completion_budget(tmp_path, capsys, caplog):
    from gad_callbacks.cli import main
    from tests.reliability.test_files_and_runs import SMALL

    with caplog.at_level(logging.WARNING):
        code = main(["diagnose", *SMALL, "--max_completion_length", "0", "--output_dir", str(tmp_path / "o")])
    assert "max_completion_length is 0" in caplog.text
    assert code == 2 and "zero node rows; skipped: empty_rollout=2" in capsys.readouterr().err


def test_a_teacher_saved_without_its_tokenizer_falls_back_to_the_size_check(tmp_path, caplog):
    """transformers builds an empty tokenizer from a bare checkpoint: that must not read as 'another tokenizer'."""
    from gad_callbacks.cli import main
    from tests.reliability.test_files_and_runs import SMALL

    bare = tmp_path / "bare"
    tiny_lm(2).save_pretrained(bare)  # weights and config only
    trainer = distillation_trainer(tmp_path)
    with caplog.at_level(logging.WARNING):
        cb = GradientAlignmentCallback(trainer, config(), teachers={"bare": str(bare)}, reward_func=parity_reward)
    assert "bare" in [t.name for t in cb.teachers]
    assert "holds no tokenizer files" in caplog.text

    from transformers import AutoModelForCausalLM

    from gad_callbacks.world.checkpoints import resolve_model

    AutoModelForCausalLM.from_pretrained(resolve_model("default:teacher")).save_pretrained(tmp_path / "t")
    out = tmp_path / "out"
    assert main(["diagnose", *SMALL, "--teachers", f"t={tmp_path / 't'}", "--output_dir", str(out)]) == 0
