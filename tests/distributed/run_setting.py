"""One distributed setting of the equivalence tests, launched by tests/distributed/test_distributed.py.

    torchrun --standalone --nproc_per_node 2 tests/distributed/run_setting.py OUT_DIR [configs/deepspeed/zero3.json]

(On these CPU machines DeepSpeed is set up through the trainer's `deepspeed=` argument with the same engine configs
that configs/accelerate/deepspeed_zero{2,3}.yaml point to: launched through accelerate's DeepSpeed plugin instead,
TRL's own teacher preparation fails on CPU with a batch-size assertion, before the callback is involved.)

Runs, in one launch: (1) a GKD run, a GOLD run distilling the cross-tokenizer teacher through ULD and an IW-OPD run
(JSD objective), the last two off-policy (`lmbda=0`: the callback then samples fresh rollouts), each with learning
rate 0 and the callback at step 1 (weights and fresh rollouts are then the same in every setting, so per-node
alignments must be too); (2) and (3) the same
short DistillationTrainer, GOLD (ULD), IW-OPD and SDPO runs without and with the callback; (4) a DistillationTrainer
under the AlignmentRouter. Process 0 writes OUT_DIR/result.json (losses, a hash of the final weights, per trainer);
every process writes OUT_DIR/route-rank<r>.json (the router's decisions as that process applied them).
"""

import hashlib
import json
import os
import sys
import warnings


os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TRL_EXPERIMENTAL_SILENCE="1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import DistillationConfig, DistillationTrainer  # noqa: E402
from trl.experimental.gkd import GKDConfig, GKDTrainer  # noqa: E402
from trl.experimental.gold import GOLDConfig, GOLDTrainer  # noqa: E402
from trl.experimental.iw_opd import IWOPDConfig, IWOPDTrainer  # noqa: E402
from trl.experimental.sdpo import SDPOConfig, SDPOTrainer  # noqa: E402

from gad_callbacks import (  # noqa: E402
    AlignmentRouter,
    AlignmentRouterConfig,
    GradientAlignmentCallback,
    GradientAlignmentConfig,
)
from gad_callbacks.engine.verifiers import NumericAnswerReward  # noqa: E402
from gad_callbacks.world import make_dataset  # noqa: E402
from gad_callbacks.world.checkpoints import resolve_model  # noqa: E402


OUT = sys.argv[1]
DEEPSPEED = sys.argv[2] if len(sys.argv) > 2 else None
STUDENT, TEACHER = resolve_model("default:student"), resolve_model("default:teacher")
CROSS_TEACHER = resolve_model("default:cross_teacher")
TOKENIZER = AutoTokenizer.from_pretrained(STUDENT)
OBSERVED = ("distillation", "gold", "iw_opd", "sdpo")


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


# Models are loaded before any TrainingArguments exists: under ZeRO-3 a later `from_pretrained` goes through
# `zero.Init`, which on CPU runs before DeepSpeed knows the world size (the trainer partitions them anyway).
MODELS = {
    "gkd": (load(STUDENT), load(TEACHER)),
    "gold-align": (load(STUDENT), load(CROSS_TEACHER)),
    "iw_opd-align": (load(STUDENT), load(TEACHER)),
    **{
        (kind, with_callback): (load(STUDENT), load(CROSS_TEACHER if kind == "gold" else TEACHER))
        for kind in OBSERVED
        for with_callback in (False, True)
    },
    "route": (load(STUDENT), load(TEACHER), load(STUDENT)),
}
COMMON = dict(
    bf16=False,
    report_to="none",
    logging_steps=1,
    save_strategy="no",
    gradient_checkpointing=False,
    seed=0,
    per_device_train_batch_size=2,
    deepspeed=DEEPSPEED,
    use_cpu=True,
)


def alignment_config(config_class=GradientAlignmentConfig, **overrides):
    settings = dict(
        alignment_every_n_steps=1,
        alignment_rollouts_per_pause=4,
        alignment_nodes_per_rollout=3,
        alignment_targeted_rollouts=6,
        alignment_num_bootstrap=50,
        alignment_self_contexts=[
            "solution:base={prompt} Reference solution: {solution}",
            "answer:live={prompt} The answer is {answer}.",
        ],
    )
    return config_class(**{**settings, **overrides})


def weights_hash(trainer) -> str:
    """Hash of the full final weights (under ZeRO-3 consolidated by DeepSpeed itself; a collective)."""
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if not trainer.accelerator.is_main_process:
        return ""
    return hashlib.sha256(b"".join(state[k].detach().cpu().numpy().tobytes() for k in sorted(state))).hexdigest()


# (1) Per-node alignments, learning rate 0: every setting sees the same weights and the same fresh rollouts. GKD
# keeps none; GOLD and IW-OPD trained off-policy only (lmbda=0) have none of the student's either. GOLD's
# cross-tokenizer teacher goes through the ULD path (its direction by autograd through the trainer's loss over each
# rollout).
gkd = GKDTrainer(
    model=MODELS["gkd"][0],
    teacher_model=MODELS["gkd"][1],
    processing_class=TOKENIZER,
    train_dataset=make_dataset(32).select_columns(["messages", "answer", "solution"]),
    args=GKDConfig(output_dir=f"{OUT}/align", max_steps=1, learning_rate=0.0, lmbda=1.0, max_new_tokens=24, **COMMON),
)
gkd.add_callback(GradientAlignmentCallback(gkd, alignment_config()))
gkd.train()
GOLD_ULD = dict(use_uld_loss=True, teacher_tokenizer_name_or_path=CROSS_TEACHER, max_length=256)


