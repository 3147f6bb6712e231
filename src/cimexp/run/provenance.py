"""A run's name and provenance: the slug and names of run directories, the sweep group, the git state and the
resolved config recorded with every run."""

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
