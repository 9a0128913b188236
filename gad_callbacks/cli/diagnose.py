"""`gad diagnose`: the training-free diagnostic over a student, teachers / contexts and a dataset.

Samples the student's own rollouts on the dataset's questions, then runs the same pass the training callback runs
(`diagnose_rollouts`) and writes records, TensorBoard logs, a terminal summary and an HTML report.

The output directory holds one run. Everything that can be checked without computing (the device, that the output
directory is writable and holds no run unless `--overwrite_output_dir true`, the dataset's columns) is checked
first. The run's files are written to a staging directory inside `output_dir` and moved in only once all are
written, so a failure midway leaves the previous run, if any, as it was.
"""

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..diagnosis import TeacherLoss, context_teacher, diagnose_rollouts, model_teacher
from ..diagnosis.sampling import sample_rollouts, tokenize_prompts
from ..diagnosis.teacher_checks import load_tokenizer_of
from ..diagnosis.teachers import parse_named_models
from ..engine.reward_funcs import check_reward_dataset
from ..integration.config import GradientAlignmentConfig
from ..outputs.files import atomic_write_text
from ..outputs.metrics import pause_metrics
from ..outputs.records import write_records
from ..outputs.runs import new_run_id, write_run_info
from ..outputs.tensorboard import AlignmentBoard
from ..world.checkpoints import resolve_model
from ..world.datasets import load_questions
from .output_dir import claimed_output_dir, staged_run
from .report import summarize_run


logger = logging.getLogger(__name__)


