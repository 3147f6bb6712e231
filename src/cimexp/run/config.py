"""Where cimexp's configs live and what they may say: the config package, resolvers, composition and the checks of
every entry point's settings, made before any data is read, network built or run directory created.

The Hydra groups ship inside the package (``cimexp.conf``, mapped from the repository's ``conf/`` by
``pyproject.toml``), the paper's sweeps as ``cimexp.experiments`` and the float checkpoint as ``cimexp.checkpoints``;
everything is found through the package, so an installed wheel works from any directory. Paths to the user's
files (data, logs, checkpoints they pass) are resolved against the launch directory or the environment
(``conf/paths/default.yaml``; README, "Where files go").
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

import cimexp
from cimexp.cim import ADCErrors, Calibration, CIMConv2d, Granularity, VariationLevel
from cimexp.cim.cost import CostModel
from cimexp.cim.quant import KERNEL_MODES
from cimexp.run.optim import NO_DECAY_KINDS, build_scheduler
from cimexp.run.provenance import run_name, slug, sweep_group

CONFIG_MODULE = "cimexp.conf"
"""The package holding the Hydra config groups (the repository's ``conf/``)."""
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
"""``config_path`` of every Hydra entry point."""
EXPERIMENTS_MODULE = "cimexp.experiments"
"""The package holding the paper's sweeps (the repository's ``experiments/``)."""
EXPERIMENTS_PATH = f"pkg://{EXPERIMENTS_MODULE}"
"""The paper's sweeps (the repository's ``experiments/``), on every primary config's ``hydra.searchpath``."""
SHIPPED_MODULE = "cimexp.checkpoints"
"""The package holding the checkpoints that ship with cimexp (the repository's ``checkpoints/``)."""

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes of ``model.compile_mode``; ``reduce-overhead`` replays CUDA graphs (GPU)."""
COMPILE_CHOICES = (True, False, "auto")
"""``model.compile``: ``true`` compiles the network with ``model.compile_mode``, ``false`` runs it eagerly, ``auto``
(the default) takes the fastest path measured on the run's device (:func:`auto_compile_mode`)."""
AUTO_COMPILE_MODE = "reduce-overhead"
"""The ``torch.compile`` mode ``model.compile=auto`` picks on one GPU: CUDA graphs, the fastest path measured
there (H100, ResNet-20 column/column step at batch 128: 20.1 ms against 81.0 ms eager; docs/speed.md)."""


def auto_compile_mode(
    device: torch.device, world_size: int, *, variation_aware: bool, non_integer_operands: bool
) -> str | None:
    """What ``model.compile=auto`` runs on ``device``: :data:`AUTO_COMPILE_MODE` on one CUDA device, eager
    (``None``) elsewhere. Eager also on several processes (CUDA graphs under DDP were never measured), under
    variation-aware training (its fresh chip instance every step would recompile the graph every step) and where a
    CIM layer multiplies non-integers (its eager path turns TF32 off for them, a compiled graph would not)."""
    if device.type == "cuda" and world_size == 1 and not (variation_aware or non_integer_operands):
        return AUTO_COMPILE_MODE
    return None


LAYER_SETTINGS = {
    "w_bits": "quant.w_bits",
    "a_bits": "quant.a_bits",
    "cell_bits": "cell.bits",
    "adc_bits": "adc.bits",
    "array_size": "array.size",
    "weight_granularity": "granularity.weight",
    "psum_granularity": "granularity.psum",
    "psum_quant": "granularity.psum_quant",
    "weight_grad_scale": "quantizer.weight_grad_scale",
    "act_grad_scale": "quantizer.act_grad_scale",
    "psum_grad_scale": "quantizer.psum_grad_scale",
    "weight_splits": "quantizer.weight_splits",
    "slice_gradient": "quantizer.slice_gradient",
}
"""The CIM layer's arguments that are hardware or quantizer settings, each with its one config key: the ``cim``
layer factory (``conf/cim/default.yaml``) holds only the layer's own keys (``weight_encoding``, ``dac_bits``) and
gets these from their groups when it is built (:func:`layer_factory`)."""

_ABSENT = object()


def is_cim_factory(node: DictConfig | Mapping[str, Any]) -> bool:
    """Whether a ``cim`` config node builds CIM layers (``cim=default``), not plain ``nn.Conv2d`` (``cim=none``)."""
    target = node.get("_target_")
    return isinstance(target, str) and issubclass(get_class(target), CIMConv2d)


def layer_settings(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any] | None:
    """The CIM layer settings of a (resolved) config: :data:`LAYER_SETTINGS` read from their groups, then the ``cim``
    node's own keys; ``None`` for a float ``cim`` factory. A config written before the settings had one key carries
    copies in its ``cim`` node; settings it predates are left to the layer's defaults.

    Raises:
        ValueError: the ``cim`` node sets a setting to another value than its group (``+cim.adc_bits=3``).
    """
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    if not is_cim_factory(cfg.cim):
        return None
    settings = {}
    for arg, key in LAYER_SETTINGS.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if arg in cfg.cim and value is not _ABSENT and cfg.cim[arg] != value:
            raise ValueError(
                f"cim.{arg}={cfg.cim[arg]} disagrees with {key}={value}: the setting's one key is {key} "
                f"(set {key}={cfg.cim[arg]})"
            )
        if value is not _ABSENT or arg in cfg.cim:
            settings[arg] = cfg.cim[arg] if value is _ABSENT else value
    own = OmegaConf.to_container(cfg.cim, resolve=True)
    return {**settings, **{k: v for k, v in own.items() if not k.startswith("_") and k not in settings}}


def layer_factory(cfg: DictConfig) -> Callable[..., torch.nn.Module]:
    """The conv layer factory of a config: the ``cim`` node, with :func:`layer_settings` for CIM layers; models
    call it like ``nn.Conv2d(in, out, k, stride, padding, ...)``."""
    settings = layer_settings(cfg)
    if settings is None:
        return instantiate(cfg.cim)
    return instantiate(OmegaConf.create({k: v for k, v in cfg.cim.items() if k.startswith("_")}), **settings)


def config_dir() -> Path:
    """The folder of the installed config groups (``conf/`` of an editable checkout, ``cimexp/conf`` of a wheel)."""
    return Path(str(resources.files(CONFIG_MODULE)))


def shipped_file(name: str) -> str:
    """Path of the file ``name`` that ships with cimexp (e.g. ``resnet20_cifar10_float.pt``).

    Raises:
        FileNotFoundError: no such file; the message lists the shipped ones.
    """
    folder = resources.files(SHIPPED_MODULE)
    path = folder / name
    if not path.is_file():
        shipped = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.endswith(".py"))
        raise FileNotFoundError(f"no shipped file {name!r} in {SHIPPED_MODULE}; shipped: {', '.join(shipped)}")
    return str(path)


