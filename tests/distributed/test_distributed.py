"""Several processes and DeepSpeed on this machine's CPUs: the same alignments as one process, and no perturbation.

Each setting is one launch of tests/distributed/run_setting.py: (a) one process, (b) 2 processes (DDP, gloo),
(c) 2 processes under DeepSpeed ZeRO-2, (d) 2 processes under ZeRO-3 (DeepSpeed's CPU accelerator).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gad_callbacks.outputs.records import read_records
from gad_callbacks.outputs.runs import find_runs


ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "tests" / "distributed" / "run_setting.py")
SETTINGS = {
    "single": [sys.executable, SCRIPT],
    "ddp": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT],
    "zero2": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT],
    "zero3": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT],
}
DEEPSPEED_CONFIG = {"zero2": "configs/deepspeed/zero2.json", "zero3": "configs/deepspeed/zero3.json"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    env.pop("RANK", None)
    for name, cmd in SETTINGS.items():
        run_dir = tmp_path_factory.mktemp(name)
        args = [str(run_dir)] + ([DEEPSPEED_CONFIG[name]] if name in DEEPSPEED_CONFIG else [])
        done = subprocess.run(cmd + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{name} failed:\n{done.stderr[-4000:]}"
        out[name] = run_dir
    return out


def node_records(run_dir, name="align"):
    (run,) = find_runs(run_dir / name)  # one training run, written by the main process only
    return {(r["rollout_id"], r["position"], r["teacher"]): r for r in read_records(run / "records")}


def test_settings_are_what_they_claim(runs):
    for name, expected in {"single": (1, None), "ddp": (2, None), "zero2": (2, 2), "zero3": (2, 3)}.items():
        result = json.loads((runs[name] / "result.json").read_text())
        assert (result["world_size"], result["zero_stage"]) == expected, name


@pytest.mark.parametrize("setting", ["ddp", "zero2", "zero3"])
# GKD; GOLD with a cross-tokenizer (ULD) teacher; IW-OPD (every teacher and context through its loss over the rollout)
@pytest.mark.parametrize("run", ["align", "align-gold", "align-iw_opd"])
def test_per_node_alignment_equals_single_process(runs, setting, run):
    reference, got = node_records(runs["single"], run), node_records(runs[setting], run)
    assert got.keys() == reference.keys()
    assert sum(not math.isnan(r["param_cos"]) for r in reference.values()) >= 5, "too few defined nodes to compare"
    for key, ref in reference.items():
        for field in ("param_cos", "logit_cos", "advantage", "value"):
            a, b = ref[field], got[key][field]
            if math.isnan(a):
                assert math.isnan(b), (setting, key, field)
            else:
                assert abs(a - b) <= 1e-5, (setting, key, field, a, b)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("kind, steps", [("distillation", 3), ("gold", 2), ("iw_opd", 2), ("sdpo", 2)])
def test_observed_run_is_bit_identical_with_the_callback(runs, setting, kind, steps):
    result = json.loads((runs[setting] / "result.json").read_text())[kind]
    without, with_cb = result["False"], result["True"]
    assert len(without["losses"]) == steps
    assert with_cb["losses"] == without["losses"]
    assert with_cb["weights"] == without["weights"]
    # The callback did pause (and diagnose) at every step, on every setting.
    assert [row["gad/nodes"] > 0 for row in with_cb["gad_rows"]] == [True] * steps
    assert all(row["gad/errors"] == 0 for row in with_cb["gad_rows"])


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_router_applies_the_same_decisions_on_every_process(runs, setting):
    world = json.loads((runs[setting] / "result.json").read_text())["world_size"]
    ranks = [json.loads((runs[setting] / f"route-rank{r}.json").read_text()) for r in range(world)]
    history = ranks[0]["history"]
    assert [step for step, _ in history] == [0, 1, 2, 3]  # before the first step, then every pause
    assert all(r["history"] == history for r in ranks)  # one decision, applied everywhere
    assert all(r["applied"] for r in ranks)  # the trainer's teacher is the chosen model on every process
    rows = ranks[0]["rows"]
    assert [row["gad/router/choice"] for row in rows] == [float(["teacher", "initial"].index(c)) for _, c in history]
    assert all(row["gad/errors"] == 0 for row in rows)
    # The trainer's own teacher was swapped out at the first pause (the router started with "initial"): it was still
    # measured with whole parameters, so its per-node numbers are those of the single process.
    if setting != "single":
        reference, got = node_records(runs["single"], "route"), node_records(runs[setting], "route")
        first = {k: v for k, v in reference.items() if v["step"] == 0 and k[2] == "teacher"}
        assert first and sum(not math.isnan(r["param_cos"]) for r in first.values()) >= 2
        for key, ref in first.items():
            a, b = ref["param_cos"], got[key]["param_cos"]
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-5, (setting, key, a, b)
