"""The Lightning trainer of a composed training config, with its callbacks, loggers and the checkpoint writer."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
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
    job = HydraConfig.get().job if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN else None
    devices = packed_devices(cfg.trainer, None if job is None else job.num, torch.cuda.device_count())
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins, devices=devices)
    return trainer, callbacks, loggers


def packed_devices(trainer: DictConfig, job_num: int | None, gpu_count: int) -> Any:
    """``trainer.devices``, or for job ``job_num`` of a multirun training on one GPU while several are visible, the
    GPU ``job_num mod gpu_count`` (``[index]``): the jobs of a sweep spread over the GPUs round-robin, and a packing
    launcher (``hydra/launcher=gpu_pack``) running several at once puts several on each GPU."""
    devices = trainer.get("devices")
    on_gpu = trainer.get("accelerator") in ("gpu", "cuda")
    if job_num is None or not on_gpu or devices != 1 or gpu_count < 2:
        return devices
    return [job_num % gpu_count]
