#!/usr/bin/env bash
# The multi-process equivalence checks of tests/distributed on GPUs (needs >= 2 GPUs; a few minutes):
# 1 process vs DDP vs DeepSpeed ZeRO-2 vs ZeRO-3 give the same per-node alignments (1e-5), and the observed run is
# bit-identical with and without the callback in each setting. On CPU the same tests run in CI (.ci/run); this
# script is for what CPU cannot show (CUDA devices, NCCL). Not yet run by the project: no GPU has been lent.
#
#   bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export GAD_DEVICE=cuda HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TRL_EXPERIMENTAL_SILENCE=1
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -lt 2 ]; then echo "gpu_check: needs at least 2 GPUs, found $gpus"; exit 2; fi
python -m pytest -q -rA tests/distributed
