"""Building what a run runs from its composed config: the network (its convs made by the ``cim`` layer factory),
the callbacks and loggers of a config node, the summaries of what was built that results records carry, and a
trained network from a training checkpoint (:func:`load_checkpoint`, :func:`build_trained_net`).

Shared by every entry point (``cimexp.train``, ``cimexp.evaluate``, ``cimexp.cost``, ``cimexp.post_training``), so
that a network is built one way everywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cimexp.cim import cim_layers, set_kernels
from cimexp.files import read_checkpoint
from cimexp.models import load_float_weights
from cimexp.results import read_results
from cimexp.run.config import layer_factory, layer_settings

if TYPE_CHECKING:  # the network and checkpoints are built without Lightning (cimexp-cost, validation)
    import lightning as L

    from cimexp.run.callbacks import QATSchedule

log = logging.getLogger("cimexp.run.build")

CallbackT = TypeVar("CallbackT", bound="L.Callback")

RUN_KEYS = ("init_from", "compile", "compile_mode", "kernels")
"""Keys of the ``model`` node that say how the network is run, not how it is built."""


def build_net(cfg: DictConfig, num_classes: int) -> torch.nn.Module:
    """The network of ``cfg.model`` with its convs built by the ``cfg.cim`` factory; float weights loaded from
    ``cfg.model.init_from`` when set. The CIM layers' fused ADC kernels run as ``cfg.model.kernels`` says
    (:func:`cimexp.cim.set_kernels`); whole-model compilation (``model.compile``) is the LightningModule's."""
    model_cfg = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    run = {key: model_cfg.pop(key, None) for key in RUN_KEYS}
    init_from = run["init_from"]
    set_kernels(run["kernels"] or "auto")
    net = instantiate(model_cfg, conv_layer=layer_factory(cfg), num_classes=num_classes)
    if init_from is not None:
        load_float_weights(net, init_from)
    return net


def example_input(datamodule: L.LightningDataModule, model: torch.nn.Module) -> torch.Tensor:
    """A zero batch of one image ``[1, 3, S, S]`` (``S`` = the data module's ``image_size``), on the model's
    device; reads no data, so it works before ``setup()`` (e.g. for ``python -m cimexp.cost``)."""
    size = datamodule.image_size
    device = next(model.parameters()).device
    return torch.zeros(1, 3, size, size, device=device)


