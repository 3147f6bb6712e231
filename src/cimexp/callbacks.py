"""Lightning callbacks of a cimexp run: the QAT schedule, training-time bookkeeping, results.json, reseeding,
checkpoints inside epochs and on Ctrl-C / SIGTERM, partial-sum telemetry, variation-aware training and the progress
bar.

The stateful ones keep their state in checkpoints (``state_dict``), so a resumed run continues the schedule, the
cumulative training time and the per-epoch history where the killed run left them; reseeding, telemetry and
variation-aware training draw everything from ``(seed, epoch, batch)`` or ``(seed, global_step)`` and need no state.
A run may be resumed from any training batch's end (:class:`RecoveryCheckpoint`), so nothing here may assume that
``on_train_epoch_start`` ran in the current process.
"""

from __future__ import annotations

import datetime
import math
import random
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint, TQDMProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from cimexp.cim import cim_layers, set_psum_quant, start_telemetry, stop_telemetry
from cimexp.cim.options import VariationLevel
from cimexp.cim.variation import sample_cell_gain
from cimexp.data.batch import epoch_seed
from cimexp.files import atomic_write_json
from cimexp.results import running_record


class QATSchedule(L.Callback):
    """Quantization-aware-training schedule of the partial sums (ADC outputs).

    - ``stage1_epochs=0`` (one-stage QAT): nothing to switch; partial sums are quantized from the first step,
      as the layers were built.
    - ``stage1_epochs=k>0`` (two-stage QAT, Saxena et al.): epochs ``0..k-1`` train with partial-sum quantization
      off; at the start of epoch ``k`` it is switched on and the ADC step sizes are re-initialised from the
      partial sums of the next training batch (``set_psum_quant(model, True, recalibrate=True)``).

    Args:
        stage1_epochs: epochs of stage 1 (no partial-sum quantization); 0 = one-stage QAT.
        psum_quant: whether the run quantizes partial sums at all (``granularity.psum_quant``); if false the
            schedule never switches it on.
    """

    def __init__(self, stage1_epochs: int = 0, psum_quant: bool = True) -> None:
        if stage1_epochs < 0:
            raise ValueError(f"stage1_epochs must be >= 0; got {stage1_epochs}")
        self.stage1_epochs = int(stage1_epochs)
        self.psum_quant = bool(psum_quant)
        self.stage2_started_epoch: int | None = None

    @property
    def two_stage(self) -> bool:
        return self.stage1_epochs > 0 and self.psum_quant

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Runs before the module calibrates its step sizes on a first batch, which stage 1 does without the ADC.
        # (A run resumed inside stage 2 gets partial-sum quantization back in `on_train_start`.)
        if stage == "fit" and self.two_stage:
            set_psum_quant(pl_module, False)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed inside an epoch continues without `on_train_epoch_start`: in stage 2, the ADC goes back on
        # here, with the step sizes from the checkpoint.
        if self.two_stage and self.stage2_started_epoch is not None:
            set_psum_quant(pl_module, True, recalibrate=False)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.two_stage:
            return
        epoch = trainer.current_epoch
        if epoch < self.stage1_epochs:
            set_psum_quant(pl_module, False)
        elif self.stage2_started_epoch is None:
            n_layers = set_psum_quant(pl_module, True, recalibrate=True)
            self.stage2_started_epoch = epoch
            rank_zero_info(
                f"two-stage QAT: stage 2 from epoch {epoch}: partial-sum quantization on in {n_layers} "
                "CIM layers, ADC steps recalibrated on the next batch"
            )
        else:  # resumed inside stage 2: the steps come from the checkpoint
            set_psum_quant(pl_module, True, recalibrate=False)

    def state_dict(self) -> dict[str, Any]:
        return {"stage2_started_epoch": self.stage2_started_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stage2_started_epoch = state_dict["stage2_started_epoch"]


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


class RunStopped(SystemExit):
    """Ends a run that was asked to stop (Ctrl-C, SIGTERM) once :class:`RecoveryCheckpoint` has written its
    checkpoint. A ``SystemExit`` whose code is the shell's status for the signal (128 + its number: 130 for
    Ctrl-C, 143 for SIGTERM), so that a stopped run never looks successful."""


def check_checkpoint_intervals(every_minutes: float | None, every_n_steps: int | None) -> None:
    """Raise ``ValueError`` naming the value unless ``every_minutes`` is a number > 0 and ``every_n_steps`` an
    integer >= 1 (either may be ``None``: off); the keys are those of the ``checkpoint`` node of ``conf/train.yaml``."""
    for key, value, kinds, valid in (
        ("every_minutes", every_minutes, (int, float), "a number > 0"),
        ("every_n_steps", every_n_steps, (int,), "an integer >= 1"),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds) or not value > 0):
            raise ValueError(f"invalid checkpoint.{key}={value!r}; valid values: {valid}, or null (off)")


