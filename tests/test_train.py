"""train(): real short trainings on synthetic data with loggers and checkpointing on, resume, QAT schedules."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from torch import nn
from torch.utils.data import DataLoader

import cimexp.run.classifier
import cimexp.run.summary
import cimexp.train
from cimexp.cim import Calibration, CIMConv2d, cim_layers
from cimexp.data import BatchTransform, SyntheticDataModule
from cimexp.models import resnet20
from cimexp.results import finished_results
from cimexp.run.build import build_net
from cimexp.run.callbacks import QATSchedule
from cimexp.run.classifier import ImageClassifier
from cimexp.run.optim import build_scheduler, weight_decay_split
from cimexp.train import train

STEPS_PER_EPOCH = 2  # TINY_DATA: 16 training images in batches of 8


class InOrderSynthetic(SyntheticDataModule):
    """Synthetic data, training batches in a fixed order and not augmented (epoch-independent batches)."""

    def train_dataloader(self) -> DataLoader:
        loader = super().train_dataloader()
        transform = BatchTransform(self.mean, self.std, augment=False)
        return DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False, collate_fn=transform)


@pytest.fixture
def run(make_cfg, tiny_data, quiet):
    """``run(overrides, subdir)``: train on tiny synthetic data into ``tmp_path / subdir``."""
    return lambda overrides, subdir: train(make_cfg([*tiny_data, *quiet, *overrides], subdir))


def _state(objects: dict) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in objects["module"].model.state_dict().items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("data", ["in_order", "shuffled_augmented"])
def test_train_logs_checkpoints_and_resumes_to_the_same_result(
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: str
) -> None:
    """Two epochs straight vs one epoch, then a resumed run from its last.ckpt: identical weights and metrics.

    The learning-rate schedule is pinned (``lr_schedule.T_max``) so that the shortened first run follows the same
    schedule as the full one, as a killed run would. With data in a fixed order without augmentation this checks
    the platform's part (model, CIM step sizes, optimizer, scheduler, loops and callback state); with the default
    shuffled and augmented data, also that epoch 1 sees the same batches after the resume.
    """
    summaries: list[dict] = []
    set_summary = cimexp.run.summary.log_summary
    monkeypatch.setattr(cimexp.train, "log_summary", lambda lg, res: summaries.append(set_summary(lg, res)))
    common = ["logger=many", f"lr_schedule.T_max={2 * STEPS_PER_EPOCH}"]
    if data == "in_order":
        common.append("data._target_=test_train.InOrderSynthetic")
    full_metrics, full = run([*common, "trainer.max_epochs=2"], "full")
    first_metrics, first = run([*common, "trainer.max_epochs=1"], "first")
    first_dir = tmp_path / "first"
    resumed_metrics, resumed = run(
        [*common, "trainer.max_epochs=2", f"ckpt_path={first_dir}/checkpoints/last.ckpt"], "resumed"
    )

    # the resumed run continued at epoch 1 and ended where the uninterrupted run ended
    assert first["trainer"].current_epoch == 1
    assert resumed["trainer"].current_epoch == full["trainer"].current_epoch == 2
    assert resumed["trainer"].global_step == full["trainer"].global_step == 2 * STEPS_PER_EPOCH
    full_state, resumed_state = _state(full), _state(resumed)
    assert full_state.keys() == resumed_state.keys()
    for key in full_state:
        assert torch.equal(full_state[key], resumed_state[key]), key
    for key in ("val/acc", "val/loss", "val/acc_best", "train/loss"):
        assert resumed_metrics[key] == full_metrics[key], key
    assert first_metrics["val/acc"] == full["results"]["history"][0]["val/acc"]

    # results.json: final + best metrics, history across the resume, CIM settings and costs
    results = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert results["status"] == "finished"
    assert results["epochs"] == 2 and results["global_step"] == 2 * STEPS_PER_EPOCH
    assert [r["epoch"] for r in results["history"]] == [0, 1]
    times = [r["cum_train_time_s"] for r in results["history"]]
    assert 0 < times[0] < times[1] == pytest.approx(results["train_time_s"])
    assert results["history"][0]["val/acc"] == first_metrics["val/acc"]  # epoch 0 came from the checkpoint
    assert results["final"]["val/acc"] == resumed_metrics["val/acc"]
    assert results["best"]["val/acc"] == pytest.approx(max(r["val/acc"] for r in results["history"]))
    assert results["cim"]["weight_granularity"] == "column" and results["cim"]["adc_bits"] == 4
    assert results["cim_summary"]["total"]["cim_layers"] == 18
    assert {"dequant_ops", "adc_conversions"} <= results["cim_summary"]["layers"][0].keys()
    assert results["git"].keys() == {"commit", "dirty"}
    assert results["compile"] is None  # model.compile=auto on a CPU: eager
    assert getattr(full["module"].model, "_compiled_call_impl", None) is None
    assert results == json.loads(json.dumps(results))  # plain JSON, written whole (atomic replace)

    # every run directory holds checkpoints, the resolved config, the git state and both loggers' files
    for run in ("full", "first", "resumed"):
        run_dir = tmp_path / run
        assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
        config = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
        assert config["adc"]["bits"] == 4 and config["paths"]["output_dir"] == str(run_dir)
        assert json.loads((run_dir / "git.json").read_text()).keys() == {"commit", "dirty"}
        assert "val/acc" in (run_dir / "csv" / "metrics.csv").read_text()
        wandb_runs = list((run_dir / "wandb").glob("offline-run-*"))
        assert len(wandb_runs) == 1, "one W&B run per job"
    assert not list(tmp_path.glob("**/.results.json.*.tmp"))

    # W&B (offline) got the resolved config, the run name from the overrides and the summary
    run = next(lg for lg in resumed["loggers"] if isinstance(lg, WandbLogger)).experiment
    assert run.config["granularity"] == {"weight": "column", "psum": "column", "psum_quant": True}
    assert run.config["adc"]["bits"] == 4 and "ckpt_path" in run.config
    assert "trainer.max_epochs=2" in run.name and not run.group  # a single run has no sweep group
    assert summaries[-1]["best/val/acc"] == results["best"]["val/acc"]
    assert summaries[-1]["cim/cim_layers"] == 18 and summaries[-1]["epochs"] == 2


def test_resume_from_run_directory_or_last(run, make_cfg, tiny_data, tmp_path: Path) -> None:
    """``ckpt_path=<run dir>`` and ``ckpt_path=last`` (in place) pick the run's last.ckpt; a float run's
    checkpoint initialises a CIM model."""
    run(["logger=none", "cim=none", "trainer.max_epochs=1"], "run")
    _, from_dir = run(["logger=none", "cim=none", "trainer.max_epochs=2", f"ckpt_path={tmp_path}/run"], "b")
    assert from_dir["trainer"].current_epoch == 2
    _, in_place = run(["logger=none", "cim=none", "trainer.max_epochs=2", "ckpt_path=last"], "run")
    assert in_place["trainer"].current_epoch == 2
    assert [r["epoch"] for r in in_place["results"]["history"]] == [0, 1]
    assert in_place["results"]["best"]["val/acc"] == max(r["val/acc"] for r in in_place["results"]["history"])

    # a float checkpoint of this platform initialises a CIM model (model.init_from)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert all(key.startswith("model.") for key in torch.load(ckpt, weights_only=False)["state_dict"])
    cim_net = build_net(make_cfg([*tiny_data, f"model.init_from={ckpt}"], "cim"), 10)
    float_net = in_place["module"].model
    assert isinstance(cim_net.layer3[2].conv2, CIMConv2d)
    assert torch.equal(cim_net.layer3[2].conv2.weight, float_net.layer3[2].conv2.weight)


def test_float_baseline_and_seed_zero(run, monkeypatch: pytest.MonkeyPatch) -> None:
    seeds = []
    monkeypatch.setattr(cimexp.train.L, "seed_everything", lambda seed, workers: seeds.append(seed))
    metrics, objects = run(["cim=none", "logger=csv", "trainer.max_epochs=1", "seed=0"], "float")
    assert seeds == [0]  # seed 0 is a seed
    assert not any(isinstance(m, CIMConv2d) for m in objects["module"].modules())
    assert objects["results"]["cim"] is None and objects["results"]["cim_summary"] is None
    assert 0.0 <= metrics["val/acc"] <= 1.0 and metrics["val/acc_best"] >= metrics["val/acc"]


def test_last_ckpt_holds_the_final_epoch_when_the_monitored_metric_did_not_improve(run, tmp_path: Path) -> None:
    """Regression: Lightning >= 2.6 writes a monitored checkpoint's `save_last` copy only in epochs that improved it,
    so a final epoch without a new best left last.ckpt behind (the 91% float run of 2026-12-03 lost its last 140
    steps that way). Monitoring `epoch` in `min` mode makes every epoch after the first a non-improving one."""
    overrides = ["cim=none", "logger=none", "trainer.max_epochs=3"]
    overrides += ["callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min"]
    _, objects = run(overrides, "last")
    checkpoints = tmp_path / "last" / "checkpoints"
    assert torch.load(checkpoints / "best.ckpt", weights_only=True)["epoch"] == 0
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == objects["trainer"].global_step
    final = _state(objects)
    saved = {k.removeprefix("model."): v for k, v in last["state_dict"].items()}
    assert all(torch.equal(saved[k], v) for k, v in final.items())
    assert objects["results"]["checkpoints"]["last"] == str(checkpoints / "last.ckpt")


class PsumProbe(L.Callback):
    """Records, for every training batch, whether the CIM layers quantize partial sums and have ADC steps set."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, bool, bool]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        layers = [layer for _, layer in cim_layers(pl_module)]
        quant = {layer.psum_quant for layer in layers}
        assert len(quant) == 1
        self.seen.append((trainer.current_epoch, quant.pop(), all(layer.psum_step_ready for layer in layers)))


