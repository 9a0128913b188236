"""`gad report RUN_DIR`: rebuild the summary table and the HTML report from saved records."""

from pathlib import Path

from ..outputs.html_report import render_html
from ..outputs.records import read_records
from ..outputs.summary import format_table, summarize_teachers


def write_report(run_dir: str | Path, confidence: float = 0.95) -> Path:
    """Print the per-teacher summary of `run_dir` and write `run_dir/report.html`; returns the report's path."""
    run_dir = Path(run_dir)
    records_dir = run_dir / "records"
    if not records_dir.is_dir():
        # Accept a training run's output_dir too: the callback writes under output_dir/gad/.
        records_dir = run_dir / "gad" / "records"
    rows = read_records(records_dir)
    if not rows:
        raise FileNotFoundError(f"no records under {run_dir} (expected records/step_*.parquet or gad/records/).")
    rollouts = read_records(records_dir.parent / "rollouts")
    summaries = summarize_teachers(rows, confidence)
    print(format_table(summaries, rollouts))
    path = records_dir.parent / "report.html"
    path.write_text(render_html(rows, rollouts, summaries, title=f"gad report — {run_dir.name}"))
    print(f"HTML report: {path}")
    return path
