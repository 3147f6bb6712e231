"""The paper's sweeps (experiments/sweep/): every job composes and validates, deterministic job directories, the
variation sweeps find the grid's checkpoints, re-launched jobs skip or resume, launchers, ``data.val_subset``."""

from __future__ import annotations

import json
import os
import signal
from importlib import resources
from pathlib import Path

import pytest
import torch
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write

import cimexp.evaluate
import cimexp.run.classifier
import cimexp.train
from cimexp.data import SyntheticDataModule
from cimexp.models import resnet20
from cimexp.run.config import check_launch
from cimexp.run.config import validate_train as validate_config
from cimexp.run.provenance import resolved_config
from cimexp.train import train

EXPERIMENTS_DIR = Path(str(resources.files("cimexp.experiments")))
SWEEPS = sorted(
    str(p.relative_to(EXPERIMENTS_DIR / "sweep").with_suffix("")) for p in EXPERIMENTS_DIR.glob("sweep/*/*.yaml")
)
EVALUATE_SWEEPS = ("variation/", "adc_noise/")
JOBS = {
    "granularity_grid/quick": 13,
    "granularity_grid/full": 26,
    "dequant/quick": 13,
    "dequant/full": 13,
    "qat_schedules/quick": 4,
    "qat_schedules/full": 4,
    "variation/quick": 72,
    "variation/full": 120,
    "imagenet_table3/full": 6,
    "adc_energy/quick": 8,
    "noise_aware/quick": 2,
    "variation_aware/quick": 2,
    "adc_noise/quick": 24,
    "granularity_grid/medium": 24,
    "granularity_grid/medium_3bit": 18,
    "granularity_grid/medium_3bit_mse": 18,
    "qat_schedules/medium": 9,
    "variation/medium": 270,
    "granularity_grid/medium_authors": 24,
    "granularity_grid/medium_weight_grad_scale": 6,
    "granularity_grid/medium_untied_lsq": 3,
    "granularity_grid/medium_tied_authors": 3,
    "granularity_grid/medium_3epochs": 9,
}


def sweep_batch(compose, output_dir: Path, sweep: str, extra: tuple[str, ...] = ()) -> tuple[str, list[list[str]]]:
    """``(config name, overrides of every job)`` of ``sweep=<sweep>`` as Hydra's basic sweeper splits them (its
    params, then the command-line overrides ``extra``, which may sweep lists such as ``seed=0,1,2``); composes only
    the sweep's own config.

    Evaluation sweeps: only the jobs of the first ``variation.sigma`` and ``variation.seed`` (these change no config
    but their own value, and composing costs ~0.1 s a job).
    """
    config_name = "evaluate" if sweep.startswith(EVALUATE_SWEEPS) else "train"
    single = [o for o in extra if "," not in o.partition("=")[2] or o.partition("=")[2][:1] in "'\""]
    master = compose([f"sweep={sweep}", *single], output_dir, config_name)  # without the command line's lists
    params = {key: value for key, value in master.hydra.sweeper.params.items()}
    for key in ("variation.sigma", "variation.seed"):
        if key in params and not any(o.startswith(f"{key}=") for o in extra):
            params[key] = params[key].split(",")[0]
    parser = OverridesParser.create()
    overrides = parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + [f"sweep={sweep}", *extra])
    (batch,) = BasicSweeper.split_arguments(overrides, None)
    return config_name, batch


