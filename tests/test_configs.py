"""Every option of every config group composes, resolves and instantiates; config values are validated early."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import OmegaConf, read_write
from torch import nn

from cimexp.cim import CIMConv2d, cim_layers
from cimexp.models import resnet20
from cimexp.run.build import build_net, instantiate_all
from cimexp.run.callbacks import QATSchedule
from cimexp.run.config import LAYER_SETTINGS, check_launch, config_dir, layer_factory, layer_settings
from cimexp.run.config import validate_train as validate_config
from cimexp.run.provenance import resolved_config, slug

CONF_DIR = config_dir()
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and not p.name.startswith("_"))
OPTIONS = [
    (group, path.stem)
    for group in GROUPS
    for path in sorted((CONF_DIR / group).glob("*.yaml"))
    if not path.stem.startswith("_")  # building blocks of the other options (trainer/_base.yaml)
]
CIM_SETTING_GROUPS = ("quant", "array", "cell", "adc", "granularity", "cim")


def test_every_group_is_in_the_defaults_list() -> None:
    defaults = OmegaConf.load(CONF_DIR / "train.yaml").defaults
    listed = {next(iter(d)) for d in defaults if isinstance(d, dict) or OmegaConf.is_dict(d)}
    assert set(GROUPS) == listed - {"sweep"}  # sweeps: experiments/sweep/, on the search path
    assert len(OPTIONS) >= 45


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_resolves_and_instantiates(
    group: str, option: str, make_cfg, tiny_data, tmp_path: Path
) -> None:
    if group in ("hydra", "paths"):
        cfg = make_cfg([*tiny_data])  # the only option of these groups is the default
    elif group in ("data", "experiment"):
        cfg = make_cfg([f"{group}={option}"])  # their own data; instantiating a data module reads no files
    else:
        cfg = make_cfg([*tiny_data, f"{group}={option}"])
    config = resolved_config(cfg)  # every interpolation resolves
    assert config["paths"]["output_dir"] == str(tmp_path / "run")

    if group == "data":
        datamodule = instantiate(cfg.data)
        assert isinstance(datamodule, L.LightningDataModule)
        assert datamodule.num_classes == {"cifar10": 10, "cifar100": 100, "imagenet": 1000, "synthetic": 10}[option]
    if group in CIM_SETTING_GROUPS or group in ("model", "experiment"):
        layer = layer_factory(cfg)(16, 32, 3, padding=1)
        if cfg.cim._target_ == "torch.nn.Conv2d":
            assert type(layer) is nn.Conv2d
        else:
            _assert_layer_matches_config(layer, cfg)
            assert layer(torch.randn(2, 16, 6, 6)).shape == (2, 32, 6, 6)
    if group in ("model", "experiment"):
        num_classes = instantiate(cfg.data).num_classes
        if cfg.model.get("init_from") is not None:  # the quick preset fine-tunes a float checkpoint: give it one
            torch.save(resnet20(num_classes=num_classes).state_dict(), tmp_path / "float.pt")
            cfg.model.init_from = str(tmp_path / "float.pt")
        net = build_net(cfg, num_classes)
        assert any(True for _ in cim_layers(net)) == (cfg.cim._target_ != "torch.nn.Conv2d")
        assert [m for m in net.modules() if isinstance(m, nn.Linear)][-1].out_features == num_classes
    if group == "schedule":
        schedule = instantiate(cfg.schedule)
        assert isinstance(schedule, QATSchedule)
        assert schedule.two_stage == (option == "two_stage")
    if group == "callbacks":
        callbacks = instantiate_all(cfg.callbacks)
        assert callbacks and all(isinstance(cb, L.Callback) for cb in callbacks)
    if group == "logger":
        loggers = instantiate_all(cfg.logger)
        assert len(loggers) == {"none": 0, "csv": 1, "wandb": 1, "many": 2}[option]
        for logger in loggers:  # inside the run directory
            assert Path(logger.save_dir).is_relative_to(tmp_path)
    if group in ("trainer", "debug", "experiment"):
        _check_trainer(cfg)
    if group in ("experiment", "debug", "granularity", "schedule") and option != "two_stage":
        validate_config(cfg)


def _assert_layer_matches_config(layer: nn.Module, cfg) -> None:
    assert isinstance(layer, CIMConv2d)
    assert (layer.w_bits, layer.a_bits) == (cfg.quant.w_bits, cfg.quant.a_bits)
    assert (layer.cell_bits, layer.adc_bits) == (cfg.cell.bits, cfg.adc.bits)
    assert layer.mapping.array_size == cfg.array.size
    assert layer.weight_granularity.name.lower() == cfg.granularity.weight
    assert layer.psum_granularity.name.lower() == cfg.granularity.psum
    assert layer.psum_quant == cfg.granularity.psum_quant


def _check_trainer(cfg) -> None:
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        assert cfg.trainer._target_ == "lightning.pytorch.Trainer"  # built on GPU machines only
        return
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer, L.Trainer)
    assert Path(trainer.default_root_dir) == Path(cfg.paths.output_dir)


def test_paper_settings_are_the_defaults(make_cfg) -> None:
    cfg = make_cfg([])
    assert cfg.model._target_ == "cimexp.models.resnet20"
    assert cfg.data._target_ == "cimexp.data.CIFAR10DataModule"
    assert dict(cfg.granularity) == {"weight": "column", "psum": "column", "psum_quant": True}
    assert (cfg.quant.w_bits, cfg.quant.a_bits, cfg.cell.bits, cfg.adc.bits, cfg.array.size) == (4, 4, 2, 4, 128)
    assert cfg.schedule.stage1_epochs == 0
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.1, 0.9, 5e-4)
    assert cfg.lr_schedule._target_.endswith("CosineAnnealingLR")
    assert cfg.seed == 0


def test_quant_defaults_are_set_in_exactly_one_place() -> None:
    """Bit widths and the array size are literal numbers only in their own groups; everything else interpolates."""
    pattern = re.compile(r"^\s*(w_bits|a_bits|cell_bits|adc_bits|array_size|bits|size)\s*:\s*\d+\s*$", re.M)
    offenders = [
        str(path.relative_to(CONF_DIR))
        for path in CONF_DIR.rglob("*.yaml")
        if path.parent.name not in ("quant", "cell", "adc", "array") and pattern.search(path.read_text())
    ]
    assert offenders == []


@pytest.mark.parametrize(
    ("overrides", "adc_bits"),
    [(["adc=3bit"], 3), (["adc.bits=3"], 3), (["adc=8bit", "adc.bits=2"], 2), ([], 4)],
)
def test_the_adc_preset_and_the_adc_key_set_one_setting(make_cfg, overrides: list[str], adc_bits: int) -> None:
    cfg = make_cfg(overrides)
    assert layer_factory(cfg)(16, 16, 3).adc_bits == adc_bits
    assert resolved_config(cfg)["adc"]["bits"] == adc_bits  # the record says what ran


def test_every_layer_setting_has_one_key_in_its_group(make_cfg) -> None:
    """The layer factory holds none of the settings; each comes from its group, and a copy added to the factory
    (``+cim.adc_bits=3``) that disagrees with its group is refused naming the group's key."""
    cfg = make_cfg([])
    assert not set(LAYER_SETTINGS) & set(cfg.cim)
    layer = layer_factory(cfg)(16, 16, 3)
    checked = [arg for arg, key in LAYER_SETTINGS.items() if hasattr(layer, arg) and not key.startswith("quantizer.")]
    for arg in checked:
        value = getattr(layer, arg)
        value = getattr(value, "name", value)  # enums (granularities, weight splits) by name
        assert str(value).lower() == str(OmegaConf.select(cfg, LAYER_SETTINGS[arg])).lower(), arg
    assert {"w_bits", "a_bits", "cell_bits", "adc_bits", "weight_granularity", "psum_granularity"} <= set(checked)
    with pytest.raises(ValueError, match=r"cim\.adc_bits=3 disagrees with adc\.bits=4.*set adc\.bits=3"):
        validate_config(make_cfg(["+cim.adc_bits=3"]))


