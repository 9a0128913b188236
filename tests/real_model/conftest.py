"""The real-model tests' checkpoint: SmolLM2-135M-Instruct saved once per session (see `smollm2.py`)."""

import pytest

from tests.real_model.smollm2 import MISSING, SKIP_REASON, save_smollm2


@pytest.fixture(scope="session")
def smollm2_path(tmp_path_factory):
    """Directory of SmolLM2-135M-Instruct saved as a float32 checkpoint with its tokenizer."""
    if MISSING:
        pytest.skip(SKIP_REASON)
    return save_smollm2(tmp_path_factory.mktemp("smollm2"))


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread while a real-model test runs: on a shared 2-core machine, 2 threads that other processes
    preempt made a forward+backward of this model ~10x slower (1.6 s vs 17 s); on an idle one they save < 2x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
