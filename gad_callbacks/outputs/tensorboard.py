"""TensorBoard extras the Trainer's logging path cannot carry: histograms and a custom-scalars layout.

Scalars go through `Trainer.log` (so every `report_to` backend gets them, as `train/gad/...` in TensorBoard); this
writer adds, on the main process only, one histogram of per-node alignment per teacher and a layout with one chart
per view holding every teacher's line (pooled alignment first), plus margin charts (estimate with its interval) of
the mean and of the pooled alignment per teacher.
"""

import math
import re

import torch

from .records import to_node_records


def find_tensorboard_writer(trainer):
    """The `SummaryWriter` of the trainer's `TensorBoardCallback`, if `report_to` includes TensorBoard."""
    from transformers.integrations import TensorBoardCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback) and getattr(cb, "tb_writer", None) is not None:
            return cb.tb_writer
    return None


def layout(teachers: list[str]) -> dict:
    """
    One chart per view with a line per teacher (Multiline takes regexes), and per teacher a margin chart (estimate
    with its interval) of the mean of node cosines and one of the pooled alignment.
    """
    base = {t: f"train/gad/alignment/{t}" for t in teachers}
    pooled = {t: f"train/gad/pooled/{t}" for t in teachers}
    exact = {t: re.escape(tag) for t, tag in base.items()}
    exact_pooled = {t: re.escape(tag) for t, tag in pooled.items()}
    margins = {}
    for t in teachers:
        margins[f"{t}: mean and interval"] = ["Margin", [base[t], f"{base[t]}/ci_low", f"{base[t]}/ci_high"]]
        margins[f"{t}: pooled and interval"] = ["Margin", [pooled[t], f"{pooled[t]}/ci_low", f"{pooled[t]}/ci_high"]]
    return {
        "gad: gradient alignment": {
            "pooled alignment": ["Multiline", [f"^{exact_pooled[t]}$" for t in teachers]],
            "pooled alignment, logit space": ["Multiline", [f"^{exact_pooled[t]}/logit$" for t in teachers]],
            "alignment, parameter space": ["Multiline", [f"^{exact[t]}$" for t in teachers]],
            "alignment, logit space": ["Multiline", [f"^{exact[t]}/logit$" for t in teachers]],
            "incorrect rollouts": ["Multiline", [f"^{exact[t]}/incorrect$" for t in teachers]],
            "correct rollouts": ["Multiline", [f"^{exact[t]}/correct$" for t in teachers]],
            "teacher advantage": ["Multiline", [f"^{re.escape(f'train/gad/advantage/{t}')}$" for t in teachers]],
            **margins,
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
            records = to_node_records(rows)
            for teacher in self.teachers:
                values = [r.param_cos for r in records if r.teacher == teacher and not math.isnan(r.param_cos)]
                if values:
                    self.writer.add_histogram(f"gad/alignment_hist/{teacher}", torch.tensor(values), step)
        self.writer.flush()
