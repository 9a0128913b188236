"""TensorBoard extras the Trainer's logging path cannot carry: histograms and a custom-scalars layout.

Scalars go through `Trainer.log` (so every `report_to` backend gets them, as `train/gad/...` in TensorBoard); this
writer adds, on the main process only, one histogram of per-node alignment per teacher and a layout with one chart
holding every teacher's line, plus a margin chart (mean with its interval) per teacher.
"""

import math
import re

import torch


def find_tensorboard_writer(trainer):
    """The `SummaryWriter` of the trainer's `TensorBoardCallback`, if `report_to` includes TensorBoard."""
    from transformers.integrations import TensorBoardCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback) and getattr(cb, "tb_writer", None) is not None:
            return cb.tb_writer
    return None


def layout(teachers: list[str]) -> dict:
    """One chart per view with a line per teacher (Multiline takes regexes), and a mean-with-CI chart per teacher."""
    base = {t: f"train/gad/alignment/{t}" for t in teachers}
    exact = {t: re.escape(tag) for t, tag in base.items()}
    per_teacher = {
        f"{t}: mean and {'interval'}": ["Margin", [base[t], f"{base[t]}/ci_low", f"{base[t]}/ci_high"]]
        for t in teachers
    }
    return {
        "gad: gradient alignment": {
            "alignment, parameter space": ["Multiline", [f"^{exact[t]}$" for t in teachers]],
            "alignment, logit space": ["Multiline", [f"^{exact[t]}/logit$" for t in teachers]],
            "incorrect rollouts": ["Multiline", [f"^{exact[t]}/incorrect$" for t in teachers]],
            "correct rollouts": ["Multiline", [f"^{exact[t]}/correct$" for t in teachers]],
            "teacher advantage": ["Multiline", [f"^{re.escape(f'train/gad/advantage/{t}')}$" for t in teachers]],
            **per_teacher,
        }
    }


class AlignmentBoard:
    """Writes the layout once, then histograms (and, without a Trainer TensorBoard, the scalars) at each pause."""

    def __init__(self, writer, teachers: list[str], write_scalars: bool, histograms: bool = True):
        self.writer, self.teachers = writer, teachers
        self.write_scalars, self.histograms = write_scalars, histograms
        self._layout_written = False

    def log(self, step: int, metrics: dict[str, float], rows: list[dict]) -> None:
        if not self._layout_written:
            self.writer.add_custom_scalars(layout(self.teachers))
            self._layout_written = True
        if self.write_scalars:
            for key, value in metrics.items():
                if not math.isnan(value):
                    self.writer.add_scalar(f"train/{key}", value, step)
        if self.histograms:
            for teacher in self.teachers:
                values = [r["param_cos"] for r in rows if r["teacher"] == teacher and not math.isnan(r["param_cos"])]
                if values:
                    self.writer.add_histogram(f"gad/alignment_hist/{teacher}", torch.tensor(values), step)
        self.writer.flush()
