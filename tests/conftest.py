"""Shared fixtures: compose the real configs (as ``python -m cimexp.train`` would) with outputs in ``tmp_path``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from cimexp.train import CONF_DIR

REPO_ROOT = CONF_DIR.parent

TINY_DATA = [
    "data=synthetic",
    "data.image_size=8",
    "data.train_size=16",
    "data.val_size=16",
    "data.batch_size=8",
]
"""Synthetic 8x8 images, 2 training and 2 validation batches of 8: a CIM ResNet-20 step takes well under a second."""

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1"]


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/train.yaml`` with ``overrides`` and set Hydra's runtime config, like ``@hydra.main`` does;
    the run directory and the log directory are ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.paths.log_dir = str(output_dir / "logs")
    HydraConfig().set_config(cfg)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """``make_cfg(overrides, subdir="run")`` -> a composed config writing into ``tmp_path / subdir``."""

    def _make(overrides: list[str], subdir: str = "run") -> DictConfig:
        return compose_config(overrides, tmp_path / subdir)

    yield _make
    GlobalHydra.instance().clear()


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B never goes online from the tests, whatever the developer's environment says."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cimexp.train <args>`` as a user would, from ``cwd``; stdout and stderr are captured."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "cimexp.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
