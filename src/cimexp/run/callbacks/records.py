"""Bookkeeping of a run: training time per epoch and cumulative (:class:`EpochTimer`), and the per-epoch history
in ``results.json`` (:class:`ResultsWriter`). Both keep their state in checkpoints, so a resumed run continues
them where the killed run left them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from cimexp.files import atomic_write_json
from cimexp.results import running_record


class EpochTimer(L.Callback):
    """Training wall time per epoch and cumulative over the run (resumed runs included), validation excluded.

    Logs ``time/epoch_s`` and ``time/train_cum_s`` (seconds) at the end of every training epoch; the cumulative
    time is the x axis of the paper's Fig. 9 (accuracy vs training cost). ``train_cum_s`` is up to date when
    validation runs, so per-epoch records taken then include the epoch just trained. A checkpoint taken inside an
    epoch holds the time up to its batch, so a run resumed from it goes on counting from there (the batches
    redone after a kill count once).
    """

    def __init__(self) -> None:
        self.train_cum_s = 0.0
        self.epoch_s = 0.0
        self._running_since: float | None = None

    def _resume(self) -> None:
        self._running_since = time.perf_counter()

    def _pause(self) -> None:
        if self._running_since is not None:
            elapsed = time.perf_counter() - self._running_since
            self.epoch_s += elapsed
            self.train_cum_s += elapsed
            self._running_since = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_s = 0.0
        self._resume()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._running_since is None:  # training goes on after a validation inside the epoch
            self._resume()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause()
        pl_module.log("time/epoch_s", self.epoch_s, on_epoch=True, sync_dist=False)
        pl_module.log("time/train_cum_s", self.train_cum_s, on_epoch=True, sync_dist=False)

    def state_dict(self) -> dict[str, Any]:
        running = time.perf_counter() - self._running_since if self._running_since is not None else 0.0
        return {"train_cum_s": self.train_cum_s + running, "epoch_s": self.epoch_s + running}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_cum_s = float(state_dict["train_cum_s"])
        self.epoch_s = float(state_dict.get("epoch_s", 0.0))  # checkpoints from before mid-epoch saving lack it


class ResultsWriter(L.Callback):
    """Keeps one record per validated epoch and rewrites ``results.json`` atomically after each.

    A record holds ``epoch``, ``step``, ``cum_train_time_s`` (from :class:`EpochTimer`, when present) and the
    epoch's validation metrics (``val/acc``, ``val/acc5``, ``val/loss``, ``val/acc_best``); training metrics per
    epoch are in the logger's files. While training, ``results.json`` has ``"status": "running"`` and the history so
    far (:func:`cimexp.results.running_record`); ``cimexp.train.train`` writes the final version (with this history)
    to the same path. Only global rank 0 writes.

    Args:
        path: the results file, normally ``<run dir>/results.json``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.history: list[dict[str, Any]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before ModelCheckpoint's on_validation_end (Lightning orders checkpoint callbacks last), so the
        # checkpoint saved now includes this record.
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        record: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        timer = next((cb for cb in trainer.callbacks if isinstance(cb, EpochTimer)), None)
        if timer is not None:
            record["cum_train_time_s"] = timer.train_cum_s
        record.update({k: _scalar(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("val/")})
        self.history = [r for r in self.history if r["epoch"] != record["epoch"]] + [record]
        if trainer.is_global_zero:
            atomic_write_json(self.path, running_record(self.history))

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value