def compose_job(compose, output_dir: Path, config_name: str, job_overrides: list[str]) -> tuple[DictConfig, Path]:
    """``(config, job directory)`` of one job of a sweep, composed as a multirun job; Hydra's runtime config is left
    set to it."""
    cfg = compose(job_overrides, output_dir, config_name)
    with read_write(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig().set_config(cfg)
    job_dir = Path(cfg.hydra.sweep.dir) / cfg.hydra.sweep.subdir
    with read_write(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(job_dir)
    HydraConfig().set_config(cfg)
    return cfg, job_dir


def sweep_jobs(compose, output_dir: Path, sweep: str, extra: tuple[str, ...] = ()) -> list[tuple[DictConfig, Path]]:
    """``(config, job directory)`` of every job of ``sweep=<sweep>`` (:func:`sweep_batch`, :func:`compose_job`);
    Hydra's runtime config is left set to the last job's."""
    config_name, batch = sweep_batch(compose, output_dir, sweep, extra)
    return [compose_job(compose, output_dir, config_name, job_overrides) for job_overrides in batch]


def validate_job(sweep: str, cfg: DictConfig) -> None:
    """Validate a job's config as its entry point does before any data is loaded."""
    HydraConfig().set_config(cfg)
    if sweep.startswith(EVALUATE_SWEEPS):
        cimexp.run.config.validate_evaluate(cfg)
    else:
        validate_config(cfg)


def check_job(sweep: str, config: dict, job_dir: Path) -> None:
    """A job's directory is named by its overrides under its sweep's folder, and it runs where its preset says."""
    name, preset = sweep.split("/")
    grid = "granularity_grid" if name == "dequant" else name
    assert job_dir.parent == Path(config["paths"]["log_dir"]) / "sweeps" / grid / preset
    assert "sweep=" not in job_dir.name and "=" in job_dir.name
    if sweep.startswith(EVALUATE_SWEEPS):
        assert config["variation"] == {"sigma": 0, "seed": 0, "level": "weight"}  # eq. 5
    elif preset.startswith(("quick", "medium")):  # the CPU presets fine-tune a float network
        assert config["model"]["init_from"].endswith("float.pt") and config["trainer"]["accelerator"] == "cpu"
    else:
        assert config["model"]["init_from"] is None and config["trainer"]["accelerator"] == "gpu"


SIGMAS_X_SEEDS = {"variation/quick": 6 * 3, "variation/full": 6 * 5, "variation/medium": 6 * 3}
"""Jobs of an evaluation sweep per composed job (``sweep_batch`` keeps the first sigma and variation seed)."""


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_has_its_jobs_and_its_first_and_last_job_validate(
    sweep: str, compose_app, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default tier's check of every sweep: its job count, and its first and last jobs compose and validate
    (every job: the slow tier's ``test_every_job_of_every_sweep_composes_and_validates``)."""
    torch.save(resnet20(num_classes=10).state_dict(), tmp_path / "float.pt")
    monkeypatch.setenv("CIMEXP_FLOAT_CKPT", str(tmp_path / "float.pt"))
    config_name, batch = sweep_batch(compose_app, tmp_path, sweep)
    assert len(batch) * SIGMAS_X_SEEDS.get(sweep, 1) == JOBS[sweep]
    for job_overrides in (batch[0], batch[-1]):
        cfg, job_dir = compose_job(compose_app, tmp_path, config_name, job_overrides)
        validate_job(sweep, cfg)
        check_job(sweep, resolved_config(cfg), job_dir)
    GlobalHydra.instance().clear()
    assert set(JOBS) == set(SWEEPS)


@pytest.fixture(scope="module")
def composed(tmp_path_factory, compose_app) -> dict[str, list[tuple[dict, Path]]]:
    """Every sweep's jobs (see ``sweep_jobs``), each validated as its entry point does before any data is loaded:
    ``{sweep: [(resolved config, job directory), ...]}``. The quick presets fine-tune from a float checkpoint given
    by ``$CIMEXP_FLOAT_CKPT``."""
    root = tmp_path_factory.mktemp("sweeps")
    torch.save(resnet20(num_classes=10).state_dict(), root / "float.pt")
    jobs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIMEXP_FLOAT_CKPT", str(root / "float.pt"))
        for sweep in SWEEPS:
            jobs[sweep] = []
            for cfg, job_dir in sweep_jobs(compose_app, root, sweep):
                validate_job(sweep, cfg)
                jobs[sweep].append((resolved_config(cfg), job_dir))
    GlobalHydra.instance().clear()
    return jobs


@pytest.mark.slow  # composing all ~270 jobs: ~2 min
@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_job_of_every_sweep_composes_and_validates(sweep: str, composed) -> None:
    jobs = composed[sweep]
    assert len(jobs) * SIGMAS_X_SEEDS.get(sweep, 1) == JOBS[sweep]
    dirs = [job_dir for _, job_dir in jobs]
    assert len(set(dirs)) == len(dirs)  # one directory per job, named by its overrides only
    for config, job_dir in jobs:
        check_job(sweep, config, job_dir)


@pytest.mark.slow  # every job of the sweeps it reads, composed (the `composed` fixture: ~2 min for all)
@pytest.mark.parametrize("preset", ["quick", "medium", "full"])
def test_variation_sweep_reads_the_granularity_grid_checkpoints(preset: str, composed) -> None:
    grid = {
        f"{c['granularity']['weight']}_{c['granularity']['psum']}": job_dir
        for c, job_dir in composed[f"granularity_grid/{preset}"]
        if c["data"]["_target_"].endswith("CIFAR10DataModule")
        and c["cim"]["_target_"].endswith("CIMConv2d")
        and c["granularity"]["psum_quant"]
    }
    read = {c["grid_scheme"]: Path(c["ckpt"]) for c, _ in composed[f"variation/{preset}"]}
    schemes = ["layer_layer", "layer_array", "layer_column", "column_column"]
    if preset == "medium":
        schemes.append("channel_column")  # beyond the paper
    assert read == {s: grid[s] for s in schemes}


@pytest.mark.slow  # every job of the sweeps it reads, composed (the `composed` fixture: ~2 min for all)
def test_adc_noise_sweep_reads_plain_and_noise_aware_checkpoints(composed) -> None:
    def same_granularity(config: dict) -> bool:
        granularity = config["granularity"]
        is_cim = config["cim"]["_target_"].endswith("CIMConv2d") and granularity["psum_quant"]
        return is_cim and granularity["weight"] == granularity["psum"] in ("layer", "column")

    plain = {d for c, d in composed["granularity_grid/quick"] if same_granularity(c)}
    noise_aware = {d for _, d in composed["noise_aware/quick"]}
    assert len(plain) == len(noise_aware) == 2
    assert {Path(c["ckpt"]) for c, _ in composed["adc_noise/quick"]} == plain | noise_aware
    assert {c["adc"]["noise_lsb"] for c, _ in composed["noise_aware/quick"]} == {0.5}
    assert {tuple(c["variation"].values()) for c, _ in composed["variation_aware/quick"]} == {(0.2, "weight")}
    adc_bits = {(c["granularity"]["weight"], c["adc"]["bits"]) for c, _ in composed["adc_energy/quick"]}
    assert adc_bits == {(w, b) for w in ("layer", "column") for b in (2, 3, 4, 5)}


@pytest.mark.slow  # every job of the sweeps it reads, composed (the `composed` fixture: ~2 min for all)
def test_dequant_reuses_the_granularity_grid_runs(composed) -> None:
    assert {d for _, d in composed["dequant/quick"]} == {d for _, d in composed["granularity_grid/quick"]}
    dequant_full = {d for c, d in composed["dequant/full"]}
    assert dequant_full < {d for _, d in composed["granularity_grid/full"]}
    assert {c["data"]["_target_"] for c, _ in composed["dequant/full"]} == {"cimexp.data.CIFAR100DataModule"}


@pytest.mark.slow  # every job of the sweeps it reads, composed (the `composed` fixture: ~2 min for all)
def test_sweep_presets_set_the_paper_settings(composed, compose_app, tmp_path: Path) -> None:
    grid = [c for c, _ in composed["granularity_grid/quick"]]
    schemes = {(c["cim"]["_target_"], *c["granularity"].values()) for c in grid}
    assert len(schemes) == 13
    assert sum(c["cim"]["_target_"] == "torch.nn.Conv2d" for c in grid) == 1
    cim = [c for c in grid if c["cim"]["_target_"] != "torch.nn.Conv2d"]
    assert sum(not c["granularity"]["psum_quant"] for c in cim) == 3  # the w/o-PSQ line per weight granularity
    qat = [c for c, _ in composed["qat_schedules/quick"]]
    cases = {(c["granularity"]["weight"], c["granularity"]["psum"], c["schedule"]["stage1_epochs"]) for c in qat}
    assert cases == {(w, "column", s) for w in ("column", "layer") for s in (0, 3)}
    assert {c["trainer"]["max_epochs"] for c in qat} == {6} and {c["data"]["val_subset"] for c in qat} == {2000}
    table3 = [c for c, _ in composed["imagenet_table3/full"]]
    assert {c["model"]["_target_"] for c in table3} == {"cimexp.models.resnet18"}
    assert {c["schedule"]["stage1_epochs"] for c in table3} == {0}  # one-stage QAT, as in the paper's Sec. IV-A
    assert {c["data"]["val_subset"] for c, _ in composed["variation/quick"]} == {2000}
    master = compose_app(["sweep=variation/quick"], tmp_path, "evaluate").hydra.sweeper.params
    assert master["variation.sigma"] == "0,0.1,0.2,0.3,0.4,0.5" and master["variation.seed"] == "0,1,2"
    GlobalHydra.instance().clear()


@pytest.mark.slow  # every job of the sweeps it reads, composed (the `composed` fixture: ~2 min for all)
def test_the_medium_sweeps_run_the_issue_s_configurations(composed) -> None:
    """Fig. 7 core at a 4-bit ADC (7 schemes, and channel/column beyond the paper), the 5 partial-sum-quantized ones
    at 3 bits, Fig. 9 as the paper's pair (column/column one-stage against layer/column two-stage, same epochs), all
    from experiment=medium, 3 seeds."""

    def scheme(c: dict) -> str:
        if c["cim"]["_target_"] == "torch.nn.Conv2d":
            return "float"
        g = c["granularity"]
        return f"{g['weight']}_{g['psum'] if g['psum_quant'] else 'nopsq'}"

    four = [c for c, _ in composed["granularity_grid/medium"]]
    psq = ["layer_layer", "array_array", "layer_array", "layer_column", "column_column"]
    assert sorted((scheme(c), c["seed"]) for c in four) == sorted(
        (s, seed) for s in [*psq, "channel_column", "column_nopsq", "float"] for seed in (0, 1, 2)
    )
    three = [c for c, _ in composed["granularity_grid/medium_3bit"]]
    psq.append("channel_column")  # beyond the paper
    assert sorted((scheme(c), c["seed"]) for c in three) == sorted((s, seed) for s in psq for seed in (0, 1, 2))
    assert {c["adc"]["bits"] for c in four} == {4} and {c["adc"]["bits"] for c in three} == {3}
    # the follow-up differs from the 3-bit grid in the partial sums' calibration only
    follow_up = [  # its jobs' directories aside
        json.loads(json.dumps(c, default=str).replace("medium_3bit_mse", "medium_3bit"))
        for c, _ in composed["granularity_grid/medium_3bit_mse"]
    ]
    differ = {key for a, b in zip(three, follow_up, strict=True) for key in {*a, *b} if a.get(key) != b.get(key)}
    assert differ == {"calibration"} and {c["calibration"]["psum"] for c in follow_up} == {"mse"}
    assert {c["calibration"]["psum"] for c in three} == {"percentile"}
    qat = [c for c, _ in composed["qat_schedules/medium"]]
    cases = {(scheme(c), c["schedule"]["stage1_epochs"], c["trainer"]["max_epochs"]) for c in qat}
    assert cases == {("column_column", 0, 2), ("layer_column", 1, 2), ("channel_column", 0, 2)}
    medium = four + three + qat
    assert {c["tags"][0] for c in medium} == {"medium"} and {c["data"]["train_subset"] for c in medium} == {None}
    assert {c["trainer"]["max_epochs"] for c in four + three} == {1}


@pytest.mark.slow  # every job of the sweeps it reads, composed (the `composed` fixture: ~2 min for all)
def test_the_readings_sweeps_differ_from_the_medium_grid_only_as_declared(composed) -> None:
    """Issue "The authors' reading": every job of the readings sweeps equals the medium 4-bit grid's job of the same
    scheme and seed except in the quantizer settings it declares (and the 3-epoch sweep in its length)."""

    def key(c: dict) -> tuple:
        g = c["granularity"]
        return g["weight"], g["psum"], g["psum_quant"], c["cim"]["_target_"], c["seed"]

    def scrubbed(c: dict, job_dir: Path) -> dict:  # job directories and run names aside
        c = json.loads(json.dumps(c, default=str).replace(str(job_dir), "<job dir>"))
        del c["logger"]
        return c

    grid = {key(c): (c, job_dir) for c, job_dir in composed["granularity_grid/medium"]}
    authors = {"weight_grad_scale": 1e-4, "act_grad_scale": 0.0, "psum_grad_scale": 1e-2, "weight_splits": "per_split",
               "slice_gradient": "lowest_split"}  # fmt: skip
    reading = {"calibration.weight": "mean_abs", "no_weight_decay": []}
    expected = {
        "granularity_grid/medium_authors": ({"quantizer": authors, **reading}, 24),
        "granularity_grid/medium_weight_grad_scale": ({"quantizer.weight_grad_scale": 1e-4}, 6),
        "granularity_grid/medium_untied_lsq": ({"quantizer.weight_splits": "per_split"}, 3),
        "granularity_grid/medium_tied_authors": (
            {"quantizer": {**authors, "weight_splits": "shared"}, **reading},
            3,
        ),
        "granularity_grid/medium_3epochs": ({"trainer.max_epochs": 3}, 9),
    }  # fmt: skip
    for sweep, (changes, n_jobs) in expected.items():
        jobs = composed[sweep]
        assert len(jobs) == n_jobs
        for job, job_dir in jobs:
            grid_job, grid_dir = grid[key(job)]
            want = scrubbed(grid_job, grid_dir)
            for dotted, value in changes.items():
                *parents, leaf = dotted.split(".")
                node = want
                for parent in parents:
                    node = node[parent]
                node[leaf] = value if not isinstance(value, dict) else {**node[leaf], **value}
            if isinstance(want["cim"], dict) and "weight_splits" in want["cim"]:  # the layer factory reads them
                want["cim"].update(want["quantizer"])
            assert scrubbed(job, job_dir) == want, sweep


def test_sweep_command_line_overrides_pick_jobs(compose_app, tmp_path: Path) -> None:
    """A swept key given on the command line replaces the sweep's values: one job of a sweep."""
    ((_, job_dir),) = sweep_jobs(
        compose_app, tmp_path, "qat_schedules/quick", ("granularity=layer_column", "schedule.stage1_epochs=3")
    )
    assert job_dir.name == "granularity=layer_column,schedule.stage1_epochs=3,seed=0"
    extra = ("grid_scheme=layer_array", "variation.sigma=0.3", "variation.seed=1")
    ((_, job_dir),) = sweep_jobs(compose_app, tmp_path, "variation/quick", extra)
    assert job_dir.name == "grid_scheme=layer_array,train_seed=0,variation.seed=1,variation.sigma=0.3"
    GlobalHydra.instance().clear()


def test_every_sweep_lists_its_seeds(compose_app, tmp_path: Path) -> None:
    """Training sweeps sweep ``seed``, evaluation sweeps the training seed of their checkpoints (``train_seed``): one
    seed by default, a list on the command line (``seed=0,1,2``)."""
    for sweep in SWEEPS:
        config_name = "evaluate" if sweep.startswith(EVALUATE_SWEEPS) else "train"
        params = compose_app([f"sweep={sweep}"], tmp_path, config_name).hydra.sweeper.params
        key = "train_seed" if config_name == "evaluate" else "seed"
        seeds = "0,1,2" if sweep.split("/")[1].startswith("medium") else "0"  # the medium study: 3 seeds each
        assert str(params.get(key)) == seeds, (sweep, dict(params))
    GlobalHydra.instance().clear()


def test_seed_lists_give_every_seed_its_own_job_directory(compose_app, tmp_path: Path) -> None:
    """``seed=0,1,2``: three jobs per scheme, each in a directory that names its seed (no two seeds collide), and the
    variation sweep with ``train_seed=0,1,2`` reads each seed's checkpoint."""
    jobs = sweep_jobs(compose_app, tmp_path, "granularity_grid/quick", ("granularity=column_column", "seed=0,1,2"))
    names = [job_dir.name for _, job_dir in jobs]
    assert names == [f"granularity=column_column,seed={seed}" for seed in (0, 1, 2)]
    assert [cfg.seed for cfg, _ in jobs] == [0, 1, 2]
    grid_dirs = [job_dir for _, job_dir in jobs]
    extra = ("grid_scheme=column_column", "train_seed=0,1,2")
    evaluations = sweep_jobs(compose_app, tmp_path, "variation/quick", extra)
    read = []
    for cfg, job_dir in evaluations:
        HydraConfig().set_config(cfg)
        read.append(Path(resolved_config(cfg)["ckpt"]))
        assert f"train_seed={cfg.train_seed}," in job_dir.name
    assert read == grid_dirs and len({job_dir for _, job_dir in evaluations}) == 3
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("launcher", ["parallel", "slurm"])
def test_launchers_compose(launcher: str, make_cfg) -> None:
    cfg = make_cfg(["sweep=granularity_grid/full", f"hydra/launcher={launcher}"])
    target = {"parallel": "JoblibLauncher", "slurm": "SlurmLauncher"}[launcher]
    assert cfg.hydra.launcher._target_.endswith(target)
    OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_slurm_jobs_are_requeued_by_lightnings_slurm_plugin(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    """``trainer=slurm`` gives the Trainer Lightning's SLURM environment with auto-requeue on SIGUSR1, which
    ``hydra/launcher=slurm`` asks SLURM to send before the time limit; inside a job, Lightning then handles SIGUSR1."""
    import signal

    from hydra.utils import instantiate
    from lightning.fabric.plugins.environments import SLURMEnvironment

    cfg = make_cfg(["trainer=slurm", "hydra/launcher=slurm"])
    assert cfg.hydra.launcher.additional_parameters.signal.startswith("USR1@")
    slurm_job = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "cimexp", "SLURM_JOB_ID": "7", "SLURM_PROCID": "0"}
    for name, value in {**slurm_job, "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(name, value)
    # Built on the CPU of any machine: the cluster environment is what counts here.
    trainer = instantiate(cfg.trainer, accelerator="cpu", logger=False)
    environment = trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment)
    assert environment.auto_requeue and environment.requeue_signal == signal.SIGUSR1
    before = signal.getsignal(signal.SIGUSR1)
    trainer._signal_connector.register_signal_handlers()
    try:
        assert signal.getsignal(signal.SIGUSR1) is not before  # Lightning's requeue handler
    finally:
        trainer._signal_connector.teardown()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_ddp_in_a_multirun_is_fine_under_slurm(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    """SLURM starts the DDP ranks itself (tasks_per_node), so Lightning does not re-run the command line."""
    cfg = make_cfg(["trainer=ddp_sim"])
    with read_write(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig().set_config(cfg)
    with pytest.raises(ValueError, match="multirun"):
        check_launch(cfg.trainer)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "cimexp")
    check_launch(cfg.trainer)


TINY = ["data=synthetic", "data.image_size=8", "data.train_size=16", "data.val_size=16", "data.batch_size=8"]
QUIET = ["logger=none", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
FLOAT = ["cim=none"]  # skipping and resuming do not depend on the layers; CIM step calibration costs seconds


def test_relaunched_job_skips_when_finished_and_resumes_when_killed(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "job"
    train(make_cfg([*TINY, *QUIET, *FLOAT, "trainer.max_epochs=2"], "job"))
    finished = json.loads((run_dir / "results.json").read_text())
    assert finished["kind"] == "train" and finished["status"] == "finished"

    # launched again: the stored metrics, nothing trained or written
    stamp = (run_dir / "results.json").stat().st_mtime_ns
    with monkeypatch.context() as patch:
        patch.setattr(cimexp.train, "validate_train", lambda cfg: pytest.fail("a finished job ran again"))
        again_metrics, again = train(make_cfg([*TINY, *QUIET, *FLOAT, "trainer.max_epochs=2"], "job"))
    assert again_metrics == finished["final"] and again.keys() == {"cfg", "results"}
    assert again["results"] == finished and (run_dir / "results.json").stat().st_mtime_ns == stamp

    # stopped in epoch 1 (Ctrl-C after epoch 0: last.ckpt after the next batch, results.json "interrupted"):
    # launched again with the same settings, it resumes and ends as the uninterrupted run
    killed = tmp_path / "killed"

    def interrupt_after_epoch_0(module) -> None:
        if module.current_epoch == 0:
            os.kill(os.getpid(), signal.SIGINT)  # RecoveryCheckpoint's handler, not pytest's, while training

    with monkeypatch.context() as patch, pytest.raises(SystemExit):
        patch.setattr(
            cimexp.run.classifier.ImageClassifier, "on_train_epoch_end", interrupt_after_epoch_0, raising=False
        )
        train(make_cfg([*TINY, *QUIET, *FLOAT, "trainer.max_epochs=2"], "killed"))
    assert json.loads((killed / "results.json").read_text())["status"] == "interrupted"
    _, resumed = train(make_cfg([*TINY, *QUIET, *FLOAT, "trainer.max_epochs=2"], "killed"))
    assert resumed["trainer"].current_epoch == 2 and resumed["trainer"].global_step == 4
    history = resumed["results"]["history"]
    assert [r["epoch"] for r in history] == [0, 1]
    assert [r["val/acc"] for r in history] == [r["val/acc"] for r in finished["history"]]
    assert json.loads((killed / "results.json").read_text())["status"] == "finished"

    # an explicit ckpt_path always trains: continue a finished run for more epochs in place
    _, more = train(make_cfg([*TINY, *QUIET, *FLOAT, "trainer.max_epochs=3", "ckpt_path=last"], "job"))
    assert more["trainer"].current_epoch == 3
    GlobalHydra.instance().clear()


def test_val_subset_is_class_balanced_and_seeded() -> None:
    def subset(seed: int) -> torch.Tensor:
        dm = SyntheticDataModule(image_size=4, train_size=20, val_size=200, val_subset=30, seed=seed)
        dm.setup()
        return torch.as_tensor(dm.val_set.indices)

    dm = SyntheticDataModule(image_size=4, train_size=20, val_size=200, val_subset=30, seed=0)
    dm.setup()
    labels = torch.stack([dm.val_set[i][1] for i in range(len(dm.val_set))])
    assert len(dm.val_set) == 30 and torch.bincount(labels).tolist() == [3] * 10
    assert len(dm.train_set) == 20  # the training split is untouched
    assert torch.equal(subset(0), subset(0)) and not torch.equal(subset(0), subset(1))
    with pytest.raises(ValueError, match="invalid val_subset=0; valid values: an integer in"):
        SyntheticDataModule(val_subset=0)


# --- slow tier: each sweep's quick preset, one job, on synthetic data, as users type it --------------------------

SYNTHETIC = ["data=synthetic", "data.image_size=8", "data.train_size=32", "data.val_size=16", "data.batch_size=16"]
SMALL = ["data.train_subset=null", "data.val_subset=null", "trainer.enable_progress_bar=false", "logger=csv"]


@pytest.mark.slow
def test_quick_presets_run_one_job_each_on_synthetic_data(run_cli, tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    # the quick presets find the float checkpoint below the launch directory
    torch.save(resnet20(num_classes=10).state_dict(), tmp_path / "checkpoints" / "resnet20_cifar10_float.pt")

    def run(args: list[str], module: str = "cimexp.train") -> str:
        result = run_cli(args, cwd=tmp_path, timeout=600, module=module)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    sweeps = tmp_path / "logs" / "sweeps"
    job = ["granularity=column_column", *SYNTHETIC, *SMALL]
    run(["-m", "sweep=granularity_grid/quick", *job])
    (grid_job,) = [path.parent for path in (sweeps / "granularity_grid" / "quick").glob("*/results.json")]
    assert grid_job.name.startswith("granularity=column_column,")
    grid = json.loads((grid_job / "results.json").read_text())
    assert grid["kind"] == "train" and grid["cim"]["weight_granularity"] == "column" and grid["global_step"] == 2

    assert "finished before, not trained again" in run(["-m", "sweep=dequant/quick", *job])  # same directory

    run(["-m", "sweep=qat_schedules/quick", "granularity=layer_column", "schedule.stage1_epochs=1",
         "trainer.max_epochs=2", *SYNTHETIC, *SMALL])  # fmt: skip
    (qat_job,) = [path.parent for path in (sweeps / "qat_schedules" / "quick").glob("*/results.json")]
    qat = json.loads((qat_job / "results.json").read_text())
    assert qat["schedule"] == {"name": "two_stage", "stage1_epochs": 1, "stage2_started_epoch": 1}
    assert [r["epoch"] for r in qat["history"]] == [0, 1]

    variation = ["grid_scheme=column_column", "variation.sigma=0.2", "variation.seed=1", f"ckpt='{grid_job}'"]
    run(["-m", "sweep=variation/quick", *variation, *SYNTHETIC, "data.val_subset=null"], module="cimexp.evaluate")
    (evaluation,) = (sweeps / "variation" / "quick").glob("*/results.json")
    results = json.loads(evaluation.read_text())
    assert results["variation"] == {"sigma": 0.2, "seed": 1}
    assert results["train_results"]["run_dir"] == grid["run_dir"]

    run(["-m", "sweep=imagenet_table3/full", "granularity=layer_array", "trainer=cpu", "trainer.max_epochs=1",
         *SYNTHETIC, *SMALL])  # fmt: skip
    (table3,) = (sweeps / "imagenet_table3" / "full").glob("*/results.json")
    assert json.loads(table3.read_text())["model"] == "resnet18"
