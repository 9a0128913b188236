"""Where a training run's diagnostics go, and the rule that writing them never stops training.

Each `trainer.train()` is one run with its own id: records, rollouts, `run.json` (and TensorBoard events, when the
trainer writes none) go under `output_dir/<alignment_output_subdir>/<run_id>/`. Two runs sharing an `output_dir`,
one after the other or at once, therefore never mix or overwrite each other's records, and `gad report` reads one
run. A resumed run keeps its id (it is part of the callback's checkpoint state) and first drops the steps after the
checkpoint, which the resumed process redoes: each step is on disk once. Files are written atomically (a temporary
name, then a rename), so a kill or a full disk leaves the previous step files whole.

A failure to write (full disk, permissions, a TensorBoard writer that raises) is counted and warned; training goes
on. Only the main process writes files.
"""

import logging
import math
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..outputs.records import drop_steps_after, write_records
from ..outputs.runs import write_run_info
from ..outputs.tensorboard import AlignmentBoard


logger = logging.getLogger(__name__)


class RunOutputs:
    """
    The files of one training run (main process only). Every method returns instead of raising: failures are
    counted in `failures` and warned with what was not written.

    Args:
        run_dir (`Path`): `output_dir/<subdir>/<run_id>`.
        teachers (`list[str]`): Teacher names, in logging order.
        write_records (`bool`): Write per-node and per-rollout records.
        histograms (`bool`): Per-teacher alignment histograms in TensorBoard.
        confidence (`float`): Interval level, printed with the console line.
    """

    def __init__(self, run_dir: Path, teachers: list[str], write_records: bool, histograms: bool, confidence: float):
        self.run_dir, self.teachers = Path(run_dir), teachers
        self.write_records, self.histograms, self.confidence = write_records, histograms, confidence
        self.failures = 0
        self._board = None
        self._resumed_at = None

    def _failed(self, what: str, step: int, err: Exception) -> None:
        self.failures += 1
        logger.warning(
            "gad: could not write %s at step %d (%s: %s): counted in gad/output_errors, training continues.",
            what,
            step,
            type(err).__name__,
            err,
        )

    def start(self, info: dict, resumed_at: int | None) -> None:
        """Create the run directory and its `run.json`; when resuming, drop the steps the resumed run redoes."""
        self._resumed_at = resumed_at
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if resumed_at is not None:
                for sub in ("records", "rollouts"):
                    if (self.run_dir / sub).is_dir():
                        drop_steps_after(self.run_dir / sub, resumed_at)
            write_run_info(self.run_dir, info)
        except Exception as err:
            self._failed("the run directory and run.json", resumed_at or 0, err)

    def update_info(self, info: dict, step: int) -> None:
        try:
            write_run_info(self.run_dir, info)
        except Exception as err:
            self._failed("run.json", step, err)

    def pause(self, step: int, metrics: dict[str, float], result, trainer_writer) -> None:
        """Records, TensorBoard extras and the console line of one pause."""
        if result.rows and self.write_records:
            try:
                write_records(result.rows, self.run_dir / "records", step)
                write_records(result.rollouts, self.run_dir / "rollouts", step)
            except Exception as err:
                self._failed("the records", step, err)
        try:
            if self._board is None:
                own = trainer_writer is None
                writer = trainer_writer
                if own:
                    from torch.utils.tensorboard import SummaryWriter

                    # Resuming: TensorBoard drops the events the resumed run redoes (those after the checkpoint).
                    purge = None if self._resumed_at is None else self._resumed_at + 1
                    writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)
                self._board = AlignmentBoard(writer, self.teachers, write_scalars=own, histograms=self.histograms)
            self._board.log(step, metrics, result.rows)
        except Exception as err:
            self._failed("TensorBoard", step, err)
        try:
            tqdm.write(console_line(step, metrics, self.teachers, self.confidence))
        except Exception as err:  # a closed or broken stdout
            self._failed("the console line", step, err)

    def close(self) -> None:
        # The Trainer's TensorBoard callback closes its own writer; ours is closed here.
        if self._board is not None and self._board.write_scalars:
            try:
                self._board.writer.close()
            except Exception as err:
                self._failed("TensorBoard (closing)", -1, err)
        self._board = None


def console_line(step: int, metrics: dict[str, float], teachers: list[str], confidence: float) -> str:
    """One line per pause: pooled alignment first (noise-debiased, the number to compare teachers by), then the
    mean of node cosines (biased toward 0 by rollout noise), each with its interval and count."""

    def estimate(key: str, what: str) -> str:
        if key not in metrics or math.isnan(metrics[key]):
            return f"{what} undefined"
        low, high = metrics.get(f"{key}/ci_low"), metrics.get(f"{key}/ci_high")
        interval = " [no interval]" if low is None or high is None else f" [{low:+.3f}, {high:+.3f}]"
        return f"{what} {metrics[key]:+.3f}{interval} n={int(metrics.get(key + '/nodes', 0))}"

    parts = [
        f"{t}: {estimate(f'gad/pooled/{t}', 'pooled')}, {estimate(f'gad/alignment/{t}', 'mean')}" for t in teachers
    ]
    return (
        f"gad step {step}: {int(metrics.get('gad/nodes', 0))} nodes, {int(metrics.get('gad/rollouts', 0))} rollouts, "
        f"{int(metrics.get('gad/rollouts_spent', 0))} targeted continuations, {metrics.get('gad/seconds', 0.0):.1f}s "
        f"| {confidence * 100:g}% intervals | " + " | ".join(parts)
    )


def run_info(callback, args, state, status: str) -> dict:
    """What `run.json` says about a training run: which trainer, which teachers, settings, counters, status."""
    from dataclasses import asdict

    return {
        "kind": "training",
        "status": status,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "trainer": type(callback.trainer).__name__,
        "output_dir": str(args.output_dir),
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "teachers": [t.name for t in callback.teachers],
        "alignment": asdict(callback.config),
        "pauses": callback.pauses,
        "nodes_total": callback.nodes_total,
        "errors": callback.errors,
        "output_errors": callback.output_errors,
        "skipped": dict(callback.skipped),
    }