def test_a_config_written_with_copies_in_the_layer_factory_builds_the_same_layer(make_cfg) -> None:
    """Configs recorded before the settings had one key carry copies in ``cim``; they build the layer they ran."""
    cfg = make_cfg(["adc.bits=3"])
    old = OmegaConf.to_container(cfg, resolve=True)
    old["cim"].update({arg: OmegaConf.select(cfg, key) for arg, key in LAYER_SETTINGS.items()})
    assert layer_settings(old) == layer_settings(cfg)


@pytest.mark.parametrize(
    ("overrides", "weight", "psum", "stage1_epochs"),
    [
        (["granularity=layer_layer"], "layer", "layer", 0),
        (["granularity=array_array"], "array", "array", 0),
        (["granularity=layer_array", "schedule=two_stage"], "layer", "array", 100),
        (["granularity=layer_column", "schedule=two_stage"], "layer", "column", 100),
        (["granularity=column_column"], "column", "column", 0),
        (["granularity=layer_column"], "layer", "column", 0),
        (["granularity=layer_column", "schedule=two_stage", "granularity.weight=column"], "column", "column", 100),
        (["granularity.weight=array", "granularity.psum=layer"], "array", "layer", 0),
        (
            ["experiment=paper_resnet20_cifar10", "granularity=layer_column", "schedule=two_stage"],
            "layer",
            "column",
            100,
        ),
        (["experiment=quick", "granularity=layer_layer"], "layer", "layer", 0),
    ],
)
def test_granularity_presets_and_overrides(make_cfg, overrides, weight, psum, stage1_epochs) -> None:
    cfg = make_cfg(overrides)
    assert (cfg.granularity.weight, cfg.granularity.psum, cfg.schedule.stage1_epochs) == (weight, psum, stage1_epochs)