class RecoveryCheckpoint(Checkpoint):
    """Keeps the resume checkpoint (``checkpoints/last.ckpt``) recent inside long epochs, and writes it when the run
    is asked to stop: a killed run loses little, a stopped one nothing, and both resume at the checkpoint's batch.

    - Every ``every_minutes`` minutes (wall time) and at every multiple of ``every_n_steps`` optimizer steps, at the
      end of a training batch, the full training state goes to ``path``. An epoch's last batch is left out: the
      epoch's own checkpoint follows its validation (``callbacks.model_checkpoint``), while a run resumed from a
      checkpoint of its last batch would skip that validation.
    - While training, Ctrl-C (SIGINT) and SIGTERM (sent by workload managers, and by SLURM to a requeued job) let
      the current batch finish, write ``path`` and end the run with :class:`RunStopped`. A second Ctrl-C stops at
      once, without a checkpoint. Under DDP all ranks stop after the same batch (any rank's signal counts).

    ``cimexp.train`` resumes an unfinished run from ``last.ckpt``; Lightning continues with the next batch, the
    data loader skips the batches already trained on (:class:`~cimexp.data.ResumableDataLoader`, which this
    callback hands its position from the checkpoint), and the random numbers follow the batch
    (:class:`ReseedEachBatch`), so the resumed run ends as the uninterrupted one would.
    Nothing is written under ``fast_dev_run``. A subclass of Lightning's ``Checkpoint``, so that Lightning runs it
    after the other callbacks' batch-end hooks.

    Args:
        path: the checkpoint file, normally ``<run dir>/checkpoints/last.ckpt``.
        every_minutes: minutes between checkpoints inside an epoch; ``None``: no time-based ones.
        every_n_steps: write at global steps that are multiples of this; ``None``: no step-based ones.
    """

    def __init__(self, path: str | Path, every_minutes: float | None = 10.0, every_n_steps: int | None = None) -> None:
        check_checkpoint_intervals(every_minutes, every_n_steps)
        self.path = Path(path)
        self.every_minutes = every_minutes
        self.every_n_steps = every_n_steps
        self.saved_step: int | None = None
        """Global step of the last checkpoint this callback wrote in this process (``None``: none yet)."""
        self._saved_at = 0.0
        self._stop_signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._loader_states: list[dict[str, Any]] = []

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
        self._loader_states = list(fit_loop.get("state_dict", {}).get("combined_loader", []))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._resume_loaders(trainer)
        self._saved_at = time.monotonic()
        if not trainer.fast_dev_run:
            self._catch_stop_signals()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.fast_dev_run:
            return
        asked = self._stop_signal is not None or trainer.received_sigterm  # Lightning's: a SIGTERM before training
        if trainer.strategy.reduce_boolean_decision(asked, all=False):
            self._save(trainer)
            self._release_stop_signals()
            raise RunStopped(128 + (self._stop_signal or signal.SIGTERM))
        inside_epoch = batch_idx + 1 < trainer.num_training_batches
        if inside_epoch and trainer.strategy.reduce_boolean_decision(self._due(trainer), all=False):
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._release_stop_signals()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._release_stop_signals()

    def _resume_loaders(self, trainer: L.Trainer) -> None:
        """Hand the training loaders their position from the checkpoint (``ResumableDataLoader.load_state_dict``).

        Lightning does so itself only when it sets the training loader up after loading the checkpoint; a scheduler
        sized by ``trainer.estimated_stepping_batches`` (cosine with ``T_max=null``) sets it up before, and the
        position would be lost. The loaders start their pass at the first batch, after this hook.
        """
        if not self._loader_states:
            return
        loaders = trainer.train_dataloader
        loaders = list(loaders.values()) if isinstance(loaders, dict) else loaders
        loaders = [loader for loader in _as_list(loaders) if callable(getattr(loader, "load_state_dict", None))]
        if len(loaders) != len(self._loader_states):
            raise RuntimeError(
                f"the checkpoint holds the positions of {len(self._loader_states)} training loaders, but this run "
                f"has {len(loaders)} resumable ones: resume with the data settings the checkpoint was written with"
            )
        for loader, state in zip(loaders, self._loader_states, strict=True):
            loader.load_state_dict(state)
        self._loader_states = []

    def _due(self, trainer: L.Trainer) -> bool:
        step = trainer.global_step
        if self.every_n_steps is not None and step % self.every_n_steps == 0 and step != self.saved_step:
            return True
        return self.every_minutes is not None and time.monotonic() - self._saved_at >= 60 * self.every_minutes

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the full training state (and no "not set" notice)
        self.saved_step = trainer.global_step
        self._saved_at = time.monotonic()

    def _catch_stop_signals(self) -> None:
        """Handle SIGINT and SIGTERM here while training (replacing Lightning's handlers, which restores them at
        the end of ``fit``). Only the main thread may set handlers; elsewhere Lightning's handling stays."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[signum] = signal.signal(signum, self._on_stop_signal)

    def _release_stop_signals(self) -> None:
        for signum, handler in self._previous_handlers.items():
            if handler is not None:  # None: a handler set outside Python, which cannot be put back
                signal.signal(signum, handler)
        self._previous_handlers = {}

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self._stop_signal == signal.SIGINT:
            raise KeyboardInterrupt
        self._stop_signal = signum
        rank_zero_info(
            f"{signal.Signals(signum).name}: stopping after this batch, once {self.path} is written"
            + (" (Ctrl-C again: stop now, without it)" if signum == signal.SIGINT else "")
        )


class ReseedEachBatch(L.Callback):
    """Reseed python's, numpy's and torch's global RNGs from ``(seed, epoch, rank, batch)`` before every training
    batch.

    Randomness drawn from the global RNGs while training (dropout, ADC noise injection, global-RNG transforms) and
    in the validation that follows then depends on the batch's place in the run only, not on everything that ran
    before it, so a run resumed from any checkpoint, inside an epoch too, draws the same numbers as the
    uninterrupted run, on every rank, without RNG state in the checkpoint. The data order and augmentation are the
    data module's (:class:`~cimexp.data.EpochSampler`, :class:`~cimexp.data.ResumableDataLoader`). A no-op when
    ``seed`` is ``None``.
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if self.seed is None:
            return
        seed = epoch_seed(self.seed, trainer.current_epoch, trainer.global_rank, idx)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


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


