"""`gad compare RUN_DIR [--run ID] [--confidence LEVEL]`: which teacher aligns best with the ideal gradient, and how
sure the run's records make us.

Prints the ranking of teachers and contexts by pooled alignment with P(best), every pair's difference on the same nodes
with its verdict (resolved, or no significant difference, with about how many more diagnosed rollouts would resolve
it), the same by rollout outcome, position and question difficulty, and the answer in words (see
[`~outputs.compare.compare`]). Reads the saved records only: nothing is computed on a model, nothing is written.
"""

from pathlib import Path

from ..outputs.compare import Comparison, compare
from ..outputs.compare_table import format_comparison
from ..outputs.runs import resolve_run
from .report import parse_run_arguments, read_run, run_parser


def compare_run(
    run_dir: str | Path,
    confidence: float | None = None,
    seed: int | None = None,
    num_bootstrap: int = 1000,
    run: str | None = None,
) -> Comparison:
    """
    Print which run is read and its teacher comparison; returns the comparison.

    Args:
        run_dir (`str` or `Path`):
            A run directory, or a directory holding runs (see [`~outputs.runs.find_runs`]).
        confidence (`float`, *optional*):
            Interval level; the one the run recorded in `run.json`, else 0.95.
        seed (`int`, *optional*):
            Seed of the bootstraps; the run's seed from `run.json`, else 0 (`gad report` and `gad diagnose` print the
            same comparison).
        num_bootstrap (`int`, *optional*, defaults to `1000`):
            Bootstrap replicates per interval.
        run (`str`, *optional*):
            Which run, by id, when `run_dir` holds several; the latest when omitted.
    """
    chosen, message = resolve_run(run_dir, run)
    print(f"gad compare: {message}")
    records, settings = read_run(chosen, confidence, seed)
    comparison = compare(records, **settings, num_bootstrap=num_bootstrap)
    print(format_comparison(comparison))
    return comparison


def compare_command(argv: list[str]) -> int:
    """`gad compare` on its arguments; `--help` raises `SystemExit(0)`, errors raise."""
    parser = run_parser(
        "gad compare",
        "Rank the teachers of one run by pooled alignment and say which differences its records resolve.",
    )
    args = parse_run_arguments(parser, argv)
    compare_run(args.run_dir, confidence=args.confidence, run=args.run)
    return 0