def test_two_stage_switches_psum_quant_at_stage1_epochs(run) -> None:
    _, objects = run(
        [
            "logger=none",
            "granularity=layer_column",
            "schedule=two_stage",
            "schedule.stage1_epochs=1",
            "trainer.max_epochs=2",
            "+callbacks.probe._target_=test_train.PsumProbe",
        ],
        "two_stage",
    )
    probe = next(cb for cb in objects["callbacks"] if isinstance(cb, PsumProbe))
    assert probe.seen == [(0, False, False), (0, False, False), (1, True, True), (1, True, True)]
    assert objects["results"]["schedule"] == {"name": "two_stage", "stage1_epochs": 1, "stage2_started_epoch": 1}


def _tiny_cim_net() -> torch.nn.Module:
    return resnet20(conv_layer=CIMConv2d)


def test_run_status_marks_non_finite_results_as_diverged(tmp_path: Path) -> None:
    nan = float("nan")
    assert cimexp.results.run_status(False, {"val/acc": 0.8, "train/loss": 0.4}) == "finished"
    assert cimexp.results.run_status(False, {"val/acc": 0.1, "train/loss": nan}) == "diverged"
    assert cimexp.results.run_status(False, {"val/loss": float("inf"), "lr": 0.1}) == "diverged"
    assert cimexp.results.run_status(True, {"train/loss": nan}) == "interrupted"
    # a diverged run is done: a re-launched sweep returns it instead of training again
    (tmp_path / "results.json").write_text(json.dumps({"kind": "train", "status": "diverged", "final": {}}))
    assert finished_results(tmp_path, kind="train")["status"] == "diverged"
    (tmp_path / "results.json").write_text(json.dumps({"kind": "train", "status": "running"}))
    assert finished_results(tmp_path, kind="train") is None


