"""Small helpers of the experiment platform: config resolvers, run bookkeeping and early config checks."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")
_SLUG_MAX_CHARS = 200


def slug(text: str, default: str = "default") -> str:
    """A directory-safe version of ``text`` (e.g. Hydra's override dirname), at most 200 characters.

    Path separators and other unsafe characters become ``_``; an empty result becomes ``default``.
    """
    cleaned = _SLUG_UNSAFE.sub("_", str(text)).strip("_.")[:_SLUG_MAX_CHARS].rstrip("_.")
    return cleaned or default


def run_name() -> str:
    """Name of the current Hydra job from its command-line overrides (``default`` without any)."""
    if not HydraConfig.initialized():
        return "default"
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("ckpt_path=", "paths."))]
    return ",".join(overrides) or "default"


def sweep_group() -> str | None:
    """W&B group of the current job: the sweep directory's name in a multirun, ``None`` for a single run."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return Path(hydra_cfg.sweep.dir).name


def git_state(repo_dir: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the git checkout holding ``repo_dir``.

    ``repo_dir`` defaults to this package's source directory, so it is the code that ran, wherever the run was
    launched from. ``None`` values mean "not a git checkout" (e.g. an installed wheel).
    """
    cwd = Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config as a plain dict with every interpolation resolved (without Hydra's own ``hydra`` node)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return container


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """Turn the ``ckpt_path`` config value into what ``Trainer.fit`` takes.

    ``None`` -> ``None`` (fresh run); ``last`` -> this run's ``checkpoints/last.ckpt`` (resume in place, with
    ``hydra.run.dir`` set to the old run directory); a run directory -> its ``checkpoints/last.ckpt``;
    a file -> itself.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
    """
    if ckpt_path is None:
        return None
    path = Path(output_dir) if str(ckpt_path) == "last" else Path(ckpt_path)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path!r}: no checkpoint at {str(path)!r}. Pass a .ckpt file, a run directory "
            "(holding checkpoints/last.ckpt), or `last` together with hydra.run.dir=<the old run directory>."
        )
    return str(path)


def unfinished_checkpoint(run_dir: str | Path) -> Path | None:
    """``run_dir/checkpoints/last.ckpt`` if it exists: a killed or stopped run resumes from it (it is written at the
    end of every epoch, inside long epochs, and when Ctrl-C or SIGTERM stops the run; ``RecoveryCheckpoint``).

    Callers check :func:`cimexp.results.reusable_results` first; a finished run also has a last.ckpt.
    """
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


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
