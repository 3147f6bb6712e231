"""The quantization-aware-training schedule of the partial sums: one-stage, or two-stage with the ADC switched on
at a given epoch."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from cimexp.cim import set_psum_quant


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