def off_policy_alignment_run(trainer_cls, config_cls, name, **extra):
    """GOLD / IW-OPD trained off-policy only (`lmbda=0`) at learning rate 0, the callback at step 1."""
    student, teacher = MODELS[f"{name}-align"]
    args = config_cls(
        output_dir=f"{OUT}/align-{name}",
        max_steps=1,
        learning_rate=0.0,
        lmbda=0.0,
        max_completion_length=24,
        **extra,
        **COMMON,
    )
    data = make_dataset(32).select_columns(["messages", "answer", "solution"])
    trainer = trainer_cls(
        model=student, teacher_model=teacher, processing_class=TOKENIZER, train_dataset=data, args=args
    )
    trainer.add_callback(GradientAlignmentCallback(trainer, alignment_config()))
    trainer.train()


off_policy_alignment_run(GOLDTrainer, GOLDConfig, "gold", **GOLD_ULD)
# IW-OPD's JSD objective: every teacher and context through the trainer's loss over each rollout.
off_policy_alignment_run(IWOPDTrainer, IWOPDConfig, "iw_opd", distillation_objective="jsd", beta=0.5, max_length=256)


def observed_trainer(kind, with_callback):
    student, teacher = MODELS[(kind, with_callback)]
    out = f"{OUT}/train-{kind}-{with_callback}"
    steps = 3 if kind == "distillation" else 2
    if kind == "distillation":
        args = DistillationConfig(
            output_dir=out, max_steps=steps, learning_rate=1e-3, max_completion_length=24, **COMMON
        )
        data = make_dataset(64).select_columns(["prompt", "answer", "solution"])
        return DistillationTrainer(
            model=student, teacher_model=teacher, processing_class=TOKENIZER, train_dataset=data, args=args
        )
    if kind in ("gold", "iw_opd"):
        data = make_dataset(64).select_columns(["messages", "answer", "solution"])
        config, trainer = (GOLDConfig, GOLDTrainer) if kind == "gold" else (IWOPDConfig, IWOPDTrainer)
        extra = GOLD_ULD if kind == "gold" else dict(max_length=256)
        args = config(output_dir=out, max_steps=steps, learning_rate=1e-3, max_completion_length=16, **extra, **COMMON)
        return trainer(model=student, teacher_model=teacher, processing_class=TOKENIZER, train_dataset=data, args=args)
    args = SDPOConfig(
        output_dir=out,
        max_steps=steps,
        learning_rate=1e-3,
        max_completion_length=16,
        num_generations=2,
        teacher_model_kind="live",
        distillation_weight=0.5,
        **COMMON,
    )
    data = make_dataset(64).select_columns(["prompt", "answer", "solution"])
    reward = NumericAnswerReward()
    return SDPOTrainer(model=student, reward_funcs=reward, processing_class=TOKENIZER, train_dataset=data, args=args)


# (2), (3) The observed runs, without and with the callback.
results = {}
for kind in OBSERVED:
    results[kind] = {}
    for with_callback in (False, True):
        trainer = observed_trainer(kind, with_callback)
        if with_callback:
            trainer.add_callback(GradientAlignmentCallback(trainer, alignment_config()))
        trainer.train()
        results[kind][str(with_callback)] = {
            "losses": [r["loss"] for r in trainer.state.log_history if "loss" in r],
            "weights": weights_hash(trainer),
            "gad_rows": [r for r in trainer.state.log_history if "gad/nodes" in r],
        }

# (4) The router: a DistillationTrainer choosing, at every step, between its teacher and the student's initial
# weights (an extra teacher). Every process must train with the same choice: each writes what it applied.
student, teacher, initial = MODELS["route"]
routed = DistillationTrainer(
    model=student,
    teacher_model=teacher,
    processing_class=TOKENIZER,
    train_dataset=make_dataset(64).select_columns(["prompt", "answer", "solution"]),
    args=DistillationConfig(
        output_dir=f"{OUT}/route", max_steps=3, learning_rate=1e-3, max_completion_length=24, **COMMON
    ),
)
router = AlignmentRouter(
    routed,
    # Start with the extra teacher: the trainer's own is swapped out from the first pause on, and must still be
    # measured whole (under ZeRO-3 its parameters are gathered although it is no longer `trainer.teacher_model`).
    alignment_config(AlignmentRouterConfig, alignment_self_contexts=[], router_initial="initial"),
    teachers={"initial": (initial, TOKENIZER)},
)
routed.add_callback(router)
routed.train()
rank = routed.accelerator.process_index
with open(f"{OUT}/route-rank{rank}.json", "w") as f:
    json.dump(
        {
            "history": router.history,
            "applied": routed.teacher_model is router.route.models[router.choice],
            "rows": [r for r in routed.state.log_history if "gad/router/choice" in r],
        },
        f,
    )

if gkd.accelerator.is_main_process:
    results["world_size"] = gkd.accelerator.num_processes
    results["zero_stage"] = getattr(getattr(gkd.accelerator.state, "deepspeed_plugin", None), "zero_stage", None)
    with open(f"{OUT}/result.json", "w") as f:
        json.dump(results, f, indent=1)

# Leave without interpreter teardown: with several DeepSpeed engines alive, ZeRO-3 on CPU can abort in a C++
# destructor at exit ("terminate called without an active exception") after all the work is done and written.
if torch.distributed.is_initialized():
    torch.distributed.barrier()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