def test_qat_schedule_unit() -> None:
    """Stage 1 off; the switch recalibrates once; a run resumed inside stage 2 keeps its checkpointed steps."""
    net = _tiny_cim_net()
    net(torch.randn(2, 3, 8, 8))  # initialise all steps
    layers = [layer for _, layer in cim_layers(net)]
    schedule = QATSchedule(stage1_epochs=2)
    for epoch, quant, ready in [(0, False, True), (1, False, True), (2, True, False)]:
        schedule.on_train_epoch_start(SimpleNamespace(current_epoch=epoch), net)
        assert all(layer.psum_quant == quant and layer.psum_step_ready == ready for layer in layers), epoch
    net(torch.randn(2, 3, 8, 8))  # the first stage-2 batch calibrates the ADC steps
    assert all(layer.psum_step_ready for layer in layers)

    resumed = QATSchedule(stage1_epochs=2)
    resumed.load_state_dict(schedule.state_dict())
    resumed.on_train_epoch_start(SimpleNamespace(current_epoch=3), net)
    assert all(layer.psum_quant and layer.psum_step_ready for layer in layers)

    one_stage = QATSchedule(stage1_epochs=0)
    for layer in layers:
        layer.psum_quant = True
    one_stage.on_train_epoch_start(SimpleNamespace(current_epoch=0), net)
    assert all(layer.psum_quant for layer in layers)
    no_psq = QATSchedule(stage1_epochs=2, psum_quant=False)
    assert not no_psq.two_stage


