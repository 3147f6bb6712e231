"""The progress bar with the whole run in view (epoch k/N and the time left to the run's end)."""

from __future__ import annotations

import datetime
import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class RunProgressBar(TQDMProgressBar):
    """Lightning's progress bar with the whole run in view: the epoch bar reads ``Epoch 3/40`` and, next to the
    epoch's own ETA, carries ``run_eta``: the time left until ``max_epochs`` (or ``max_steps``) at the pace of the
    steps done so far in this process, validation included. Replaces Lightning's default bar when the trainer
    shows one (``trainer.enable_progress_bar``)."""

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._started: tuple[float, int] | None = None
        self._bar_epoch: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._started = (time.monotonic(), trainer.global_step)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._bar_epoch = trainer.current_epoch
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        # A run resumed inside an epoch continues without `on_train_epoch_start` (Lightning skips it), which would
        # leave the bar as "Training: 35/?": set it up here, counting from the batch the run resumes at.
        if self._bar_epoch != trainer.current_epoch and self.train_progress_bar is not None:
            self.on_train_epoch_start(trainer, pl_module)
            self.train_progress_bar.initial = idx
            self.train_progress_bar.n = idx
            self.train_progress_bar.refresh()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int | str | float | dict]:
        items = super().get_metrics(trainer, pl_module)
        eta = run_eta(self._started, trainer.global_step, trainer.estimated_stepping_batches, time.monotonic())
        if eta is not None:
            items["run_eta"] = eta
        return items


def run_eta(started: tuple[float, int] | None, step: int, total_steps: float, now: float) -> str | None:
    """``H:MM:SS`` left to ``total_steps`` at the pace since ``started = (time, step)``; ``None`` before the first
    step or when the total is unknown."""
    if started is None or step <= started[1] or not math.isfinite(total_steps):
        return None
    seconds = (total_steps - step) * (now - started[0]) / (step - started[1])
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))
