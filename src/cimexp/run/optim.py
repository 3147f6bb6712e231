"""The optimizer's parameter groups (which parameters skip weight decay) and the learning-rate schedule's length;
plain torch, so that config validation can build them without Lightning."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

NO_DECAY_KINDS = ("steps", "norms", "biases")
"""Kinds of parameters that can be exempt from weight decay: quantizer step sizes (names ending in ``_step``),
normalisation weights (the other 1-D parameters) and biases (names ending in ``bias``)."""
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


SCHEDULE_LENGTH_KEYS = ("T_max", "total_steps")
"""Arguments that give a scheduler's length in steps: cosine annealing's ``T_max``, one-cycle's ``total_steps``."""


def build_scheduler(
    factory: SchedulerFactory, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """``factory(optimizer)`` with its length argument (:data:`SCHEDULE_LENGTH_KEYS`) set to ``total_steps`` where
    the factory leaves it ``None`` or unset; a length given in the config wins."""
    target = getattr(factory, "func", factory)
    accepted = inspect.signature(target).parameters
    keywords = getattr(factory, "keywords", {})
    length = {key: total_steps for key in SCHEDULE_LENGTH_KEYS if key in accepted and keywords.get(key) is None}
    return factory(optimizer, **length)


def parameter_kind(name: str, param: torch.Tensor) -> str:
    """``"steps"``, ``"biases"``, ``"norms"`` (:data:`NO_DECAY_KINDS`) or ``"weights"`` (everything else)."""
    if name.endswith("_step"):
        return "steps"
    if name.endswith("bias"):
        return "biases"
    return "norms" if param.ndim <= 1 else "weights"


def weight_decay_split(
    model: nn.Module, no_decay_kinds: Sequence[str] = NO_DECAY_KINDS
) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """Trainable parameters by name: ``(with weight decay, without)``; without: those of ``no_decay_kinds``
    (:func:`parameter_kind`). An unknown kind raises ``ValueError`` naming it."""
    unknown = [kind for kind in no_decay_kinds if kind not in NO_DECAY_KINDS]
    if unknown:
        raise ValueError(f"invalid no_weight_decay entries {unknown}; valid choices: {', '.join(NO_DECAY_KINDS)}")
    decay: dict[str, nn.Parameter] = {}
    no_decay: dict[str, nn.Parameter] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if parameter_kind(name, param) in no_decay_kinds else decay)[name] = param
    return decay, no_decay