def test_no_weight_decay_on_step_sizes_norms_and_biases(make_cfg, tiny_data) -> None:
    cfg = make_cfg([*tiny_data])
    net = build_net(cfg, 10)
    decay, no_decay = weight_decay_split(net)
    assert decay and no_decay
    assert all(name.endswith("_step") or param.ndim <= 1 for name, param in no_decay.items())
    assert {"weight_step", "psum_step", "act_step"} <= {name.rpartition(".")[2] for name in no_decay}
    assert all(not name.endswith("_step") and param.ndim > 1 for name, param in decay.items())
    module = ImageClassifier(net, optimizer=instantiate(cfg.optimizer), scheduler=None, num_classes=10)
    optimizer = module.configure_optimizers()["optimizer"]
    assert [group["weight_decay"] for group in optimizer.param_groups] == [5e-4, 0.0]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(net.parameters()))


def test_no_weight_decay_lists_the_exempt_kinds(make_cfg, tiny_data) -> None:
    net = build_net(make_cfg([*tiny_data]), 10)
    decay, no_decay = weight_decay_split(net, ())
    assert not no_decay and len(decay) == len(list(net.parameters()))
    decay, no_decay = weight_decay_split(net, ("biases",))
    assert no_decay and all(name.endswith("bias") for name in no_decay)
    assert any(name.endswith("_step") for name in decay)


@pytest.mark.parametrize(
    ("scheduler", "given", "length"),
    [
        (torch.optim.lr_scheduler.CosineAnnealingLR, {"T_max": None}, ("T_max", 40)),
        (torch.optim.lr_scheduler.CosineAnnealingLR, {"T_max": 7}, ("T_max", 7)),
        (torch.optim.lr_scheduler.OneCycleLR, {"max_lr": 0.1, "total_steps": None}, ("total_steps", 40)),
        (torch.optim.lr_scheduler.OneCycleLR, {"max_lr": 0.1, "total_steps": 9}, ("total_steps", 9)),
    ],
)
def test_scheduler_length_defaults_to_the_runs_steps(scheduler, given, length) -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    built = build_scheduler(functools.partial(scheduler, **given), optimizer, total_steps=40)
    assert getattr(built, length[0]) == length[1]


