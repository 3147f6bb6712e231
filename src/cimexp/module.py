"""The LightningModule: image classification with cross-entropy, SGD + cosine, top-1/top-5 accuracy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from cimexp.cim import calibrate, cim_layers, telemetry_active

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes of ``model.compile_mode``; ``reduce-overhead`` replays CUDA graphs (GPU)."""

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class ImageClassifier(L.LightningModule):
    """Trains ``model`` (a float or CIM network) on ``(images [B, C, H, W], labels [B])`` batches.

    Logs ``train/loss``, ``train/acc``, ``lr``, ``val/loss``, ``val/acc``, ``val/acc5`` and ``val/acc_best``
    (accuracies are fractions in [0, 1]). ``val/acc_best`` is saved in checkpoints, so it survives resuming; the
    checkpoint's ``state_dict`` holds only the network (``model.*``).

    Before the first training step of a fresh run, the step sizes of the CIM layers are initialised from one
    training batch (``cimexp.cim.calibrate``), so they never see the validation (= test) split and are set
    before DDP wraps the model (the layer averages them over ranks). That happens in ``setup``, before Lightning
    moves the model to its device, so the batch goes where the model's parameters are (``self.device`` already
    names the target device there).

    Args:
        model: the network, ``[B, C, H, W] -> [B, num_classes]`` logits. Held as ``self.model``, so checkpoint
            keys are ``model.<name>`` (what ``cimexp.models.load_float_weights`` reads).
        optimizer: factory ``optimizer(params) -> Optimizer``, e.g. ``functools.partial(torch.optim.SGD, lr=0.1)``.
            Step sizes (``*_step``), BatchNorm parameters and biases get ``weight_decay=0``.
        scheduler: factory ``scheduler(optimizer, T_max=...) -> LRScheduler``, stepped every optimizer step;
            a ``T_max`` of ``None`` (or none given) becomes the run's total number of optimizer steps.
        num_classes: classes, for the accuracy metrics (top-5 becomes top-``num_classes`` below 5 classes).
        config: the resolved run config, stored in the checkpoint's ``hyper_parameters`` (not logged from here).
        compile_mode: ``torch.compile`` the network with this mode (:data:`COMPILE_MODES`) once its step sizes are
            calibrated (``configure_model``, after ``setup``); ``None``: run it eagerly. Compilation happens on the
            first training and the first validation step; the state_dict keys do not change.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        num_classes: int = 10,
        config: dict[str, Any] | None = None,
        compile_mode: str | None = None,
    ) -> None:
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise ValueError(f"invalid compile_mode={compile_mode!r}; valid choices: {', '.join(COMPILE_MODES)}")
        super().__init__()
        self.save_hyperparameters({"config": config}, logger=False)
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.train_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
        self.val_acc_best = 0.0
        self.compile_mode = compile_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compile_mode is not None and telemetry_active(self.model):
            # Telemetry counts on the host in every layer (graph breaks): recorded batches skip the compiled graph.
            return self.model.forward(x)
        return self.model(x)

    def setup(self, stage: str) -> None:
        if stage != "fit" or self.trainer.ckpt_path is not None or not any(True for _ in cim_layers(self.model)):
            return
        datamodule = self.trainer.datamodule
        if datamodule is None:
            return
        images, _ = next(iter(datamodule.train_dataloader()))
        model_device = next(self.model.parameters()).device
        calibrate(self.model, images.to(model_device), weights=True)

    def configure_model(self) -> None:
        # After setup's calibration, so that compiled graphs never contain the step initialisation branches.
        if self.compile_mode is not None and getattr(self.model, "_compiled_call_impl", None) is None:
            self.model.compile(mode=None if self.compile_mode == "default" else self.compile_mode)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.train_acc(logits, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.val_acc(logits, labels)
        self.val_acc5(logits, labels)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)
        self.log("val/acc5", self.val_acc5, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.val_acc_best = max(self.val_acc_best, self.val_acc.compute().item())
        self.log("val/acc_best", self.val_acc_best, prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["val_acc_best"] = self.val_acc_best

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_acc_best = float(checkpoint.get("val_acc_best", 0.0))

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = weight_decay_split(self.model)
        optimizer = self.optimizer_factory(
            [{"params": list(decay.values())}, {"params": list(no_decay.values()), "weight_decay": 0.0}]
        )
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        keywords = getattr(self.scheduler_factory, "keywords", {})
        t_max = keywords.get("T_max") or int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, T_max=t_max)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def weight_decay_split(model: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """Trainable parameters by name: ``(with weight decay, without)``.

    Without: quantizer step sizes (names ending in ``_step``), BatchNorm weights/biases and biases (all 1-D).
    """
    decay: dict[str, nn.Parameter] = {}
    no_decay: dict[str, nn.Parameter] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            exempt = name.endswith("_step") or param.ndim <= 1
            (no_decay if exempt else decay)[name] = param
    return decay, no_decay