def register_resolvers() -> None:
    """Register the ``cimexp.*`` resolvers the configs use (idempotent)."""
    OmegaConf.register_new_resolver("cimexp.cwd", os.getcwd, replace=True)
    OmegaConf.register_new_resolver("cimexp.slug", slug, replace=True)
    OmegaConf.register_new_resolver("cimexp.run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("cimexp.sweep_group", sweep_group, replace=True)
    OmegaConf.register_new_resolver("cimexp.shipped", shipped_file, replace=True)
    OmegaConf.register_new_resolver("cimexp.packed_jobs", packed_jobs, replace=True)


def use_compile_cache(directory: str | None) -> None:
    """Keep compiled kernels in ``directory`` (``paths.compile_cache``) for the runs launched after this one:
    inductor's code and autotuning results and Triton's binaries, unless ``TORCHINDUCTOR_CACHE_DIR`` or
    ``TRITON_CACHE_DIR`` say otherwise. Call it before anything compiles; ``None`` leaves PyTorch's defaults."""
    if not directory:
        return
    for key, sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
        if cimexp.COMPILE_CACHE_ENV[key] is None:  # not set by the user (inductor writes its default when asked)
            os.environ[key] = str(Path(directory).resolve() / sub)


def packed_jobs(per_gpu: int = 2) -> int:
    """Jobs a packing launcher runs at once (``hydra/launcher=gpu_pack``): ``per_gpu`` on every visible GPU, or
    ``per_gpu`` without one."""
    if isinstance(per_gpu, bool) or not isinstance(per_gpu, int) or per_gpu < 1:
        raise ValueError(f"invalid jobs per GPU {per_gpu!r} in ${{cimexp.packed_jobs:...}}; valid: an integer >= 1")
    return per_gpu * max(1, torch.cuda.device_count())


@contextlib.contextmanager
def _initialized(config_module: str = CONFIG_MODULE, config_dir: str | None = None) -> Iterator[list[str]]:
    """Hydra initialised (its public compose API) on ``config_module``'s configs, as the entry points see them.

    ``config_dir`` (``--config-dir``): a user's config folder, put on the search path by ``hydra.searchpath``
    (Hydra finds the primary config only on the initial search path, which the public API cannot extend). It adds
    presets; where it holds a preset of a shipped preset's name, the entry point (``--config-dir`` searches it
    first) runs the user's and this checks the shipped one. Yields the overrides that add it.
    """
    register_resolvers()
    GlobalHydra.instance().clear()
    searchpath = []
    if config_dir is not None:
        path = os.path.abspath(config_dir)
        if not os.path.isdir(path):
            raise ValueError(f"--config-dir {config_dir!r}: no such directory")
        searchpath = [f"hydra.searchpath=[file://{path},{EXPERIMENTS_PATH}]"]
    try:
        with hydra.initialize_config_module(config_module, version_base="1.3"):
            yield searchpath
    finally:
        GlobalHydra.instance().clear()


def compose(
    config_name: str, overrides: list[str], *, config_dir: str | None = None, hydra_config: bool = False
) -> DictConfig:
    """``<config_name>.yaml`` of the config package composed with command-line ``overrides``, as the entry point
    composes one run (``config_dir``: ``--config-dir``; ``hydra_config``: keep Hydra's own ``hydra`` node). Sweep
    overrides (``seed=0,1``) are refused, as in a single run; :func:`cimexp.run.entry.sweep_jobs` splits a sweep.

    Raises:
        hydra.errors.HydraException: a bad group option, key or override (Hydra's message).
    """
    with _initialized(config_dir=config_dir) as searchpath:
        cfg = hydra.compose(config_name, [*overrides, *searchpath], return_hydra_config=True)
    if not hydra_config:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def group_options(group: str, config_dir: str | None = None) -> list[str]:
    """The options of a config group (``model`` -> ``["resnet18", "resnet20"]``); for a group of groups like
    ``sweep`` the options of its subgroups, as ``<subgroup>/<option>`` (``granularity_grid/quick``). Searched in the
    config groups, the sweeps and ``config_dir``."""
    options: list[str] = []
    for module in (CONFIG_MODULE, EXPERIMENTS_MODULE):
        with _initialized(module):
            loader = GlobalHydra.instance().config_loader()
            found = list(loader.get_group_options(group))
            for subgroup in loader.list_groups(group):
                found += [f"{subgroup}/{option}" for option in loader.get_group_options(f"{group}/{subgroup}")]
        options += [option for option in found if option not in options]
    if config_dir is not None and (Path(config_dir) / group).is_dir():  # a user's own presets (--config-dir)
        folder = Path(config_dir) / group
        options += sorted(
            str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml")
            if str(p.relative_to(folder).with_suffix("")) not in options
        )  # fmt: skip
    return options


_VALIDATED: set[tuple[str, str]] = set()
"""``(check, config)`` pairs already validated in this process (:func:`validate_once`)."""


def validate_once(validate: Callable[[DictConfig], None], cfg: DictConfig) -> None:
    """``validate(cfg)``, unless this process has validated an equal config with it already: the command line's
    check before Hydra starts (:func:`cimexp.run.entry.preflight`) is then the run's only one. Configs are compared
    by their unresolved YAML, so a job's config (Hydra's node removed) equals the one the check composed."""
    key = (f"{validate.__module__}.{validate.__qualname__}", OmegaConf.to_yaml(cfg))
    if key not in _VALIDATED:
        validate(cfg)
        _VALIDATED.add(key)


def _check_variation_aware(cfg: DictConfig) -> None:
    """Refuse a ``variation.train_sigma > 0`` that nothing would apply (results.json would record it): without the
    variation-aware callback (a ``callbacks=`` option that leaves it out) or without CIM layers (``cim=none``)."""
    sigma = cfg.variation.train_sigma
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or sigma == 0:
        return  # the callback checks the value itself
    targets = [str(node.get("_target_", "")) for node in (cfg.get("callbacks") or {}).values() if node]
    if not any(target.endswith(".VariationAwareTraining") for target in targets):
        raise ValueError(
            f"variation.train_sigma={sigma} needs the variation-aware callback, which this callbacks= option leaves "
            "out; valid: callbacks=default, or variation.train_sigma=0"
        )
    if not is_cim_factory(cfg.cim):
        raise ValueError(f"variation.train_sigma={sigma} varies CIM cells, and cim=none builds none; valid: 0")


def validate_train(cfg: DictConfig) -> None:
    """Check the training settings that Hydra cannot, before any data is loaded or model built.

    Hydra already rejects unknown group options (``model=resnet21``) and unknown keys. This checks values: the
    granularities, every CIM layer setting (by building one small layer with the configured factory, so the layer's
    own checks apply), the
    data module's arguments (by building it: it reads no file before ``setup``), the optimizer and scheduler, the
    two-stage schedule length, and that referenced files exist.

    Raises:
        ValueError: a bad value; the message names it and the valid choices.
        FileNotFoundError: ``model.init_from`` points nowhere.
    """
    for key in ("weight", "psum"):
        Granularity.parse(cfg.granularity[key], f"granularity.{key}")
    VariationLevel.parse(cfg.variation.level, "variation.level")
    _check_variation_aware(cfg)
    calibration_settings(cfg.calibration)
    check_choice("model.kernels", cfg.model.get("kernels", "auto"), KERNEL_MODES)
    for kind in cfg.no_weight_decay:
        check_choice("no_weight_decay entry", kind, NO_DECAY_KINDS)
    smoothing = cfg.loss.label_smoothing
    if not isinstance(smoothing, (int, float)) or not 0.0 <= smoothing < 1.0:
        raise ValueError(f"invalid loss.label_smoothing={smoothing!r}; valid: a number in [0, 1)")
    check_choice("model.compile", cfg.model.get("compile", "auto"), COMPILE_CHOICES)
    check_choice("model.compile_mode", cfg.model.get("compile_mode", "default"), COMPILE_MODES)
    CostModel.from_config(cfg.cost, cfg.adc.bits)  # a bad cost.adc_model lists the valid ones
    adc_errors(cfg.adc)
    try:
        layer = layer_factory(cfg)(8, 8, 3, padding=1)
    except (ValueError, TypeError) as error:
        raise ValueError(f"invalid CIM layer settings (the `cim` config node): {error}") from error
    _warn_sign_bit_cells(layer)
    try:  # the data module checks its arguments when built (batch sizes, workers, subsets against split sizes)
        instantiate(cfg.data, _partial_=True)()
    except (ValueError, TypeError) as error:
        raise ValueError(f"invalid data settings (the `data` config node): {error}") from error
    for key, value in cfg.optimizer.items():
        if not str(key).startswith("_") and isinstance(value, str):
            raise ValueError(f"invalid optimizer.{key}={value!r}; valid values: a number")
    _check_trainer(cfg.trainer)
    try:  # the optimizer and scheduler check their own arguments: build them on one parameter
        optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
        if cfg.get("lr_schedule"):
            scheduler = build_scheduler(instantiate(cfg.lr_schedule), optimizer, total_steps=2)
            optimizer.step()  # no gradient: changes nothing; some schedulers check their values only when stepped
            scheduler.step()
    except (ValueError, TypeError) as error:
        values = {k: v for k, v in {**cfg.optimizer, **(cfg.get("lr_schedule") or {})}.items() if k[0] != "_"}
        raise ValueError(f"invalid optimizer or lr_schedule settings {values}: {error}") from error

    trainer = cfg.trainer
    stage1 = cfg.schedule.stage1_epochs
    max_epochs = trainer.get("max_epochs")
    if (
        stage1 > 0
        and cfg.granularity.psum_quant
        and not trainer.get("fast_dev_run")
        and max_epochs not in (None, -1)
        and stage1 >= max_epochs
    ):
        raise ValueError(
            f"schedule.stage1_epochs={stage1} must be smaller than trainer.max_epochs={max_epochs}: "
            "otherwise stage 2 (partial-sum quantization) never starts. Lower schedule.stage1_epochs, "
            "raise trainer.max_epochs, or use schedule=one_stage."
        )

    check_checkpoint_intervals(cfg.checkpoint.every_minutes, cfg.checkpoint.every_n_steps)

    init_from = cfg.model.get("init_from")
    if init_from is not None and not Path(init_from).is_file():
        raise FileNotFoundError(
            f"model.init_from={init_from!r} does not exist. Point it at a float checkpoint (a Lightning .ckpt "
            "or a state_dict), produce one with `python -m cimexp.train cim=none ...` (README: float checkpoint), "
            "or set model.init_from=null to train from scratch."
        )


def check_training_run(cfg: DictConfig) -> None:
    """Every check of a training run as it starts: its settings (:func:`validate_train`, once per process:
    :func:`validate_once`), the accelerator (:func:`check_accelerator`) and how it was launched
    (:func:`check_launch`)."""
    validate_once(validate_train, cfg)
    check_accelerator(cfg.trainer)
    check_launch(cfg.trainer)


def check_launch(trainer: DictConfig) -> None:
    """What only the running job can check, as Hydra launched it: a trainer strategy that re-runs the command line
    for its other ranks cannot run inside a multirun (not in :func:`validate_train`: the command line check runs
    before Hydra, which decides the mode).

    Raises:
        ValueError: such a strategy inside ``-m``.
    """
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN and _relaunches_script(trainer):
        raise ValueError(
            f"trainer strategy {trainer.strategy!r} with devices={trainer.devices} cannot run inside a Hydra "
            "multirun (-m): Lightning starts the other ranks by re-running the command line, which would rerun "
            "the whole sweep. Run the jobs one at a time, or set trainer.strategy=ddp_spawn."
        )


def _check_trainer(trainer: DictConfig) -> None:
    """The run's length, which Lightning would refuse only when the run starts."""
    for key, least in (("max_epochs", -1), ("min_epochs", 0), ("max_steps", -1)):
        value = trainer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            valid = "an integer >= -1 (-1: no limit)" if least < 0 else f"an integer >= {least}"
            raise ValueError(f"invalid trainer.{key}={value!r}; valid values: {valid} or null")


def check_accelerator(trainer: DictConfig) -> None:
    """Refuse a GPU trainer on a machine without a GPU, before a run writes anything (not in :func:`validate_train`:
    the GPU presets are validated on CPU machines too, e.g. a sweep prepared for a cluster).

    Raises:
        ValueError: ``trainer.accelerator`` is ``gpu`` or ``cuda`` and no CUDA device is visible.
    """
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"trainer.accelerator={accelerator} (trainer=gpu): no CUDA GPU is visible on this machine "
            "(torch.cuda.is_available() is False); use trainer=cpu, or run where a GPU is"
        )