def test_label_smoothing_smooths_the_training_loss_only() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    images, labels = torch.randn(8, 3, 2, 2), torch.arange(8) % 4
    module = ImageClassifier(net, optimizer=torch.optim.SGD, num_classes=4, label_smoothing=0.2)
    module.log = lambda *args, **kwargs: None
    module.trainer = SimpleNamespace(optimizers=[torch.optim.SGD(net.parameters(), lr=0.1)])
    loss = module.training_step((images, labels), 0)
    torch.testing.assert_close(loss, F.cross_entropy(net(images), labels, label_smoothing=0.2))


def test_init_from_loads_float_weights_into_the_cim_model(make_cfg, tiny_data, tmp_path: Path) -> None:
    float_net = resnet20(num_classes=10)
    torch.save({"state_dict": {f"model.{k}": v for k, v in float_net.state_dict().items()}}, tmp_path / "f.ckpt")
    net = build_net(make_cfg([*tiny_data, f"model.init_from={tmp_path}/f.ckpt"]), 10)
    assert isinstance(net.layer1[0].conv1, CIMConv2d)
    assert torch.equal(net.layer1[0].conv1.weight, float_net.layer1[0].conv1.weight)
    assert torch.equal(net.fc.weight, float_net.fc.weight)


def test_calibration_runs_where_the_model_is_not_on_the_trainers_device() -> None:
    """Lightning calls ``setup`` before it moves the model, while ``self.device`` already names the target device
    (``cuda:0`` with ``trainer=gpu``): the calibration batch must go where the parameters are. Here the module
    claims the ``meta`` device, so a batch sent to ``self.device`` cannot meet the CPU weights."""
    module = ImageClassifier(_tiny_cim_net(), optimizer=torch.optim.SGD)
    batch = (torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    module.trainer = SimpleNamespace(ckpt_path=None, datamodule=SimpleNamespace(train_dataloader=lambda: [batch]))
    module._device = torch.device("meta")

    module.setup("fit")

    layers = [layer for _, layer in cim_layers(module.model)]
    assert all(layer.act_step_ready and layer.psum_step_ready for layer in layers)
    assert all(p.device.type == "cpu" and bool(p.isfinite().all()) for p in module.model.parameters())


def test_calibration_config_reaches_setup(make_cfg, tiny_data, monkeypatch: pytest.MonkeyPatch) -> None:
    """``calibration.*``: the methods, the training batches the steps are calibrated on (one forward pass over
    them) and the batches of the BatchNorm re-estimation that ``ImageClassifier.setup`` then runs."""
    overrides = ["calibration.weight=max", "calibration.psum=percentile", "calibration.percentile=99.9"]
    cfg = make_cfg([*tiny_data, *overrides, "calibration.batches=2", "calibration.bn_batches=3"])
    settings = cimexp.run.config.calibration_settings(cfg.calibration)
    method = Calibration("max", "mse", "percentile", 99.9)
    assert settings == {"calibration": method, "calibration_batches": 2, "bn_batches": 3}
    module = ImageClassifier(_tiny_cim_net(), optimizer=torch.optim.SGD, **settings)
    batches = [(torch.rand(4, 3, 8, 8) + i, torch.zeros(4, dtype=torch.long)) for i in range(4)]
    module.trainer = SimpleNamespace(ckpt_path=None, datamodule=SimpleNamespace(train_dataloader=lambda: batches))
    calls = []
    calibrate = cimexp.run.classifier.calibrate
    spy = lambda net, x, **kw: calls.append((x, kw)) or calibrate(net, x, **kw)  # noqa: E731
    monkeypatch.setattr(cimexp.run.classifier, "calibrate", spy)

    module.setup("fit")

    ((inputs, kwargs),) = calls
    assert torch.equal(inputs, torch.cat([batches[0][0], batches[1][0]])) and kwargs["method"] == method
    assert all(layer.calibration == method for _, layer in cim_layers(module.model))
    assert int(module.model.layer1[0].bn1.num_batches_tracked) == 3  # re-estimated on 3 batches


def test_calibration_defaults_are_the_apis(make_cfg, tiny_data) -> None:
    """conf/calibration/default.yaml and ``Calibration()`` agree: mse everywhere, one batch, no BN re-estimation."""
    settings = cimexp.run.config.calibration_settings(make_cfg(tiny_data).calibration)
    assert settings == {"calibration": Calibration(), "calibration_batches": 1, "bn_batches": 0}


@pytest.mark.parametrize(
    ("device", "world_size", "variation_aware", "non_integer_operands", "mode"),
    [
        ("cuda", 1, False, False, "reduce-overhead"),
        ("cpu", 1, False, False, None),
        ("cuda", 2, False, False, None),
        ("cuda", 1, True, False, None),
        ("cuda", 1, False, True, None),
    ],
)
def test_auto_compile_uses_cuda_graphs_on_one_gpu_only(device, world_size, variation_aware, non_integer_operands, mode):
    """``model.compile=auto`` (the default): CUDA graphs on one GPU, where they were measured 4x faster; eager on a
    CPU, on several processes, under variation-aware training and where TF32 must be switched off per layer."""
    args = (torch.device(device), world_size)
    flags = {"variation_aware": variation_aware, "non_integer_operands": non_integer_operands}
    assert cimexp.run.config.auto_compile_mode(*args, **flags) == mode


@pytest.mark.parametrize(
    ("overrides", "mode"),
    [
        ([], "auto"),
        (["model.compile=false"], None),
        (["model.compile=true"], "default"),
        (["model.compile=true", "model.compile_mode=reduce-overhead"], "reduce-overhead"),
        (["variation.train_sigma=0.1"], "auto"),
    ],
)
def test_model_compile_reaches_the_module(make_cfg, tiny_data, overrides, mode) -> None:
    """The ``model`` node's ``compile``/``compile_mode`` become the module's ``compile_mode``; variation-aware
    training is passed on, so that ``auto`` can stay eager under it."""
    cfg = make_cfg([*tiny_data, *overrides])
    module = ImageClassifier.from_config(cfg, build_net(cfg, 10), 10, config={}, hashed_config={})
    assert module.compile_mode == mode
    assert module.variation_aware == (cfg.variation.train_sigma > 0)


@pytest.mark.slow  # ~2 min of tracing on 2 cores; tests/models (slow tier too) compiles the CIM ResNet-20 itself
def test_model_compile_compiles_the_calibrated_network(run, monkeypatch: pytest.MonkeyPatch) -> None:
    """``model.compile=true``: the network is compiled after ``setup``'s calibration (so no graph holds the step
    initialisation), with the configured mode; training runs through it and checkpoints keep their plain keys.
    Inductor is swapped for the ``aot_eager`` backend here: the same tracing, without minutes of code generation."""
    calls = []
    original = torch.nn.Module.compile

    def compile_spy(self, *args, **kwargs):
        layers = [layer for _, layer in cim_layers(self)]
        calls.append((kwargs.get("mode"), all(layer.psum_step_ready and layer.act_step_ready for layer in layers)))
        return original(self, backend="aot_eager", fullgraph=True)

    monkeypatch.setattr(torch.nn.Module, "compile", compile_spy)
    metrics, objects = run(["model.compile=true", "model.compile_mode=max-autotune", "logger=csv"], "compiled")
    assert calls == [("max-autotune", True)]
    assert objects["results"]["compile"] == "max-autotune"
    assert objects["results"]["status"] == "finished" and math.isfinite(metrics["train/loss"])
    keys = torch.load(objects["results"]["checkpoints"]["last"], weights_only=False)["state_dict"]
    assert keys and not any("_orig_mod" in key for key in keys)
