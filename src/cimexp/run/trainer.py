"""The Lightning trainer of a composed training config, with its callbacks, loggers and the checkpoint writer."""

from __future__ import annotations

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from cimexp.run.build import instantiate_all
from cimexp.run.callbacks import KeepPreviousCheckpointIO, RunProgressBar


def build_trainer(cfg: DictConfig) -> tuple[L.Trainer, list[L.Callback], list[Logger]]:
    """``(trainer, callbacks, loggers)`` of ``cfg``: the ``callbacks`` node, the QAT ``schedule``, the progress bar
    when the trainer shows one, the ``logger`` node, and the atomic checkpoint writer
    (:class:`~cimexp.run.callbacks.KeepPreviousCheckpointIO`) after the trainer's own plugins."""
    callbacks = [*instantiate_all(cfg.get("callbacks")), instantiate(cfg.schedule)]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(RunProgressBar())
    loggers: list[Logger] = instantiate_all(cfg.get("logger"))
    plugins = [*(instantiate(cfg.trainer.get("plugins")) or []), KeepPreviousCheckpointIO()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)
    return trainer, callbacks, loggers