def validate_evaluate(cfg: DictConfig) -> None:
    """Check the evaluation settings before anything is loaded.

    Raises:
        ValueError: ``ckpt`` unset, a negative ``variation.sigma``, a bad ``variation.level``, a bad ``adc.*``
            error or ``cost.*`` setting, or more than one device.
    """
    if OmegaConf.is_missing(cfg, "ckpt") or cfg.ckpt is None:
        raise ValueError("ckpt=<path> is required: a training checkpoint (.ckpt) or a training run directory")
    sigma = cfg.variation.sigma
    if not isinstance(sigma, int | float) or sigma < 0:
        raise ValueError(f"invalid variation.sigma={sigma!r}; valid values: a number >= 0")
    VariationLevel.parse(cfg.variation.level, "variation.level")
    adc_errors(cfg.adc)
    CostModel.from_config(cfg.cost)
    trainer = cfg.trainer
    if trainer.get("devices") not in (1, "1") or trainer.get("num_nodes", 1) != 1 or trainer.get("strategy"):
        raise ValueError(
            f"evaluate runs on one device; got trainer.devices={trainer.get('devices')}, "
            f"trainer.num_nodes={trainer.get('num_nodes', 1)}, trainer.strategy={trainer.get('strategy')}. "
            "Use trainer=cpu or trainer=gpu (and a Hydra launcher to run sweep jobs in parallel)."
        )


