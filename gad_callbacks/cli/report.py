"""`gad report RUN_DIR [--run ID] [--confidence LEVEL]`: rebuild the summary table, the teacher comparison and the
HTML report of one run from its saved records."""

from pathlib import Path

from ..diagnosis.results import NodeRecord
from ..outputs.aggregate import aggregate
from ..outputs.compare import compare
from ..outputs.compare_table import format_comparison
from ..outputs.files import atomic_write_text
from ..outputs.html_report import render_html
from ..outputs.records import read_record_files, read_records, to_node_records
from ..outputs.runs import read_run_info, resolve_run, run_id_of
from ..outputs.summary import format_table
from .parsing import OneLineArgumentParser


def run_settings(info: dict) -> dict:
    """
    The confidence level and bootstrap seed a run recorded in its `run.json` (`alignment.alignment_confidence`;
    `arguments.run_seed` of `gad diagnose`, else `alignment.alignment_seed` of a training run), so that a report
    repeats the run's numbers.
    """
    alignment, arguments = info.get("alignment") or {}, info.get("arguments") or {}
    out = {}
    if alignment.get("alignment_confidence") is not None:
        out["confidence"] = float(alignment["alignment_confidence"])
    seed = arguments.get("run_seed", alignment.get("alignment_seed"))
    if seed is not None:
        out["seed"] = int(seed)
    return out


def skipped_summary(info: dict) -> str:
    """The skip counts a run recorded in `run.json` (`skipped`), e.g. `verifier_error=12, empty_rollout=3`."""
    skipped = info.get("skipped")
    if not skipped:
        return "none recorded"
    if isinstance(skipped, dict):
        return ", ".join(f"{reason}={count}" for reason, count in skipped.items())
    return str(skipped)


def read_run(
    run_dir: str | Path, confidence: float | None = None, seed: int | None = None
) -> tuple[list[NodeRecord], dict]:
    """
    The node records of the run in `run_dir`, and the settings to aggregate them with: `confidence` and `seed` as
    given, else the run's (`run.json`, see [`run_settings`]), else 0.95 and 0.

    Raises:
        `FileNotFoundError`: the run has no record files.
        `ValueError`: it has record files but no node rows in them (every node was skipped, or every file is
            unreadable); the message gives the skip counts of `run.json`.
    """
    run_dir = Path(run_dir)
    info, run_id = read_run_info(run_dir), run_id_of(run_dir)
    found = read_record_files(run_dir / "records")
    if not found.files:
        raise FileNotFoundError(
            f"no records under {run_dir}: run {run_id} has no records/step_* files; skipped: {skipped_summary(info)}"
        )
    if not found.rows:
        unreadable = (
            f" ({len(found.unreadable)} unreadable: {', '.join(found.unreadable)})" if found.unreadable else ""
        )
        raise ValueError(
            f"run {run_id}: {len(found.files)} record file(s) but zero node rows{unreadable}; "
            f"skipped: {skipped_summary(info)}"
        )
    saved = run_settings(info)
    settings = {
        "confidence": saved.get("confidence", 0.95) if confidence is None else confidence,
        "seed": saved.get("seed", 0) if seed is None else seed,
    }
    return to_node_records(found.rows), settings


def summarize_run(
    run_dir: str | Path, confidence: float | None = None, seed: int | None = None, num_bootstrap: int = 1000
) -> tuple[str, str]:
    """
    The terminal table (the per-teacher summary, then the teacher comparison) and the `report.html` page of the run
    in `run_dir` (see [`write_report`] for the arguments; raises as [`read_run`]).
    """
    run_dir = Path(run_dir)
    records, settings = read_run(run_dir, confidence, seed)
    # The rollouts of a step whose record file was unreadable are left out with it: the totals stay consistent.
    steps = {r.step for r in records}
    rollouts = [r for r in read_records(run_dir / "rollouts") if r.get("step") in steps]
    run = aggregate(records, **settings, num_bootstrap=num_bootstrap)
    comparison = compare(records, **settings, num_bootstrap=num_bootstrap)
    table = format_table(run, rollouts) + "\n\n" + format_comparison(comparison)
    title = f"gad report — {run_id_of(run_dir)}"
    return table, render_html(records, rollouts, run, title=title, comparison=comparison)


def write_report(
    run_dir: str | Path,
    confidence: float | None = None,
    seed: int | None = None,
    num_bootstrap: int = 1000,
    run: str | None = None,
) -> Path:
    """
    Print which run is read, its per-teacher summary and its teacher comparison, and write `report.html` (atomically)
    in the run's directory; returns the report's path.

    Args:
        run_dir (`str` or `Path`):
            A run directory, or a directory holding runs: a `gad diagnose` output directory, a training run's
            `output_dir` (runs under `gad/<run_id>/`, or `gad/records/` from older versions). See
            [`~outputs.runs.find_runs`].
        confidence (`float`, *optional*):
            Interval level; the one the run recorded in `run.json`, else 0.95.
        seed (`int`, *optional*):
            Seed of the bootstraps; the run's seed from `run.json`, else 0 (the same records then give the same
            intervals every time).
        num_bootstrap (`int`, *optional*, defaults to `1000`):
            Bootstrap replicates per interval.
        run (`str`, *optional*):
            Which run, by id, when `run_dir` holds several; the latest when omitted.
    """
    chosen, message = resolve_run(run_dir, run)
    print(f"gad report: {message}")
    table, page = summarize_run(chosen, confidence=confidence, seed=seed, num_bootstrap=num_bootstrap)
    path = atomic_write_text(chosen / "report.html", page)  # before printing: a closed stdout must not lose it
    print(table)
    print(f"HTML report: {path}")
    return path


def run_parser(prog: str, description: str) -> OneLineArgumentParser:
    """The arguments of a command that reads one saved run: `RUN_DIR [--run ID] [--confidence LEVEL]`."""
    parser = OneLineArgumentParser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="A run directory, a `gad diagnose` output_dir, or a training output_dir (runs under gad/).",
    )
    parser.add_argument("--run", metavar="ID", help="Run id to read when RUN_DIR holds several (default: the latest).")
    parser.add_argument(
        "--confidence", metavar="LEVEL", type=float, help="Interval level in (0, 1) (default: the run's, else 0.95)."
    )
    return parser


def parse_run_arguments(parser: OneLineArgumentParser, argv: list[str]):
    """`parser`'s arguments (see [`run_parser`]), with `--confidence` checked; `--help` raises `SystemExit(0)`."""
    args = parser.parse_args(argv)
    if args.confidence is not None and not 0 < args.confidence < 1:
        raise ValueError(f"--confidence must be in (0, 1), got {args.confidence:g}.")
    return args


def report_parser() -> OneLineArgumentParser:
    return run_parser(
        "gad report",
        "Rebuild the per-teacher summary, the teacher comparison and report.html of one run from its saved records.",
    )


def report_command(argv: list[str]) -> int:
    """`gad report` on its arguments; `--help` raises `SystemExit(0)`, errors raise."""
    args = parse_run_arguments(report_parser(), argv)
    write_report(args.run_dir, confidence=args.confidence, run=args.run)
    return 0