def instantiate_all(node: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a config node like ``callbacks`` or ``logger`` (in order)."""
    if not node:
        return []
    return [instantiate(entry) for entry in node.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def find_callback(trainer: L.Trainer, kind: type[CallbackT]) -> CallbackT | None:
    """The trainer's first callback of type ``kind``; ``None`` without one."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, kind)), None)


def cim_settings(config: dict[str, Any], model: torch.nn.Module) -> dict[str, Any] | None:
    """The CIM layer settings of a run (:func:`cimexp.run.config.layer_settings` of its resolved config); ``None``
    for a float model."""
    if not any(True for _ in cim_layers(model)):
        return None
    return layer_settings(config)


def schedule_summary(schedule: QATSchedule | None) -> dict[str, Any]:
    """``{"name": "one_stage" | "two_stage", "stage1_epochs", "stage2_started_epoch"}`` of a QAT schedule."""
    return {
        "name": "two_stage" if schedule is not None and schedule.two_stage else "one_stage",
        "stage1_epochs": schedule.stage1_epochs if schedule is not None else 0,
        "stage2_started_epoch": schedule.stage2_started_epoch if schedule is not None else None,
    }


@dataclass(frozen=True)
class TrainedCheckpoint:
    """What evaluation needs from a training checkpoint.

    Attributes:
        path: the ``.ckpt`` file.
        config: the resolved training config (a plain dict, as in ``config_resolved.yaml``).
        state_dict: the network's tensors, keys without the LightningModule's ``model.`` prefix.
        callback_states: Lightning's per-callback states, by ``state_key`` (e.g. ``QATSchedule``).
        train_results: the training run's results.json without its ``history``, or ``None`` when the checkpoint
            is not inside a run directory that has one.
    """

    path: Path
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    callback_states: dict[str, Any]
    train_results: dict[str, Any] | None


def resolve_checkpoint(ckpt: str | Path) -> Path:
    """The checkpoint file for ``ckpt``: a ``.ckpt`` file itself, or for a training run directory its
    ``checkpoints/last.ckpt`` (the model at the end of training), else its ``checkpoints/best.ckpt``.

    Raises:
        FileNotFoundError: nothing there; the message lists the paths tried.
    """
    path = Path(ckpt).expanduser()
    candidates = [path / "checkpoints" / "last.ckpt", path / "checkpoints" / "best.ckpt"] if path.is_dir() else [path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(repr(str(c)) for c in candidates)
    raise FileNotFoundError(
        f"ckpt={str(ckpt)!r}: no checkpoint at {tried}. Pass a training checkpoint (.ckpt) of cimexp or a training "
        "run directory holding checkpoints/last.ckpt or checkpoints/best.ckpt."
    )


def load_checkpoint(ckpt: str | Path) -> TrainedCheckpoint:
    """Read a training checkpoint of this platform (see :func:`resolve_checkpoint` for ``ckpt``).

    The training config comes from the checkpoint's hyperparameters, or else from ``config_resolved.yaml`` of the
    run directory holding ``checkpoints/``. The file is read with ``weights_only=True``
    (:func:`cimexp.files.read_checkpoint`): one that carries Python objects beyond tensors and plain containers
    is refused before anything in it runs.

    Raises:
        FileNotFoundError: see :func:`resolve_checkpoint`.
        ValueError: the file is not a Lightning checkpoint of a cimexp training run.
    """
    path = resolve_checkpoint(ckpt)
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict'); pass one of cimexp.train")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    config = (checkpoint.get("hyper_parameters") or {}).get("config")
    if config is None and run_dir is not None and (run_dir / "config_resolved.yaml").is_file():
        config = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    if not isinstance(config, dict) or not {"model", "cim", "schedule"} <= config.keys():
        raise ValueError(
            f"{str(path)!r} holds no cimexp training config (neither the checkpoint's hyperparameters nor "
            "config_resolved.yaml in its run directory): is it a checkpoint of `python -m cimexp.train`?"
        )
    prefix = "model."
    state_dict = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    train_results = _training_results(run_dir) if run_dir is not None else None
    return TrainedCheckpoint(path, config, state_dict, checkpoint.get("callbacks") or {}, train_results)


def _training_results(run_dir: Path) -> dict[str, Any] | None:
    """The run's results.json without its history; ``None`` when it is missing or unreadable (the checkpoint holds
    all that evaluation needs, so a broken side file only costs the record of the training run)."""
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        record = read_results(path)
    except (OSError, ValueError) as error:
        log.warning("ignoring the training run's unreadable %s: %s", path, error)
        return None
    except TypeError:
        log.warning("ignoring the training run's %s: not a JSON object", path)
        return None
    record.pop("history", None)
    return record


def build_trained_net(checkpoint: TrainedCheckpoint, num_classes: int) -> torch.nn.Module:
    """The checkpoint's network, built as in training (:func:`build_net`) with its trained tensors.

    Raises:
        ValueError: a CIM layer's step sizes were not initialised when the checkpoint was saved (saved before the
            first training step, or in stage 1 of two-stage QAT, when the ADC steps do not exist yet): evaluating
            would initialise them from the test data.
    """
    config = OmegaConf.create(checkpoint.config)
    config.model.init_from = None  # the checkpoint holds every tensor
    net = build_net(config, num_classes)
    net.load_state_dict(checkpoint.state_dict)
    uncalibrated = [
        name
        for name, layer in cim_layers(net)
        if not (layer.weight_step_ready and layer.act_step_ready and (layer.psum_step_ready or not layer.psum_quant))
    ]
    if uncalibrated:
        raise ValueError(
            f"{str(checkpoint.path)!r}: the step sizes of {len(uncalibrated)} CIM layers (first: "
            f"{uncalibrated[0]!r}) were not initialised when it was saved (before the first training step, or in "
            "stage 1 of two-stage QAT, without ADC steps). Evaluate a checkpoint from the end of training "
            "(<run dir>/checkpoints/last.ckpt)."
        )
    return net


def data_files(cfg: DictConfig) -> list[Path]:
    """The data set's files (``ImageDataModule.data_files``), identified by content in results.json; ``[]`` when
    the data settings cannot build a module (validation reports that) or name no files."""
    try:
        return instantiate(cfg.data, _partial_=True)().data_files()
    except (ValueError, TypeError):
        return []
