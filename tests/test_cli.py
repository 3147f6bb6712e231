"""The command line exactly as users type it: `python -m cimexp.train ...` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra

import cimexp.run.config
from cimexp.run.config import validate_evaluate, validate_train
from cimexp.run.entry import UsageError, help_text, preflight, renamed_overrides, stray_addition
from cimexp.run.post_training import validate_post_training


def _output(result) -> str:
    return result.stdout + result.stderr


TYPOS = [
    ("granularity.weight=colum", ["granularity.weight", "'colum'", "layer, array, channel, column"]),
    ("model=resnet21", ["model=resnet21", "resnet18, resnet20"]),
    ("adc=9bit", ["adc=9bit", "1bit", "8bit"]),
    ("cell.bits=5", ["cell_bits=5", "1..4"]),  # cell.bits=3 is a real setting (README: sign-bit cells)
    ("array.size=7", ["array_size=7", ">= 9"]),
    ("cim.adc_bits=3", ["cim.adc_bits", "adc.bits=3"]),  # one key per setting
    ("adc.bitz=3", ["adc.bitz", "no such key", "bits, noise_lsb"]),
    ("granularity=kim", ["granularity=kim", "layer_layer", "column_column"]),  # a name from before the rename
    ("trainer.max_epochs=-5", ["trainer.max_epochs=-5", "integer >= -1"]),  # was Lightning's, once the run began
    ("optimizer.lr=abc", ["optimizer.lr='abc'", "a number"]),  # was "'<' not supported between 'str' and 'float'"
    ("quantizer.weight_grad_scale=big", ["weight_grad_scale='big'", "lsq", "a number >= 0"]),
    ("quantizer.weight_splits=untied", ["weight_splits 'untied'", "shared, per_split"]),
    ("quantizer=theirs", ["quantizer=theirs", "authors, lsq"]),
    ("calibration.weight=percentile", ["calibration.weight 'percentile'", "max, lsq, mse, mean_abs"]),
    # additions nothing reads: Hydra composes them silently, and the run would record a setting that never acted
    ("+scheme=layer_layer", ["+scheme=layer_layer", "nothing reads", "did you mean granularity=layer_layer"]),
    ("+granularity.weights=layer", ["granularity.weights", "nothing reads", "keys of granularity: weight, psum"]),
    ("++adc.bitz=3", ["adc.bitz", "nothing reads", "keys of adc: bits"]),
    # variation-aware training that nothing would apply
    ("callbacks=results variation.train_sigma=0.1", ["variation.train_sigma=0.1", "callbacks=default"]),
    ("granularity=float variation.train_sigma=0.1", ["variation.train_sigma=0.1", "cim=none"]),
]


@pytest.mark.parametrize(
    ("config_name", "sweep", "words"),
    [
        ("train", "sweep=granularity_grid/quik", ["sweep=granularity_grid/quik", "granularity_grid/quick"]),
        ("train", "sweep=variation/quick", ["sweep of cimexp-evaluate", "cimexp-evaluate -m sweep=variation/quick"]),
        ("evaluate", "sweep=granularity_grid/quick", ["sweep of cimexp-train", "cimexp-train -m"]),
    ],
)
def test_a_sweep_typo_lists_the_sweeps_and_another_command_s_sweep_names_that_command(
    config_name: str, sweep: str, words: list[str]
) -> None:
    validate = validate_train if config_name == "train" else cimexp.run.config.validate_evaluate
    message = _usage_error(config_name, [sweep], validate, multirun=True)
    assert len(message.splitlines()) == 1 and "_common" not in message, message
    for word in words:
        assert word in message, message


def _usage_error(config_name: str, overrides: list[str], validate, multirun: bool = False) -> str:
    """The message ``cimexp.run.entry.preflight`` stops the command line with (the entry point prints it after
    ``<prog>: error: `` and exits with code 2, as the subprocess tests below check once)."""
    with pytest.raises(UsageError) as caught:
        preflight(config_name, overrides, validate, multirun=multirun)
    GlobalHydra.instance().clear()
    return str(caught.value)


@pytest.mark.parametrize(("override", "words"), TYPOS, ids=[t[0] for t in TYPOS])
def test_a_typo_is_refused_in_one_line_naming_the_value_and_the_choices(
    tiny_data, tmp_path: Path, monkeypatch, override: str, words
) -> None:
    monkeypatch.chdir(tmp_path)
    message = _usage_error("train", [*override.split(), *tiny_data, "logger=csv"], validate_train)
    assert len(message.splitlines()) == 1, message
    for word in words:
        assert word in message, message
    assert list(tmp_path.iterdir()) == []  # no run directory, no log file


@pytest.mark.parametrize(
    "addition",
    [
        "+trainer.profiler=simple",  # to a constructor, which checks its arguments
        "+callbacks.probe._target_=lightning.pytorch.callbacks.Timer",  # a new instantiated node
        "++trainer.max_steps=2",  # a key that exists
        "hydra.job.chdir=false",
    ],
)
def test_additions_that_something_reads_pass(tiny_data, addition: str) -> None:
    assert stray_addition("train", [addition, *tiny_data]) is None
    GlobalHydra.instance().clear()


def test_a_typo_gives_one_line_exit_code_2_and_leaves_nothing_on_disk(run_cli, tiny_data, tmp_path: Path) -> None:
    """The whole path as a user meets it: the console script's message on stderr, exit code 2, nothing written."""
    override, words = TYPOS[0]
    result = run_cli([override, *tiny_data, "logger=csv"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2, _output(result)
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("cimexp-train: error: ")
    for word in words:
        assert word in line, line
    assert list(tmp_path.iterdir()) == []


def test_a_typo_in_one_job_of_a_multirun_stops_the_sweep_before_any_job(tiny_data, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    message = _usage_error("train", ["seed=0,1", "granularity.weight=layer,colum", *tiny_data], validate_train, True)
    assert len(message.splitlines()) == 1
    assert "granularity.weight=colum" in message and "layer, array, channel, column" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("config_name", "args", "words"),
    [
        ("evaluate", ["variation.sigma=0.1"], ["ckpt=<path> is required"]),
        ("evaluate", ["ckpt=x", "variation.levle=cell"], ["variation.levle", "no such key", "level"]),
        ("post_training", ["grid.weight=[colum]"], ["'colum'"]),
    ],
)
def test_every_hydra_entry_point_reports_typos_the_same_way(
    tmp_path: Path, monkeypatch, config_name, args, words
) -> None:
    monkeypatch.chdir(tmp_path)
    validate = {"evaluate": validate_evaluate, "post_training": validate_post_training}[config_name]
    message = _usage_error(config_name, args, validate)
    assert len(message.splitlines()) == 1
    for word in words:
        assert word in message, message
    assert list(tmp_path.iterdir()) == []


def test_help_lists_the_groups_the_sweeps_and_the_default_run(run_cli, tmp_path: Path) -> None:
    result = run_cli(["--help"], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, _output(result)
    out = result.stdout
    assert out.startswith("usage: cimexp-train ")
    assert "200 epochs" in out and "GPU recipe" in out and "experiment=quick" in out
    for group in ("experiment", "model", "data", "quant", "cell", "adc", "array", "granularity", "schedule"):
        assert f"\n  {group} " in out, group
    assert "column_column" in out and "layer_nopsq" in out and "float" in out
    for config_name, prog in [
        ("train", "cimexp-train"),
        ("evaluate", "cimexp-evaluate"),
        ("post_training", "cimexp-post-training"),
    ]:
        out = help_text(config_name, prog) if config_name != "train" else out
        assert out.startswith(f"usage: {prog} ")
        assert "granularity_grid/quick" in out and "variation/quick" in out  # the sweeps
        assert "_base" not in out and "trainer=default" not in out  # building blocks stay hidden
    assert list(tmp_path.iterdir()) == []


def test_multirun_of_two_jobs(run_cli, tiny_data, quiet, tmp_path: Path) -> None:
    """`-m` with two granularities: one directory, results.json and W&B run per job; the jobs share a group."""
    result = run_cli(
        ["-m", "granularity.weight=layer,column", *tiny_data, *quiet, "trainer.max_epochs=1", "logger=wandb"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, _output(result)
    (sweep_dir,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"]
    assert "granularity.weight=layer" in jobs[0].name and "granularity.weight=column" in jobs[1].name
    groups = set()
    for job, weight in zip(jobs, ("layer", "column"), strict=True):
        results = json.loads((job / "results.json").read_text())
        assert results["status"] == "finished" and results["epochs"] == 1
        assert results["cim"]["weight_granularity"] == weight
        assert results["cim_summary"]["layers"][0]["weight_granularity"] == weight
        assert yaml.safe_load((job / "config_resolved.yaml").read_text())["granularity"]["weight"] == weight
        assert (job / "checkpoints" / "last.ckpt").is_file()
        (wandb_run,) = (job / "wandb").glob("offline-run-*")  # wandb.finish() after each job
        groups.add(results["sweep_group"])
    assert groups == {sweep_dir.name}  # the W&B group of both jobs
    assert _output(result).count("[cimexp.train][INFO] - resnet20/synthetic") == 2  # the one-line summary per job


@pytest.mark.slow  # 20 s: two processes start Lightning and gloo
def test_ddp_sim_trains_with_two_cpu_processes(run_cli, tiny_data, quiet, tmp_path: Path) -> None:
    result = run_cli(
        ["trainer=ddp_sim", *tiny_data, *quiet, "trainer.max_epochs=2", "logger=csv"], cwd=tmp_path, timeout=400
    )
    assert result.returncode == 0, _output(result)
    out = _output(result)
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in out
    assert out.count("[cimexp.train][INFO] - resnet20/") == 1  # only rank 0 reports
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs"] == 2
    assert results["global_step"] == 2  # 16 images over 2 ranks in batches of 8: 1 step per epoch
    assert [r["epoch"] for r in results["history"]] == [0, 1]


@pytest.mark.slow
def test_debug_profiles_run(run_cli, tiny_data, tmp_path: Path) -> None:
    for profile in ("fdr", "limit"):
        result = run_cli([f"debug={profile}", *tiny_data, "logger=csv"], cwd=tmp_path, timeout=300)
        assert result.returncode == 0, _output(result)
    assert len(list((tmp_path / "logs" / "debug" / "runs").iterdir())) == 2


CIFAR10 = os.environ.get("CIMEXP_DATA")


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR10 or not Path(CIFAR10, "train.npz").is_file(), reason="needs CIMEXP_DATA (CIFAR-10)")
def test_paper_command_on_real_cifar10(run_cli, tmp_path: Path) -> None:
    """The README's training command on real CIFAR-10, cut to a few batches."""
    result = run_cli(
        [
            "granularity.weight=column",
            "granularity.psum=column",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=5",
            "trainer.limit_val_batches=2",
            f"data.data_dir={Path(CIFAR10).resolve()}",
            "data.download=false",
            "logger=csv",
        ],
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, _output(result)
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["data"] == "cifar10" and results["global_step"] == 5
    assert results["cim"]["weight_granularity"] == results["cim"]["psum_granularity"] == "column"


STOPPABLE_RUN = [
    "data=synthetic",
    "data.image_size=8",
    "data.train_size=96",
    "data.val_size=16",
    "data.batch_size=8",
    "trainer.max_epochs=3",
    "lr_schedule.T_max=36",
    "logger=csv",
]
"""Three epochs of 12 steps, shuffled and augmented: long enough to be stopped inside epoch 0 or in a later epoch."""
STEPS_PER_EPOCH = 12


@pytest.fixture(scope="module")
def uninterrupted(run_cli, quiet, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """results.json of ``STOPPABLE_RUN`` trained without a stop: what every stopped and resumed run must end with."""
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = run_cli([*STOPPABLE_RUN, *quiet, f"hydra.run.dir={run_dir}"], cwd=run_dir.parent, timeout=300)
    assert result.returncode == 0, _output(result)
    return json.loads((run_dir / "results.json").read_text())


def _first_epoch_checkpointed(run_dir: Path) -> bool:
    """Epoch 0's checkpoint and its results.json record exist: the run is in epoch 1 or later."""
    results = run_dir / "results.json"
    if not (results.is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()):
        return False
    record = json.loads(results.read_text())
    return record.get("status") == "running" and len(record.get("history", [])) >= 1


def _checkpointed(run_dir: Path) -> bool:
    """``checkpoints/last.ckpt`` exists (with ``checkpoint.every_n_steps``: the first one, inside epoch 0)."""
    return (run_dir / "checkpoints" / "last.ckpt").is_file()


def _stop_when(ready, args: list[str], run_dir: Path, sig: int) -> tuple[int, str]:
    """Start ``python -m cimexp.train <args>`` into ``run_dir``, send ``sig`` once ``ready(run_dir)``, and return
    its exit status and output."""
    import subprocess
    import sys
    import time

    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "-m", "cimexp.train", *args, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(
        cmd, cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not ready(run_dir):
        time.sleep(0.01)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    return proc.returncode, output


def _saved_step(run_dir: Path) -> int:
    """The global step of ``run_dir``'s last.ckpt, read as Lightning resumes it: tensors and plain containers only
    (the run config in it too)."""
    import torch

    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert isinstance(checkpoint["hyper_parameters"]["config"], dict)
    return checkpoint["global_step"]


def _assert_ends_as(run_dir: Path, want: dict) -> None:
    """The run in ``run_dir`` finished with exactly the metrics of ``want``, every epoch's validation included."""
    got = json.loads((run_dir / "results.json").read_text())
    assert got["status"] == "finished" and got["global_step"] == want["global_step"] == 3 * STEPS_PER_EPOCH
    for key in ("val/acc", "val/loss", "train/loss"):
        assert got["final"][key] == want["final"][key], key
    history = [(r["epoch"], r["val/acc"], r["val/loss"]) for r in got["history"]]
    assert history == [(r["epoch"], r["val/acc"], r["val/loss"]) for r in want["history"]]


@pytest.mark.slow  # 35 s; the default tier kills a run inside an epoch (below), the stricter case
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(
    run_cli, quiet, uninterrupted: dict, tmp_path: Path
) -> None:
    """The real thing: `python -m cimexp.train` with shuffled, augmented data is killed with SIGKILL once its first
    epoch's checkpoint exists (somewhere in epoch 1), launched again into the same directory (which resumes from
    last.ckpt), and ends with exactly the metrics of a run that was never stopped."""
    import signal

    args = [*STOPPABLE_RUN, *quiet]
    killed_dir = tmp_path / "killed"
    _stop_when(_first_epoch_checkpointed, args, killed_dir, signal.SIGKILL)
    killed = json.loads((killed_dir / "results.json").read_text())
    assert killed["status"] == "running" and len(killed["history"]) < 3, "the run was not stopped in time"

    resumed = run_cli([*args, f"hydra.run.dir={killed_dir}"], cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0 and "resuming the unfinished run" in _output(resumed), _output(resumed)
    _assert_ends_as(killed_dir, uninterrupted)


def test_a_run_killed_inside_an_epoch_resumes_at_that_batch_to_the_uninterrupted_result(
    run_cli, quiet, uninterrupted: dict, tmp_path: Path
) -> None:
    """SIGKILL right after the first checkpoint inside epoch 0 (``checkpoint.every_n_steps=5``: steps 5, 10, 15, ...,
    never an epoch's last). Launched again, the run resumes at the batch after that checkpoint, with the rest of
    the epoch's shuffled and augmented batches and the same random numbers, and ends exactly as a run that was
    never stopped."""
    import signal

    args = [*STOPPABLE_RUN, *quiet, "checkpoint.every_n_steps=5"]
    killed_dir = tmp_path / "killed"
    _stop_when(_checkpointed, args, killed_dir, signal.SIGKILL)
    assert _saved_step(killed_dir) % STEPS_PER_EPOCH != 0, "the checkpoint is not one from inside an epoch"

    resumed = run_cli([*args, f"hydra.run.dir={killed_dir}"], cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0 and "resuming the unfinished run" in _output(resumed), _output(resumed)
    _assert_ends_as(killed_dir, uninterrupted)


@pytest.mark.parametrize(
    "signal_name",
    [pytest.param("SIGINT", marks=pytest.mark.slow), "SIGTERM"],  # one handler; 35 s each
)
def test_ctrl_c_and_sigterm_checkpoint_and_leave_an_interrupted_run_and_the_command_that_resumes_it(
    run_cli, quiet, uninterrupted: dict, tmp_path: Path, signal_name: str
) -> None:
    """Ctrl-C (SIGINT) and a workload manager's SIGTERM, sent inside epoch 0 (after its first checkpoint, at step
    3), let the current batch finish and write checkpoints/last.ckpt at that step; results.json says "interrupted"
    with that step, the exit status is the shell's for the signal, and the printed command, copied as it is,
    resumes the run to exactly the result of a run that was never stopped."""
    import shlex
    import signal

    sig = getattr(signal, signal_name)
    run_dir = tmp_path / "stopped"
    args = [*STOPPABLE_RUN, *quiet, "checkpoint.every_n_steps=3"]
    status, output = _stop_when(_checkpointed, args, run_dir, sig)
    assert status == 128 + sig, output
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted" and 3 < results["global_step"] < STEPS_PER_EPOCH, output
    assert _saved_step(run_dir) == results["global_step"]  # written when the run stopped
    assert results["checkpoints"]["last"] == str(run_dir / "checkpoints" / "last.ckpt")
    hint = output[output.index("stopped at step") :]
    assert f"stopped at step {results['global_step']}" in hint and "resumes from its checkpoint" in hint
    command = shlex.split(hint.splitlines()[1])
    assert command[:3] == ["python", "-m", "cimexp.train"]
    resumed = run_cli(command[3:], cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0 and "resuming the unfinished run" in _output(resumed), _output(resumed)
    _assert_ends_as(run_dir, uninterrupted)


def test_help_points_to_sections_the_readme_has() -> None:
    from cimexp.run.entry import README_SECTIONS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    headings = {line.lstrip("#").strip() for line in readme.splitlines() if line.startswith("#")}
    assert set(README_SECTIONS) <= headings, set(README_SECTIONS) - headings
    assert ", ".join(README_SECTIONS) in help_text("train", "cimexp-train")


def test_a_run_validates_its_config_once(tiny_data, quiet, tmp_path: Path) -> None:
    """The command line's check before Hydra starts is the run's only one: the job does not validate again. The job
    points the compile caches at ``paths.compile_cache``."""
    code = (
        "import sys\n"
        "import cimexp.run.config as config\n"
        "import cimexp.train\n"
        "calls = []\n"
        "warn = config._warn_sign_bit_cells\n"
        "config._warn_sign_bit_cells = lambda layer: (calls.append(1), warn(layer))\n"
        f"sys.argv = {['cimexp-train', 'debug=fdr', 'cim=none', 'paths.compile_cache=cache', *tiny_data, *quiet]!r}\n"
        "cimexp.train.main()\n"
        "import os\n"
        "print('validations', len(calls), 'cache', os.environ['TORCHINDUCTOR_CACHE_DIR'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"validations 1 cache {tmp_path / 'cache' / 'inductor'}" in result.stdout, result.stdout[-2000:]


def test_a_renamed_group_still_works_for_one_release_with_a_warning(tmp_path: Path) -> None:
    """``scheduler`` (0.1) is ``lr_schedule`` since 0.2: the old name is read, with a one-line warning."""
    assert renamed_overrides(["scheduler=one_cycle", "+scheduler.x=1", "schedule=two_stage", "schedulers=1"]) == (
        ["lr_schedule=one_cycle", "+lr_schedule.x=1", "schedule=two_stage", "schedulers=1"],
        ["`scheduler` is now `lr_schedule` (renamed in 0.2; the old name is read until 0.3)"],
    )
    result = subprocess.run(
        [sys.executable, "-m", "cimexp.train", "scheduler=one_cycle", "scheduler.pct_start=0.1", "--cfg", "job"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    schedule = yaml.safe_load(result.stdout)["lr_schedule"]
    assert schedule["_target_"].endswith("OneCycleLR") and schedule["pct_start"] == 0.1
    assert result.stderr.count("warning: `scheduler` is now `lr_schedule`") == 1, result.stderr
