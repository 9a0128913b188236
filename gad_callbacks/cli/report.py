"""`gad report RUN_DIR`: rebuild the summary table and the HTML report from saved records."""

import json
from pathlib import Path

from ..outputs.aggregate import aggregate
from ..outputs.html_report import render_html
from ..outputs.records import read_node_records, read_records
from ..outputs.summary import format_table


def _run_settings(run_dir: Path) -> dict:
    """The confidence level and seed `gad diagnose` recorded in `run.json`, so a report repeats its numbers."""
    path = run_dir / "run.json"
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    out = {}
    if "alignment_confidence" in saved.get("alignment", {}):
        out["confidence"] = float(saved["alignment"]["alignment_confidence"])
    if "run_seed" in saved.get("arguments", {}):
        out["seed"] = int(saved["arguments"]["run_seed"])
    return out


def write_report(
    run_dir: str | Path, confidence: float | None = None, seed: int | None = None, num_bootstrap: int = 1000
) -> Path:
    """
    Print the per-teacher summary of `run_dir` and write `report.html` next to its records; returns the report's path.

    Args:
        run_dir (`str` or `Path`):
            A `gad diagnose` output directory, or a training run's `output_dir` (records under `gad/records/`).
        confidence (`float`, *optional*):
            Interval level; the one `gad diagnose` recorded in `run.json`, else 0.95.
        seed (`int`, *optional*):
            Seed of the bootstraps; the run's seed from `run.json`, else 0 (the same records then give the same
            intervals every time).
        num_bootstrap (`int`, *optional*, defaults to `1000`):
            Bootstrap replicates per interval.
    """
    run_dir = Path(run_dir)
    records_dir = run_dir / "records"
    if not records_dir.is_dir():
        # Accept a training run's output_dir too: the callback writes under output_dir/gad/.
        records_dir = run_dir / "gad" / "records"
    records = read_node_records(records_dir)
    if not records:
        raise FileNotFoundError(f"no records under {run_dir} (expected records/step_*.parquet or gad/records/).")
    saved = _run_settings(records_dir.parent)
    confidence = saved.get("confidence", 0.95) if confidence is None else confidence
    seed = saved.get("seed", 0) if seed is None else seed
    rollouts = read_records(records_dir.parent / "rollouts")
    run = aggregate(records, confidence=confidence, seed=seed, num_bootstrap=num_bootstrap)
    print(format_table(run, rollouts))
    path = records_dir.parent / "report.html"
    path.write_text(render_html(records, rollouts, run, title=f"gad report — {run_dir.name}"))
    print(f"HTML report: {path}")
    return path