def adc_errors(adc: DictConfig) -> ADCErrors:
    """The ADC non-idealities of an ``adc`` config node (``conf/adc_errors/``); a bad value raises ``ValueError``
    naming it."""
    return ADCErrors(**{name: adc[name] for name in ADCErrors.__dataclass_fields__})


def calibration_settings(calibration: DictConfig) -> dict[str, Any]:
    """The step-size calibration of a ``calibration`` config node (``conf/calibration/``) as ``ImageClassifier``
    keyword arguments: ``calibration`` (a :class:`~cimexp.cim.Calibration`), ``calibration_batches`` and
    ``bn_batches``. A bad value raises ``ValueError`` naming it and the valid choices."""
    settings = {key: value for key, value in calibration.items() if key not in ("batches", "bn_batches")}
    batches, bn_batches = calibration.batches, calibration.bn_batches
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"invalid calibration.batches={batches!r}; valid values: an integer >= 1")
    if isinstance(bn_batches, bool) or not isinstance(bn_batches, int) or bn_batches < 0:
        raise ValueError(f"invalid calibration.bn_batches={bn_batches!r}; valid values: an integer >= 0 (0: off)")
    return {"calibration": Calibration.parse(settings), "calibration_batches": batches, "bn_batches": bn_batches}


def check_choice(key: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise ``ValueError`` naming ``key=value`` and the ``choices`` (booleans as YAML spells them) unless ``value``
    is one of them."""
    if not any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in choices):
        listed = ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)
        raise ValueError(f"invalid {key}={value!r}; valid choices: {listed}")


def _warn_sign_bit_cells(layer: torch.nn.Module) -> None:
    """Warn about column-wise weight steps on a lone sign-bit top cell (1-bit cells, or 4-bit weights on 3-bit
    cells, in two's complement): each split learns its own step there, the sign cell's step drifts away from the
    others and fine-tuning has collapsed to chance in every run we made (docs/cim_layer.md, "Choices worth
    knowing"). Channel-wise weight steps (the splits share one), differential encoding or layer/array weight steps
    train."""
    mapping = getattr(layer, "mapping", None)
    if mapping is not None and mapping.sign_bit_msb and layer.weight_granularity is Granularity.COLUMN:
        warnings.warn(
            f"cell_bits={mapping.cell_bits} with {mapping.magnitude_bits}-bit two's-complement weights leaves a "
            "lone sign bit in the top cell, and column-wise weight steps have not trained in that setting (accuracy "
            "at chance after fine-tuning). Consider granularity.weight=channel (the splits share one step), "
            "cim.weight_encoding=differential or granularity.weight=layer.",
            stacklevel=2,
        )


def _relaunches_script(trainer: DictConfig) -> bool:
    """Whether Lightning would start ranks > 0 by re-running ``sys.argv`` (DDP's default subprocess launcher).

    Not inside a SLURM job step with several tasks (e.g. ``hydra/launcher=slurm`` with ``tasks_per_node`` > 1):
    SLURM starts every rank itself there.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment  # here: validation loads no Lightning

    if SLURMEnvironment.detect():
        return False
    strategy = trainer.get("strategy")
    if isinstance(strategy, DictConfig):
        is_ddp = str(strategy.get("_target_", "")).endswith("DDPStrategy")
        is_ddp = is_ddp and strategy.get("start_method", "popen") == "popen"
    else:
        is_ddp = strategy == "ddp"
    return is_ddp and (trainer.get("devices") not in (1, "1") or trainer.get("num_nodes", 1) > 1)


def check_checkpoint_intervals(every_minutes: float | None, every_n_steps: int | None) -> None:
    """Raise ``ValueError`` naming the value unless ``every_minutes`` is a number > 0 and ``every_n_steps`` an
    integer >= 1 (either may be ``None``: off); the keys are those of the ``checkpoint`` node of ``conf/train.yaml``."""
    for key, value, kinds, valid in (
        ("every_minutes", every_minutes, (int, float), "a number > 0"),
        ("every_n_steps", every_n_steps, (int,), "an integer >= 1"),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds) or not value > 0):
            raise ValueError(f"invalid checkpoint.{key}={value!r}; valid values: {valid}, or null (off)")
