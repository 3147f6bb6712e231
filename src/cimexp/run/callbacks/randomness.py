"""Randomness drawn from the run's place only: global RNGs reseeded from ``(seed, epoch, rank, batch)`` before
every batch, and fresh log-normal chip instances every step for variation-aware training, drawn from
``(seed, global_step)``; so a run resumed from any checkpoint draws the numbers of the uninterrupted run."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch

from cimexp.cim import cim_layers
from cimexp.cim.options import VariationLevel
from cimexp.cim.variation import sample_cell_gain
from cimexp.data.batch import epoch_seed


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
