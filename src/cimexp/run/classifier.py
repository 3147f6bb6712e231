"""The LightningModule: image classification with cross-entropy, SGD + a per-step schedule, top-1/top-5 accuracy."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from cimexp.cim import Calibration, calibrate, cim_layers, reestimate_batchnorm, set_calibration, telemetry_active
from cimexp.results import HASHED_CONFIG_KEY
from cimexp.run.config import COMPILE_MODES, auto_compile_mode, calibration_settings
from cimexp.run.optim import NO_DECAY_KINDS, SchedulerFactory, build_scheduler, weight_decay_split

TRAIN_SUMS = ("loss", "correct", "images", "lr")
"""What the epoch's training means are made of: sums over its batches of loss x images, correct top-1, images,
learning rate x images."""
TRAIN_SUMS_KEY = "train_epoch_sums"
"""Checkpoint entry holding the sums of the epoch in progress."""

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def _compile_mode(model_cfg: DictConfig) -> str | None:
    """``compile_mode`` of :class:`ImageClassifier` from the ``model`` node: ``"auto"``, its ``compile_mode`` when
    ``compile`` is true, ``None`` when false."""
    compile_ = model_cfg.get("compile", "auto")
    if compile_ == "auto":
        return "auto"
    return model_cfg.get("compile_mode", "default") if compile_ else None


class ImageClassifier(L.LightningModule):
    """Trains ``model`` (a float or CIM network) on ``(images [B, C, H, W], labels [B])`` batches.

    Logs ``train/loss``, ``train/acc``, ``lr``, ``val/loss``, ``val/acc``, ``val/acc5`` and ``val/acc_best``
    (accuracies are fractions in [0, 1]). ``val/acc_best`` is saved in checkpoints, so it survives resuming; the
    checkpoint's ``state_dict`` holds only the network (``model.*``).

    Before the first training step of a fresh run, the step sizes of the CIM layers are initialised from the first
    ``calibration_batches`` training batches as ``calibration`` says (``cimexp.cim.calibrate``), and with
    ``bn_batches`` the BatchNorm statistics are then re-estimated through the quantized network
    (``cimexp.cim.reestimate_batchnorm``). So they never see the validation (= test) split and are set
    before DDP wraps the model (the layer averages them over ranks). That happens in ``setup``, before Lightning
    moves the model to its device, so the batch goes where the model's parameters are (``self.device`` already
    names the target device there).

    Args:
        model: the network, ``[B, C, H, W] -> [B, num_classes]`` logits. Held as ``self.model``, so checkpoint
            keys are ``model.<name>`` (what ``cimexp.models.load_float_weights`` reads).
        optimizer: factory ``optimizer(params) -> Optimizer``, e.g. ``functools.partial(torch.optim.SGD, lr=0.1)``.
            The parameters of the kinds in ``no_weight_decay`` get ``weight_decay=0``.
        scheduler: factory ``scheduler(optimizer, ...) -> LRScheduler``, stepped every optimizer step; its length
            (``T_max`` of a cosine, ``total_steps`` of a one-cycle schedule), when ``None`` or not given, becomes
            the run's total number of optimizer steps (:func:`build_scheduler`).
        num_classes: classes, for the accuracy metrics (top-5 becomes top-``num_classes`` below 5 classes).
        no_weight_decay: kinds of parameters without weight decay (:data:`NO_DECAY_KINDS`, all by default:
            step sizes, normalisation weights and biases); ``()`` decays every parameter.
        label_smoothing: of the training loss (``F.cross_entropy``'s); the validation loss never smooths, so
            ``val/loss`` stays comparable between recipes.
        calibration: how the CIM layers' step sizes are initialised (a ``cimexp.cim.Calibration``, a mapping of
            its fields, one method name, or ``None``: the defaults); also for steps initialised later (two-stage
            QAT's ADC steps), in resumed runs too.
        calibration_batches: training batches the steps are calibrated on (at most; concatenated).
        bn_batches: training batches the BatchNorm statistics are re-estimated on after calibration; 0: none.
        config: the resolved run config, stored in the checkpoint's ``hyper_parameters`` (not logged from here).
        hashed_config: the run's ``cimexp.results.hashed_config`` (data and files by content), stored in every
            checkpoint as ``hashed_config``: a run resumes from it only under the same settings.
        compile_mode: ``torch.compile`` the network with this mode (:data:`COMPILE_MODES`) once its step sizes are
            calibrated (``configure_model``, after ``setup``); ``None``: run it eagerly; ``"auto"``: the mode of
            :func:`~cimexp.run.config.auto_compile_mode` on the trainer's device (CUDA graphs on one GPU, eager on
            a CPU). ``compiled_mode`` holds what ran (``None``: eager). Compilation happens on the first training
            and the first validation step; the state_dict keys do not change.
        variation_aware: the run trains under a fresh chip instance every step (``"auto"`` then stays eager).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        num_classes: int = 10,
        label_smoothing: float = 0.0,
        no_weight_decay: Sequence[str] = NO_DECAY_KINDS,
        calibration: Calibration | Mapping[str, Any] | str | None = None,
        calibration_batches: int = 1,
        bn_batches: int = 0,
        config: dict[str, Any] | None = None,
        compile_mode: str | None = None,
        hashed_config: dict[str, Any] | None = None,
        variation_aware: bool = False,
    ) -> None:
        if compile_mode is not None and compile_mode not in (*COMPILE_MODES, "auto"):
            valid = ", ".join((*COMPILE_MODES, "auto"))
            raise ValueError(f"invalid compile_mode={compile_mode!r}; valid choices: {valid}")
        super().__init__()
        self.save_hyperparameters({"config": config}, logger=False)
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_smoothing = label_smoothing
        self.no_weight_decay = tuple(no_weight_decay)
        # This epoch's sums (TRAIN_SUMS), kept in checkpoints: loss and correct on the device (no sync per step),
        # images and learning rate on the host (no copy per step).
        self._train_sums = torch.zeros(2, dtype=torch.float64)
        self._train_host = [0.0, 0.0]
        self.val_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
        self.val_acc_best = 0.0
        self.compile_mode = compile_mode
        self.variation_aware = variation_aware
        self.compiled_mode: str | None = None
        self.calibration = Calibration.parse(calibration)
        self.calibration_batches = calibration_batches
        self.bn_batches = bn_batches
        self.hashed_config = hashed_config

    @classmethod
    def from_config(
        cls, cfg: DictConfig, net: nn.Module, num_classes: int, *, config: dict[str, Any], hashed_config: dict[str, Any]
    ) -> ImageClassifier:
        """The module of a composed training config (``optimizer``, ``lr_schedule``, ``loss``, ``no_weight_decay``,
        ``calibration``, ``model.compile``); ``config``: the resolved config, ``hashed_config``: its hashed form,
        saved in checkpoints."""
        return cls(
            net,
            optimizer=instantiate(cfg.optimizer),
            scheduler=instantiate(cfg.lr_schedule) if cfg.get("lr_schedule") else None,
            num_classes=num_classes,
            label_smoothing=cfg.loss.label_smoothing,
            no_weight_decay=cfg.no_weight_decay,
            **calibration_settings(cfg.calibration),
            config=config,
            compile_mode=_compile_mode(cfg.model),
            hashed_config=hashed_config,
            variation_aware=cfg.variation.train_sigma > 0,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled_mode is not None and telemetry_active(self.model):
            # Telemetry counts on the host in every layer (graph breaks): recorded batches skip the compiled graph.
            return self.model.forward(x)
        return self.model(x)

    def setup(self, stage: str) -> None:
        if stage != "fit" or not any(True for _ in cim_layers(self.model)):
            return
        set_calibration(self.model, self.calibration)  # for steps set later too, e.g. a resumed two-stage run's
        datamodule = self.trainer.datamodule
        if self.trainer.ckpt_path is not None or datamodule is None:
            return
        n_batches = max(self.calibration_batches, self.bn_batches)
        model_device = next(self.model.parameters()).device
        batches = [images.to(model_device) for images, _ in itertools.islice(datamodule.train_dataloader(), n_batches)]
        calibrate_network(self.model, batches, self.calibration, self.calibration_batches, self.bn_batches)

    def configure_model(self) -> None:
        # After setup's calibration, so that compiled graphs never contain the step initialisation branches.
        mode = self.compile_mode
        if mode == "auto":
            mode = auto_compile_mode(
                self.trainer.strategy.root_device,
                self.trainer.world_size,
                variation_aware=self.variation_aware,
                non_integer_operands=any(layer._non_integer_operands for _, layer in cim_layers(self.model)),
            )
        self.compiled_mode = mode
        if mode is not None and getattr(self.model, "_compiled_call_impl", None) is None:
            self.model.compile(mode=None if mode == "default" else mode)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        n = labels.numel()
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        correct = (logits.detach().argmax(1) == labels).sum().to(loss.dtype)
        self._train_sums = self._train_sums.to(loss.device) + torch.stack([loss.detach() * n, correct]).double()
        self._train_host = [self._train_host[0] + n, self._train_host[1] + lr * n]
        return loss

    def on_train_epoch_start(self) -> None:  # not called when a run resumes inside an epoch: the sums go on
        self._train_sums, self._train_host = torch.zeros_like(self._train_sums), [0.0, 0.0]

    def on_train_epoch_end(self) -> None:
        """The epoch's means over all its batches (``train/loss``, ``train/acc``, ``lr``), from sums that checkpoints
        keep, so that a run resumed inside an epoch reports the uninterrupted run's values."""
        sums = torch.cat([self._train_sums, self._train_sums.new_tensor(self._train_host)])
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        loss, correct, seen, lr = (float(value) for value in sums)
        if seen > 0:
            means = {"train/loss": loss / seen, "train/loss_epoch": loss / seen, "train/acc": correct / seen}
            self.log_dict({**means, "lr": lr / seen}, on_step=False, on_epoch=True, prog_bar=False)

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
        checkpoint[TRAIN_SUMS_KEY] = [*self._train_sums.cpu().tolist(), *self._train_host]
        if self.hashed_config is not None:
            checkpoint[HASHED_CONFIG_KEY] = self.hashed_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_acc_best = float(checkpoint.get("val_acc_best", 0.0))
        if TRAIN_SUMS_KEY in checkpoint:  # checkpoints from before it was kept: the epoch's means start over
            sums = [float(value) for value in checkpoint[TRAIN_SUMS_KEY]]
            self._train_sums, self._train_host = torch.tensor(sums[:2], dtype=torch.float64), sums[2:]

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = weight_decay_split(self.model, self.no_weight_decay)
        optimizer = self.optimizer_factory(
            [{"params": list(decay.values())}, {"params": list(no_decay.values()), "weight_decay": 0.0}]
        )
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = build_scheduler(self.scheduler_factory, optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def calibrate_network(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    calibration: Calibration | Mapping[str, Any] | str | None = None,
    calibration_batches: int = 1,
    bn_batches: int = 0,
) -> None:
    """Initialise the step sizes of ``model``'s CIM layers on the first ``calibration_batches`` image batches of
    ``batches`` (``[B, C, H, W]`` each, on the model's device; one forward pass over all of them) as
    ``calibration`` says (``cimexp.cim.calibrate``), then re-estimate its BatchNorm statistics on the first
    ``bn_batches`` of them (``cimexp.cim.reestimate_batchnorm``; 0: keep them)."""
    calibrate(model, torch.cat(list(batches[:calibration_batches])), weights=True, method=calibration)
    if bn_batches:
        reestimate_batchnorm(model, batches[:bn_batches])