@dataclass
class DiagnoseArguments:
    """
    Run-level settings of `gad diagnose` (the estimator's knobs are [`GradientAlignmentConfig`]'s `alignment_*`).

    Parameters:
        student (`str`, *optional*, defaults to `"default:student"`):
            Student model: a path, a Hub id, or `default:<name>` for a shipped checkpoint.
        teachers (`list[str]`, *optional*, defaults to `["teacher=default:teacher"]`):
            External teachers as `"name=model"`.
        dataset (`str`, *optional*, defaults to `"default:arithmetic"`):
            `default:arithmetic` (generated in code), a `.json` / `.jsonl` / `.parquet` / `.csv` file, or a Hub
            dataset id, with a `prompt` column (text or messages) or a `messages` column (its final assistant message
            is the answer, not part of the prompt), and the columns the verifiers (`alignment_reward_funcs`) and
            contexts read; missing ones are an error before any model loads.
        num_questions (`int`, *optional*, defaults to `24`):
            Questions taken from the dataset (the first ones).
        rollouts_per_question (`int`, *optional*, defaults to `2`):
            Student rollouts sampled per question.
        sampling_temperature (`float`, *optional*, defaults to `1.0`):
            Student sampling temperature (rollouts, targeted rollouts and `p`).
        max_completion_length (`int`, *optional*, defaults to `32`):
            Completion budget of rollouts and targeted continuations.
        distill_loss (`str`, *optional*, defaults to `"reverse_kl"`):
            Loss whose gradient is each teacher's direction: `reverse_kl`, `forward_kl`, `jsd`, `sampled_token`.
        distill_beta (`float`, *optional*):
            TRL's `beta` for `jsd`.
        distill_temperature (`float`, *optional*, defaults to `1.0`):
            Temperature of the distillation loss.
        output_dir (`str`, *optional*, defaults to `"runs/gad-diagnose"`):
            Where records, TensorBoard logs, `run.json` and `report.html` go.
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Replace the run already in `output_dir` (its records, rollouts, TensorBoard logs, `run.json` and
            `report.html`; nothing else). Without it, a run there is an error: two runs never mix.
        device (`str`, *optional*, defaults to `"cpu"`):
            Torch device (`cpu`, `cuda`, `cuda:1`, ...); checked before anything runs.
        run_seed (`int`, *optional*, defaults to `0`):
            Seed of the rollouts and of every choice the diagnostic makes.
    """

    student: str = field(default="default:student", metadata={"help": "Student model (path, Hub id, default:<name>)."})
    teachers: list[str] = field(default_factory=lambda: ["teacher=default:teacher"], metadata={"help": "name=model."})
    dataset: str = field(
        default="default:arithmetic",
        metadata={"help": "default:arithmetic, a json/jsonl/parquet/csv file or a Hub id."},
    )
    num_questions: int = field(default=24, metadata={"help": "Questions taken from the dataset."})
    rollouts_per_question: int = field(default=2, metadata={"help": "Student rollouts per question."})
    sampling_temperature: float = field(default=1.0, metadata={"help": "Student sampling temperature."})
    max_completion_length: int = field(default=32, metadata={"help": "Completion budget."})
    distill_loss: str = field(default="reverse_kl", metadata={"help": "reverse_kl, forward_kl, jsd or sampled_token."})
    distill_beta: float | None = field(default=None, metadata={"help": "TRL's beta for jsd."})
    distill_temperature: float = field(default=1.0, metadata={"help": "Temperature of the distillation loss."})
    output_dir: str = field(default="runs/gad-diagnose", metadata={"help": "Output directory."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace the run already in output_dir (else that is an error)."}
    )
    device: str = field(default="cpu", metadata={"help": "Torch device."})
    run_seed: int = field(default=0, metadata={"help": "Seed of rollouts and choices."})

    def __post_init__(self):
        if self.num_questions < 1 or self.rollouts_per_question < 1:
            raise ValueError("num_questions and rollouts_per_question must be >= 1.")
        check_device(self.device)
        if self.max_completion_length < 1:
            logger.warning(
                "gad: max_completion_length is %d: every rollout is empty, so nothing can be diagnosed (each is "
                "skipped as empty_rollout). Set max_completion_length >= 1.",
                self.max_completion_length,
            )
        self.teacher_models = parse_named_models(self.teachers, "teachers")
        self.loss = TeacherLoss(self.distill_loss, beta=self.distill_beta, temperature=self.distill_temperature)


def check_device(device: str) -> None:
    """Raise a one-line `ValueError` naming the fix when `device` is not a torch device this machine has."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else "unparseable"
        raise ValueError(f"device {device!r} is not a torch device ({reason}); use --device cpu or cuda.") from None
    if parsed.type == "cpu":
        return
    if parsed.type == "meta":
        raise ValueError("device 'meta' holds no data; use --device cpu or cuda.")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine; use --device cpu.")
    try:
        # Allocating on the device is the one check that holds for every backend and index (cuda:7, mps, xpu).
        torch.empty(1, device=parsed)
    except Exception as err:
        reason = " ".join(str(err).split()[:20]) or type(err).__name__
        raise ValueError(f"device {device!r} is not available ({reason}); use --device cpu.") from None


def load_model(spec: str, what: str, device: str):
    from transformers import AutoModelForCausalLM

    path = resolve_model(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except OSError as err:
        raise FileNotFoundError(
            f"{what} {spec!r}: cannot load a model from {path!r} ({str(err).splitlines()[0]})"
        ) from err
    return model.to(device).eval()


def run_diagnose(args: DiagnoseArguments, gad: GradientAlignmentConfig) -> Path:
    """
    Run the diagnostic and write its run into `args.output_dir`; returns that directory. The output directory and
    the device are checked before anything is computed.
    """
    start = time.perf_counter()
    out = Path(args.output_dir)
    with claimed_output_dir(out, args.overwrite_output_dir):
        return _run(args, gad, out, start)


def _run(args: DiagnoseArguments, gad: GradientAlignmentConfig, out: Path, start: float) -> Path:
    from transformers import AutoTokenizer

    # Cheap checks first: a wrong dataset column should not wait for models to load.
    dataset = load_questions(args.dataset, args.num_questions, seed=args.run_seed)
    columns = list(dataset.column_names)
    reward = gad.reward_func  # `alignment_reward_funcs`, resolved (and checked) when the config was parsed
    check_reward_dataset(reward, dataset)
    for context in gad.self_contexts:
        missing = context.fields() - {"prompt"} - set(columns)
        if missing:
            raise ValueError(
                f"context {context.name!r} uses column(s) {sorted(missing)} the dataset lacks ({columns})."
            )
    student = load_model(args.student, "student", args.device)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.student))

    def tokenize(prompts):
        return tokenize_prompts(tokenizer, prompts)  # as TRL's DistillationTrainer: chat template or plain call

    teachers = []
    for name, spec in args.teacher_models.items():
        # The teacher's own tokenizer, compared token for token with the student's (a same-size vocabulary of other
        # tokens would give meaningless cosines).
        model = load_model(spec, f"teacher {name!r}", args.device)
        teacher_tokenizer = load_tokenizer_of(name, model, resolve_model(spec))
        teachers.append(
            model_teacher(name, model, student, args.loss, tokenizer=teacher_tokenizer, student_tokenizer=tokenizer)
        )
    # No training happens here: the student's weights are its base weights, so a `base` context needs no copy.
    teachers += [
        context_teacher(c, student, tokenize, args.loss, columns, base_model=student, example_row=dataset[0])
        for c in gad.self_contexts
    ]
    if not teachers:
        raise ValueError("no teacher: set teachers and/or alignment_self_contexts.")
    names = [t.name for t in teachers]
    if len(set(names)) != len(names):
        raise ValueError(f"teacher and context names must be unique, got {names}.")

    rollouts = sample_rollouts(
        student,
        tokenizer,
        dataset,
        rollouts_per_question=args.rollouts_per_question,
        max_completion_length=args.max_completion_length,
        temperature=args.sampling_temperature,
        seed=args.run_seed,
    )
    diag = gad.diagnosis(args.max_completion_length, args.sampling_temperature)
    diag.seed = args.run_seed
    result = diagnose_rollouts(
        student,
        tokenizer,
        rollouts,
        teachers,
        reward,
        diag,
        gad.pass_settings(args.max_completion_length),
        step=0,
        progress=True,
    )
    metrics = pause_metrics(result, names, gad.alignment_confidence, seed=args.run_seed)
    metrics["gad/seconds"] = time.perf_counter() - start
    run_id = new_run_id()
    with staged_run(out, args.overwrite_output_dir) as stage:
        write_records(result.rows, stage / "records", 0)
        write_records(result.rollouts, stage / "rollouts", 0)
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(stage / "tensorboard")) as writer:
            AlignmentBoard(writer, names, write_scalars=True, histograms=gad.alignment_histograms).log(
                0, {k: v for k, v in metrics.items() if v == v}, result.rows
            )
        info = {"arguments": asdict(args), "alignment": asdict(gad), "skipped": dict(result.skipped)}
        write_run_info(stage, {"run_id": run_id, "kind": "diagnose", **info, "metrics": metrics})
        # The same level and seed as the metrics above, so the printed table, report.html and TensorBoard agree (and
        # a later `gad report` repeats them: it reads both from run.json).
        if result.rows:
            table, page = summarize_run(stage, confidence=gad.alignment_confidence, seed=args.run_seed)
            atomic_write_text(stage / "report.html", page)
    print(f"gad diagnose: run {run_id} written to {out}")
    if not result.rows:
        # Every node was skipped: the run is kept (its run.json says why), and this raises the report's one-line
        # "zero node rows" error with the skip counts.
        summarize_run(out)
    print(table)
    print(f"HTML report: {out / 'report.html'}")
    return out
