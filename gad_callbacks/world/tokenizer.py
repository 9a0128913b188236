"""A small byte-level BPE tokenizer with a chat template, trained in code on the arithmetic task's text.

Byte-level BPE because TRL's GOLD trainer insists on it, and because any text (including a teacher's privileged
context) stays encodable. The pre-tokenizer is Qwen2's (digits split one by one, then byte-level): the checkpoints
are Qwen2-architecture models, and `AutoTokenizer` loads a Qwen2 checkpoint's tokenizer as `Qwen2Tokenizer`, which
imposes that pre-tokenizer; building it the same way makes the tokenizer in memory and the one loaded from disk
tokenize identically (tested). Training is deterministic for a given corpus, so the tokenizer is reproducible.
"""

import random

from .arithmetic import ArithmeticTask


QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _corpus(num_problems: int = 2000, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for digits in (1, 2, 3, 4):
        task = ArithmeticTask(digits)
        for _ in range(num_problems // 4):
            row = task.problem(rng)
            lines += [row["prompt"][0]["content"], row["solution"], row["privileged_context"]]
    lines += ["Reference solution: Hint: The answer is Solve step by step."]
    return lines


def build_tokenizer(vocab_size: int = 320, digit_group: int = 1):
    """
    The default world's tokenizer: `PreTrainedTokenizerFast`, pad `<|pad|>`, EOS `<|end|>`, chat template set.
    `digit_group=3`: numbers split into groups of up to three digits (Llama 3's rule) instead of one by one; with
    another `vocab_size`, a different tokenizer of the same text (a cross-tokenizer teacher's).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    split = QWEN2_SPLIT if digit_group == 1 else QWEN2_SPLIT.replace(r"|\p{N}|", rf"|\p{{N}}{{1,{digit_group}}}|")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>", bos_token=None, unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
