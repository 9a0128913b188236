"""Attach-time checks of a teacher: same vocabulary as the student, real weights, a template that formats.

Each check turns a silent wrong number into an error naming the fix. The worst case is a teacher whose tokenizer has
the student's size but other tokens (Llama-2 and Mistral both have 32,000): its logits line up row for row with the
student's and every cosine is computed, on meaningless pairs of tokens. Sizes alone cannot catch it; the vocabularies
themselves are compared.
"""

import logging
from pathlib import Path


logger = logging.getLogger(__name__)


CROSS_TOKENIZER = (
    "A teacher with another tokenizer is diagnosable only as the trainer's own teacher, in a trainer whose loss aligns "
    "the two tokenizations: trl.experimental.gold.GOLDTrainer with use_uld_loss=True and teacher_tokenizer_name_or_path."
)


def vocabulary_size(model) -> int:
    """Rows of the output embedding (`ds_shape` under DeepSpeed ZeRO-3, where the local tensor is an empty shard)."""
    weight = model.get_output_embeddings().weight
    return int(getattr(weight, "ds_shape", weight.shape)[0])


def check_vocabulary(name: str, teacher, student) -> None:
    """The teacher's logits must have one row per student token."""
    t_vocab, s_vocab = vocabulary_size(teacher), vocabulary_size(student)
    if t_vocab != s_vocab:
        raise ValueError(
            f"Teacher {name!r} has a vocabulary of {t_vocab} tokens, the student {s_vocab}: gradient alignment needs "
            f"a teacher that shares the student's tokenizer. Use a teacher of the same model family. {CROSS_TOKENIZER}"
        )


def check_weights_loaded(name: str, model) -> None:
    """A model on the meta device has shapes but no weights: its logits would be garbage or raise at every pause."""
    if any(p.is_meta for p in model.parameters()):
        raise ValueError(
            f"Teacher {name!r} has parameters on the meta device (no weights loaded): load it with its weights "
            "(e.g. without device_map='meta' / init_empty_weights), or pass its path and let gad_callbacks load it."
        )


def _by_id(tokenizer) -> dict[int, str]:
    return {i: token for token, i in tokenizer.get_vocab().items()}


def check_tokenizers(name: str, teacher_tokenizer, student_tokenizer) -> None:
    """
    Refuse a teacher whose tokenizer maps any id to another token than the student's (added and special tokens
    included), naming the first differing ids. Special-token *roles* (which id is EOS or padding) may differ between
    checkpoints of one family (a base student, an instruct teacher): that is logged, not refused, since the
    distributions are compared id for id and rollouts stop at the student's own EOS.
    """
    if teacher_tokenizer is None or student_tokenizer is None:
        return
    teacher, student = _by_id(teacher_tokenizer), _by_id(student_tokenizer)
    if teacher != student:
        differ = sorted(i for i in set(teacher) | set(student) if teacher.get(i) != student.get(i))
        shown = ", ".join(f"id {i}: student {student.get(i)!r} vs teacher {teacher.get(i)!r}" for i in differ[:3])
        raise ValueError(
            f"Teacher {name!r} has another tokenizer than the student ({len(differ)} of {len(student)} token ids "
            f"differ; {shown}{', ...' if len(differ) > 3 else ''}): its logits would be compared with the student's "
            f"on different tokens. Use a teacher that shares the student's tokenizer (the same model family). "
            f"{CROSS_TOKENIZER}"
        )
    roles = ("eos_token", "bos_token", "pad_token", "unk_token")
    changed = [r for r in roles if getattr(teacher_tokenizer, r, None) != getattr(student_tokenizer, r, None)]
    if changed:
        logger.info(
            "gad: teacher %r shares the student's vocabulary but not its special-token roles (%s); rollouts use the "
            "student's.",
            name,
            ", ".join(
                f"{r} {getattr(student_tokenizer, r, None)!r} vs {getattr(teacher_tokenizer, r, None)!r}"
                for r in changed
            ),
        )


# Files one of which a directory must hold to have a tokenizer (transformers builds an empty one from a bare
# config.json rather than failing, and an empty tokenizer would "differ" from every student's).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")


def load_tokenizer_of(name: str, model, tokenizer_path: str | None = None):
    """
    The tokenizer saved with a teacher (`tokenizer_path`, else the model's `name_or_path`), or None with a warning
    when there is none: then only the vocabulary size is checked. A directory without tokenizer files, or a
    tokenizer far smaller than the model's output layer, counts as none (a checkpoint saved without its tokenizer).
    """
    from transformers import AutoTokenizer

    path = tokenizer_path or getattr(model, "name_or_path", "") or ""
    tokenizer, reason = None, "the model has no name_or_path"
    if path and Path(path).is_dir() and not any((Path(path) / f).is_file() for f in _TOKENIZER_FILES):
        reason = f"{path} holds no tokenizer files"
    elif path:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    if tokenizer is not None and model is not None and len(tokenizer) < vocabulary_size(model) // 2:
        tokenizer, reason = (
            None,
            f"the tokenizer at {path} has {len(tokenizer)} tokens for {vocabulary_size(model)} logits",
        )
    if tokenizer is None:
        logger.warning(
            "gad: cannot load the tokenizer of teacher %r to compare it with the student's (%s): only vocabulary "
            "sizes are checked. Save the tokenizer with the teacher, or pass it with the teacher.",
            name,
            reason,
        )
    return tokenizer


def check_template(context, row: dict) -> None:
    """Format a self-distillation template on one dataset row now, so a bad spec fails at attach, not every pause."""
    from .teachers import compose_prompt  # teachers.py imports this module

    try:
        compose_prompt(row.get("prompt", ""), context.template, row)
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as err:
        raise ValueError(
            f"Self-distillation context {context.name!r}: template {context.template!r} cannot be formatted with "
            f"the dataset's first row ({type(err).__name__}: {err}). Fix the template's fields or format specs."
        ) from None
