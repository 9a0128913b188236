"""Tiny causal LMs for the embedded world (the shipped checkpoints, tests, benchmarks): Qwen2 architecture, and Llama
for the teacher with another tokenizer (next to a Llama config `AutoTokenizer` keeps a tokenizer as saved, where a
Qwen2 config makes it impose Qwen2's digit splitting)."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM


def _sizes(tokenizer, hidden: int, layers: int, vocab_size: int | None = None) -> dict:
    """Config fields both architectures share: sizes for CPU, the tokenizer's special ids, untied embeddings."""
    return dict(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 16),
        num_key_value_heads=max(1, hidden // 32),
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )


def tiny_qwen2(tokenizer, hidden: int = 64, layers: int = 2, seed: int = 0, vocab_size: int | None = None):
    """A randomly initialised Qwen2 causal LM sized for CPU, on `tokenizer`'s vocabulary (or `vocab_size`)."""
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**_sizes(tokenizer, hidden, layers, vocab_size)))


def tiny_llama(tokenizer, hidden: int = 64, layers: int = 2, seed: int = 0):
    """A randomly initialised Llama causal LM sized for CPU, on `tokenizer`'s vocabulary."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**_sizes(tokenizer, hidden, layers)))
