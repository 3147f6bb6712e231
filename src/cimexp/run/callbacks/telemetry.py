"""Partial-sum telemetry of every CIM layer while training and validating: clip rate, code utilisation and
ADC-input histograms, to the loggers and to ``results.json``."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from cimexp.cim import start_telemetry, stop_telemetry


class PsumTelemetry(L.Callback):
    """Partial-sum telemetry of every CIM layer (:class:`cimexp.cim.adc.PsumStats`): clip rate, code utilisation
    and the histogram of ADC inputs in LSB units of the learned step.

    - Every ``every_n_steps`` optimizer steps the training batch of that step is recorded and logged to every
      logger as ``telemetry/<layer>/{clip_rate,code_utilization}`` plus their means over the layers
      ``telemetry/{clip_rate,code_utilization}``.
    - With ``validation``, the first ``val_batches`` batches of each validation epoch are recorded (all of them
      for ``val_batches=None``) and logged the same way under ``val_telemetry/``; W&B also gets every layer's
      histogram. The last epoch's per-layer summary is kept in :attr:`last` (with per-column clip rates when
      ``per_column``) and goes into results.json.

    Recording a batch costs about 0.6x its forward pass; off (``every_n_steps=0``, ``validation=False``) it costs
    nothing, as layers skip the statistics when no recorder is attached.
    """

    def __init__(
        self, every_n_steps: int = 100, validation: bool = True, val_batches: int | None = 4, per_column: bool = False
    ) -> None:
        if every_n_steps < 0:
            raise ValueError(f"invalid telemetry.every_n_steps={every_n_steps}; valid values: 0 (off) or >= 1")
        if val_batches is not None and val_batches < 1:
            raise ValueError(f"invalid telemetry.val_batches={val_batches}; valid values: >= 1 or null (all)")
        self.every_n_steps = every_n_steps
        self.validation = validation
        self.val_batches = val_batches
        self.per_column = per_column
        self.last: dict[str, dict[str, Any]] = {}
        self._recording = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._recording = start_telemetry(_net(pl_module), self.per_column) > 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._recording:
            self._recording = False
            self._log(trainer, "telemetry", stop_telemetry(_net(pl_module)))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.validation and not trainer.sanity_checking:
            self._recording = start_telemetry(_net(pl_module), self.per_column) > 0

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int, *args: Any
    ) -> None:
        if self._recording and self.val_batches is not None and idx + 1 >= self.val_batches:
            self._finish_validation(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._recording:
            self._finish_validation(trainer, pl_module)

    def _finish_validation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._recording = False
        stats = stop_telemetry(_net(pl_module))
        if stats:
            self.last = {name: _listed(s.summary()) for name, s in stats.items()}
        self._log(trainer, "val_telemetry", stats)
        _log_histograms(trainer, stats)

    @staticmethod
    def _log(trainer: L.Trainer, prefix: str, stats: dict[str, Any]) -> None:
        if not stats:
            return
        summaries = {name: s.summary() for name, s in stats.items()}
        metrics = {}
        for key in ("clip_rate", "code_utilization"):
            values = {name: summary[key] for name, summary in summaries.items()}
            metrics.update({f"{prefix}/{name}/{key}": v for name, v in values.items()})
            metrics[f"{prefix}/{key}"] = sum(values.values()) / len(values)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


def _net(pl_module: L.LightningModule) -> torch.nn.Module:
    """The network inside the LightningModule (``ImageClassifier.model``), so layer names read as in the model."""
    return getattr(pl_module, "model", pl_module)


def _log_histograms(trainer: L.Trainer, stats: dict[str, Any]) -> None:
    """Every layer's ADC-input histogram to the W&B loggers (other loggers take scalars only)."""
    from lightning.pytorch.loggers import WandbLogger

    wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
    if not wandb_loggers or not stats:
        return
    import wandb

    histograms = {
        f"val_telemetry/{name}/psum_lsb": wandb.Histogram(
            np_histogram=(s.histogram.numpy(), s.histogram_edges().numpy())
        )
        for name, s in stats.items()
    }
    for logger in wandb_loggers:
        logger.experiment.log({**histograms, "trainer/global_step": trainer.global_step})


def _listed(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in summary.items()}
