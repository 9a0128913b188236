"""Shared fixtures: tiny causal LMs built in-process from `transformers` configs (no downloads, ever)."""

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM  # noqa: E402


torch.set_num_threads(2)


def tiny_model(kind="qwen2", vocab_size=48, layers=2, tie=False, seed=0, logit_scale=1.0, eos_token_id=1, dtype=None):
    """A randomly initialised tiny causal LM; `logit_scale` sharpens its next-token distributions."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        eos_token_id=eos_token_id,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**common)) if kind == "qwen2" else LlamaForCausalLM(LlamaConfig(**common))
    if logit_scale != 1.0:
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(logit_scale)
    if dtype is not None:
        model = model.to(dtype)
    return model


def lora(model, seed=0):
    """Wrap in LoRA adapters with non-zero B (PEFT initialises B = 0, which would make A's gradients vanish)."""
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    return peft_model


@pytest.fixture
def qwen():
    return tiny_model("qwen2")


@pytest.fixture(params=["qwen2", "llama"])
def any_model(request):
    return tiny_model(request.param, logit_scale=3.0)
