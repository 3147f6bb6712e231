"""Shared fixtures: compose the real configs (as ``python -m cimexp.train`` would) with outputs in ``tmp_path``.

Everything is a fixture, not an importable name: other test folders have their own ``conftest.py``, so
``from conftest import ...`` would be ambiguous.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # Triton's CPU interpreter for cimexp.cim.fused; read when triton is first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from cimexp.run.config import compose  # noqa: E402

_TINY_DATA = [
    "data=synthetic",
    "data.image_size=8",
    "data.train_size=16",
    "data.val_size=16",
    "data.batch_size=8",
]
"""Synthetic 8x8 images, 2 training and 2 validation batches of 8: a CIM ResNet-20 step takes well under a second."""

_QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1"]


@pytest.fixture
def tiny_data() -> list[str]:
    """Overrides for a tiny synthetic data set (see ``_TINY_DATA``)."""
    return list(_TINY_DATA)


@pytest.fixture(scope="session")
def quiet() -> tuple[str, ...]:
    """Overrides for terse trainer output in tests (no progress bar, no model summary); session-wide, so that
    module-scoped fixtures can train too."""
    return tuple(_QUIET)


def compose_config(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` and set Hydra's runtime config, like ``@hydra.main``
    does; the run directory and the log directory are ``output_dir``."""
    cfg = compose(config_name, overrides, hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.paths.log_dir = str(output_dir / "logs")
    HydraConfig().set_config(cfg)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(overrides, subdir="run", config_name="train")`` -> a composed config writing into
    ``tmp_path / subdir`` (``config_name="evaluate"`` for ``cimexp.evaluate``)."""

    def _make(overrides: list[str], subdir: str = "run", config_name: str = "train") -> DictConfig:
        return compose_config(overrides, tmp_path / subdir, config_name)

    return _make


@pytest.fixture(scope="session")
def compose_app() -> Callable[..., DictConfig]:
    """``compose_app(overrides, output_dir, config_name="train")``: ``make_cfg`` for any directory, usable from
    module-scoped fixtures."""
    return compose_config


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B never goes online from the tests, whatever the developer's environment says."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli(args, cwd, timeout=300, module="cimexp.train")``: ``python -m <module> <args>`` as a user types it,
    from ``cwd`` (session-wide, for module-scoped fixtures too)."""
    return _run_cli


def _run_cli(
    args: list[str], cwd: Path, timeout: float = 300, module: str = "cimexp.train"
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