def test_experiments_set_their_recipe(make_cfg) -> None:
    cifar100 = make_cfg(["experiment=paper_resnet20_cifar100"])
    assert cifar100.data._target_.endswith("CIFAR100DataModule")
    assert cifar100.trainer.max_epochs == 200 and cifar100.trainer.accelerator == "gpu"
    imagenet = make_cfg(["experiment=paper_resnet18_imagenet"])
    assert imagenet.model._target_.endswith("resnet18") and imagenet.optimizer.weight_decay == 1e-4
    quick = make_cfg(["experiment=quick"])
    assert quick.trainer.max_epochs == 1 and quick.trainer.accelerator == "cpu"
    assert quick.model.init_from.endswith("resnet20_cifar10_float.pt")
    float_ = make_cfg(["experiment=float_resnet20_cifar10"])
    assert float_.cim._target_ == "torch.nn.Conv2d" and float_.loss.label_smoothing == 0.1
    assert float_.lr_schedule._target_.endswith("OneCycleLR") and float_.lr_schedule.max_lr == float_.optimizer.lr
    authors = make_cfg(["experiment=authors_resnet20_cifar10"])
    assert (authors.optimizer.lr, authors.optimizer.weight_decay, authors.data.batch_size) == (0.01, 3e-3, 256)
    assert list(authors.no_weight_decay) == [] and authors.lr_schedule.T_max == 70 * math.ceil(50_000 / 256)