def _as_list(items: Any) -> list[Any]:
    return list(items) if isinstance(items, list | tuple) else [items]


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


class VariationAwareTraining(L.Callback):
    """Train under log-normal variation (the model of :func:`cimexp.cim.cell_variation`): before every training
    step each CIM layer gets a fresh chip instance, ``exp(theta)``, ``theta ~ N(0, sigma^2)`` per weight (``level``
    ``"weight"``, eq. 5) or per cell (``"cell"``), drawn from a generator seeded with ``(seed, global_step)`` (so a
    resumed run draws the same chips); after the step the gains are removed, so validation and checkpoints see the
    nominal chip. A no-op for ``sigma=0``."""

    def __init__(self, sigma: float = 0.0, seed: int | None = 0, level: str = "weight") -> None:
        if not sigma >= 0:
            raise ValueError(f"invalid variation.train_sigma={sigma!r}; valid values: a float >= 0")
        self.sigma = float(sigma)
        self.seed = 0 if seed is None else int(seed)
        self.level = VariationLevel.parse(level, "variation.level")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if self.sigma == 0:
            return
        entropy = [self.seed % 2**32, trainer.global_step]
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))
        for _, layer in cim_layers(pl_module):
            layer.cell_gain = sample_cell_gain(layer, self.sigma, generator, self.level)
            layer.variation_level = self.level

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.sigma == 0:
            return
        for _, layer in cim_layers(pl_module):
            layer.cell_gain, layer.variation_level = None, None


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


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
