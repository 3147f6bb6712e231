"""The W&B logger as the configs build it, and the end of its run between the jobs of a multirun."""

from __future__ import annotations

from typing import Any


def wandb_logger(**kwargs: Any) -> Any:
    """Lightning's ``WandbLogger`` without the ``anonymous`` setting it always passes to ``wandb.init``: wandb
    warns on every run that the setting has no effect (the configs use this as the logger's ``_target_``)."""
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(**kwargs)
    logger._wandb_init.pop("anonymous", None)  # noqa: SLF001 - the only way to leave the setting unset
    return logger


def finish_wandb(loggers: list[Any]) -> None:
    """End the W&B run when ``loggers`` include W&B: the jobs of a multirun share one process, and each must log
    to a run of its own."""
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        wandb.finish()