@pytest.mark.parametrize(
    ("overrides", "error", "words"),
    [
        (["granularity.weight=colum"], ValueError, ["granularity.weight", "colum", "layer, array, channel, column"]),
        (["granularity.psum=row"], ValueError, ["granularity.psum", "row", "layer, array, channel, column"]),
        (["cim=none", "granularity.psum=row"], ValueError, ["granularity.psum", "layer, array, channel, column"]),
        (["adc.bits=0"], ValueError, ["adc_bits", "valid"]),
        (["cim.weight_encoding=ones"], ValueError, ["ones", "twos_complement"]),
        (["loss.label_smoothing=1.5"], ValueError, ["loss.label_smoothing=1.5", "[0, 1)"]),
        (["no_weight_decay=[bn]"], ValueError, ["'bn'", "steps, norms, biases"]),
        (["schedule=two_stage", "trainer.max_epochs=100"], ValueError, ["stage1_epochs=100", "max_epochs=100"]),
        (["model.init_from=/nonexistent/float.ckpt"], FileNotFoundError, ["/nonexistent/float.ckpt", "init_from"]),
        (["model.kernels=fast"], ValueError, ["model.kernels", "fast", "auto, compiled, eager"]),
        (["calibration.psum=prc"], ValueError, ["calibration.psum", "'prc'", "max, percentile, lsq, mse"]),
        (["calibration.weight=percentile"], ValueError, ["calibration.weight", "'percentile'", "max, lsq, mse"]),
        (["calibration.percentile=0"], ValueError, ["calibration.percentile=0", "(0, 100]"]),
        (["calibration.batches=0"], ValueError, ["calibration.batches=0", "an integer >= 1"]),
        (["calibration.bn_batches=-1"], ValueError, ["calibration.bn_batches=-1", "an integer >= 0"]),
        (["optimizer.lr=abc"], ValueError, ["optimizer.lr='abc'", "a number"]),
        (["optimizer.momentum=-1"], ValueError, ["'momentum': -1", "Invalid momentum value: -1"]),
        (["lr_schedule.eta_min=x"], ValueError, ["lr_schedule", "'eta_min': 'x'"]),
        (["model.compile_mode=turbo"], ValueError, ["model.compile_mode", "turbo", "reduce-overhead"]),
        (["model.compile=yes"], ValueError, ["model.compile='yes'", "true, false, auto"]),
        (["checkpoint.every_minutes=0"], ValueError, ["checkpoint.every_minutes=0", "a number > 0, or null"]),
        (["checkpoint.every_n_steps=2.5"], ValueError, ["checkpoint.every_n_steps=2.5", "an integer >= 1, or null"]),
        (["cell.bits=5"], ValueError, ["cell_bits=5", "w_bits=4", "1..4"]),
        (["data.batch_size=abc"], ValueError, ["`data`", "batch_size='abc'", "an integer >= 1"]),
        (["data.eval_batch_size=0"], ValueError, ["eval_batch_size=0", "an integer >= 1 or null"]),
        (["data.num_workers=-1"], ValueError, ["num_workers=-1", "an integer >= 0"]),
        (["data.num_workers=two"], ValueError, ["num_workers='two'", "an integer >= 0"]),
        (["data.train_subset=60000"], ValueError, ["train_subset=60000", "[1, 50000] or null"]),
        (["data.val_subset=0"], ValueError, ["val_subset=0", "[1, 10000] or null"]),
        (["data=synthetic", "data.val_subset=1000"], ValueError, ["val_subset=1000", "[1, 128]"]),
        (["data=cifar100", "data.augment=maybe"], ValueError, ["augment='maybe'", "true, false"]),
        (["data.download=yes"], ValueError, ["download='yes'", "true, false"]),
        (["data=imagenet", "data.num_classes=0"], ValueError, ["num_classes=0", "an integer >= 1"]),
    ],
)
def test_validate_config_names_the_bad_value(make_cfg, overrides, error, words) -> None:
    cfg = make_cfg(overrides)
    with pytest.raises(error) as info:
        validate_config(cfg)
    for word in words:
        assert word in str(info.value)


