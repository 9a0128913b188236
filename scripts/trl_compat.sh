#!/usr/bin/env bash
# The TRL versions pyproject.toml claims, tested. For each version given (default: the oldest claimed, the `trl>=`
# bound in pyproject.toml, and the newest on the package index), a fresh venv with that TRL runs the trainer-facing
# tests: each adapter's direction against the trainer's own loss function (tests/integration/test_adapters.py,
# test_rollout_loss_adapters.py), the callback on every supported trainer incl. bit-identity of the observed run
# (test_callback*.py), and the recipes.
# .ci/run runs it for the oldest version (the newest is the one its main venv installs).
#
#   bash scripts/trl_compat.sh                 # the oldest claimed and the newest (~6 min each on 2 cores)
#   bash scripts/trl_compat.sh 1.14.2          # one version
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TRL_EXPERIMENTAL_SILENCE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
oldest=$(sed -n 's/^ *"trl>=\([0-9.]*\)".*/\1/p' pyproject.toml)
versions=("$@")
if [ ${#versions[@]} -eq 0 ]; then
  newest=$(pip index versions trl 2>/dev/null | sed -n 's/^trl (\(.*\))$/\1/p')
  versions=("$oldest" "${newest:?could not read the newest trl from the package index}")
fi
for version in "${versions[@]}"; do
  venv=$(mktemp -d)/venv
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.13.0
  # TRL 1.13's DistillationTrainer imports `requests` (through its vLLM client) and its AsyncDistillationTrainer
  # `aiohttp`, without declaring either.
  "$venv/bin/pip" install -q -e ".[test]" "trl==$version" requests aiohttp
  echo "trl_compat: trl $("$venv/bin/python" -c 'import trl; print(trl.__version__)')"
  OMP_NUM_THREADS=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/integration tests/recipes
  rm -rf "$(dirname "$venv")"
done
