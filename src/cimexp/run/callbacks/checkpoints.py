"""The recovery checkpoint: ``checkpoints/last.ckpt`` kept recent inside long epochs and written when a run is
asked to stop (Ctrl-C, SIGTERM), so a killed run loses little and a stopped one nothing."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_info

from cimexp.files import save_checkpoint
from cimexp.run.config import check_checkpoint_intervals


class KeepPreviousCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer through :func:`cimexp.files.save_checkpoint`: atomic, keeping the previous
    resume checkpoint as ``last.ckpt.prev``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        save_checkpoint(checkpoint, path)


class RunStopped(SystemExit):
    """Ends a run that was asked to stop (Ctrl-C, SIGTERM) once :class:`RecoveryCheckpoint` has written its
    checkpoint. A ``SystemExit`` whose code is the shell's status for the signal (128 + its number: 130 for
    Ctrl-C, 143 for SIGTERM), so that a stopped run never looks successful."""


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


def _as_list(items: Any) -> list[Any]:
    return list(items) if isinstance(items, list | tuple) else [items]