def test_ddp_inside_a_multirun_is_refused(make_cfg) -> None:
    cfg = make_cfg(["trainer=ddp_sim"])
    validate_config(cfg)
    check_launch(cfg.trainer)  # a single run is fine
    with read_write(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig().set_config(cfg)
    with pytest.raises(ValueError, match="multirun"):
        check_launch(cfg.trainer)
    check_launch(make_cfg(["trainer=ddp_sim", "trainer.devices=1"]).trainer)


def test_two_stage_is_fine_with_enough_epochs_or_without_psum_quant(make_cfg) -> None:
    validate_config(make_cfg(["schedule=two_stage", "trainer.max_epochs=101"]))
    validate_config(make_cfg(["schedule=two_stage", "trainer.max_epochs=1", "granularity.psum_quant=false"]))
    validate_config(make_cfg(["schedule=two_stage", "debug=fdr"]))


def test_three_bit_cells_are_a_valid_setting(make_cfg) -> None:
    """cell.bits=3 with 4-bit weights: 1 + 3 bits, the MSB cell holding the sign bit (README: bit slicing)."""
    cfg = make_cfg(["cell.bits=3"])
    with pytest.warns(UserWarning, match="lone sign bit"):  # column-wise weight steps have not trained there
        validate_config(cfg)
    layer = layer_factory(cfg)(16, 16, 3, padding=1)
    assert layer.mapping.n_splits == 2 and layer.split_shift.tolist() == [-8, 1]
    assert layer.adc_min.tolist() == [[0, 0]] and layer.adc_max.tolist() == [[15, 15]]


@pytest.mark.parametrize(
    "overrides",
    [
        ["cell.bits=2"],
        ["cell.bits=3", "cim.weight_encoding=differential"],
        ["cell.bits=3", "granularity.weight=layer"],
        ["cell.bits=3", "granularity.weight=channel"],
    ],
)
def test_no_sign_bit_warning_where_column_steps_train(make_cfg, overrides) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*lone sign bit")
        validate_config(make_cfg(overrides))


def test_run_directories_say_what_ran() -> None:
    dirs = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "hydra" / "default.yaml"), resolve=False)
    assert "${hydra.job.num}" in dirs["sweep"]["subdir"]  # multirun jobs never share a directory
    assert "%f" in dirs["run"]["dir"] and "%f" in dirs["sweep"]["dir"]  # microseconds: no same-second collisions
    assert slug("model.init_from=/a/b.ckpt,adc=3bit") == "model.init_from=_a_b.ckpt,adc=3bit"
    assert slug("") == "default"
    assert len(slug("x" * 500)) <= 200


def test_the_quantizer_readings_are_spelled_alike_everywhere() -> None:
    """conf/quantizer/*.yaml, the runs table's readings (torch-free) and the layer's defaults agree."""
    from cimexp.cim.layer import DEFAULTS
    from cimexp.report.collect import QUANTIZER_READINGS
    from cimexp.run.config import config_dir

    for name, reading in QUANTIZER_READINGS.items():
        preset = OmegaConf.to_container(OmegaConf.load(config_dir() / "quantizer" / f"{name}.yaml"))
        assert {k: v for k, v in reading.items() if not k.startswith("decay_")} == preset["quantizer"], name
        exempt = set(preset.get("no_weight_decay", ["steps", "norms", "biases"]))
        assert reading["decay_steps"] == ("steps" not in exempt), name
    lsq = OmegaConf.to_container(OmegaConf.load(config_dir() / "quantizer" / "lsq.yaml"))["quantizer"]
    assert lsq == DEFAULTS


def test_the_vocabulary_is_what_the_configs_and_the_layer_speak(make_cfg) -> None:
    """The paper's settings are the default config's and the layer's; the granularities, schedules and quantizer
    readings are the names of the enum and of the config groups."""
    import inspect

    from cimexp.cim import CIMConv2d, Granularity
    from cimexp.cim.vocabulary import GRANULARITIES, PAPER_SETTINGS, QUANTIZER_READINGS, SCHEDULES

    settings = layer_settings(make_cfg([]))
    assert {key: settings[key] for key in PAPER_SETTINGS} == PAPER_SETTINGS
    defaults = {k: p.default for k, p in inspect.signature(CIMConv2d).parameters.items() if k in PAPER_SETTINGS}
    assert defaults == PAPER_SETTINGS
    assert tuple(g.name.lower() for g in Granularity) == GRANULARITIES
    assert tuple(sorted(p.stem for p in (CONF_DIR / "schedule").glob("*.yaml"))) == SCHEDULES
    assert set(QUANTIZER_READINGS) == {p.stem for p in (CONF_DIR / "quantizer").glob("*.yaml")}
