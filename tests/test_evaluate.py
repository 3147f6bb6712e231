"""cimexp.evaluate: a tiny trained checkpoint evaluated clean and under cell variation; results.json; errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

import cimexp.evaluate
from cimexp.evaluate import evaluate
from cimexp.results import HEADER, METRICS
from cimexp.run.build import resolve_checkpoint
from cimexp.train import train

TRAINED_DATA = [
    "data=synthetic",
    "data.image_size=8",
    "data.train_size=256",
    "data.batch_size=32",
    "data.augment=false",
]
"""Synthetic 8x8 images without augmentation (a 4-pixel crop of an 8x8 image hides the class pattern)."""
EVAL_DATA = [*TRAINED_DATA, "data.val_size=100", "data.eval_batch_size=100"]
RESULT_KEYS = {
    *HEADER,
    "run_name",
    "sweep_group",
    "run_dir",
    "overrides",
    "ckpt",
    "cim",
    "schedule",
    "model",
    "data",
    "seed",
    "variation",
    "adc_errors",
    "clean",
    "final",
    "cim_summary",
    "train_results",
    "wall_time_s",
}
METRIC_KEYS = set(METRICS)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, compose_app) -> Path:
    """The run directory of a CIM ResNet-20 that classifies the synthetic data well (~90%): a float ResNet-20
    trained for 32 steps, then converted and fine-tuned for one step, as ``experiment=quick`` does on CIFAR."""
    root = tmp_path_factory.mktemp("train")
    common = [*TRAINED_DATA, "data.val_size=16", "logger=none", "trainer.enable_progress_bar=false"]
    common += ["trainer.enable_model_summary=false", "callbacks.model_checkpoint.save_top_k=0"]
    float_cfg = compose_app([*common, "cim=none", "trainer.max_epochs=4", "optimizer.lr=0.05"], root / "float")
    train(float_cfg)
    float_ckpt = root / "float" / "checkpoints" / "last.ckpt"
    cim = [f"model.init_from={float_ckpt}", "trainer.max_epochs=1", "trainer.limit_train_batches=1"]
    train(compose_app([*common, *cim, "optimizer.lr=0.01"], root / "run"))
    GlobalHydra.instance().clear()
    return root / "run"


@pytest.fixture
def run_eval(make_cfg, tmp_path: Path):
    """``run_eval(overrides, subdir)``: evaluate with the evaluate config into ``tmp_path / subdir``; the clean
    accuracy cache is ``tmp_path / "cache"``."""
    quiet = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]

    def _run(overrides: list[str], subdir: str) -> tuple[dict, dict]:
        cfg = make_cfg([*EVAL_DATA, *quiet, f"clean_cache_dir={tmp_path}/cache", *overrides], subdir, "evaluate")
        return evaluate(cfg)

    return _run


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the validation passes of ``evaluate`` (one entry per pass)."""
    calls: list[int] = []
    validate = cimexp.evaluate.validate_metrics
    monkeypatch.setattr(cimexp.evaluate, "validate_metrics", lambda *args: calls.append(1) or validate(*args))
    return calls


def test_clean_equals_sigma_zero_and_variation_changes_accuracy(
    trained_run: Path, run_eval, validations: list[int], tmp_path: Path
) -> None:
    metrics, objects = run_eval([f"ckpt={trained_run}", "variation.sigma=0", "variation.seed=3"], "zero")
    results = json.loads((tmp_path / "zero" / "results.json").read_text())
    assert results == objects["results"]
    assert results["clean"] == results["final"]  # sigma=0, ideal ADCs: the clean chip, not evaluated twice
    assert results["clean"]["val/acc"] > 0.5  # chance: 0.1
    assert validations == [1]

    # results.json: exactly the agreed schema, and the training run it came from
    train_results = json.loads((trained_run / "results.json").read_text())
    assert results.keys() == RESULT_KEYS
    assert results["clean"].keys() == results["final"].keys() == METRIC_KEYS
    assert results["kind"] == "evaluate" and results["status"] == "finished"
    assert results["ckpt"] == str((trained_run / "checkpoints" / "last.ckpt").resolve())
    assert results["run_dir"] == str((tmp_path / "zero").resolve())
    assert results["variation"] == {"sigma": 0.0, "seed": 3, "level": "weight"}
    assert results["adc_errors"]["noise_lsb"] == 0 and results["adc_errors"]["share"] == 1
    assert results["cim"] == train_results["cim"] and results["schedule"] == train_results["schedule"]
    assert (results["model"], results["data"], results["seed"]) == ("resnet20", "synthetic", 0)
    assert results["train_results"] == {k: v for k, v in train_results.items() if k != "history"}
    assert results["train_results"]["kind"] == "train"
    assert results["cim_summary"]["total"] == train_results["cim_summary"]["total"]
    assert "variation.sigma=0" in results["overrides"] and results["sweep_group"] is None
    assert metrics == {f"{part}/{k}": results[part][k] for part in ("clean", "final") for k in METRIC_KEYS}
    assert (tmp_path / "zero" / "config_resolved.yaml").is_file() and (tmp_path / "zero" / "git.json").is_file()

    # sigma > 0: another chip, other accuracy; the clean accuracy comes from the cache (one validation pass)
    _, noisy = run_eval([f"ckpt={trained_run}/checkpoints/last.ckpt", "variation.sigma=1.0"], "noisy")
    assert validations == [1, 1]
    assert noisy["results"]["clean"] == results["clean"]
    assert noisy["results"]["final"]["val/acc"] < results["clean"]["val/acc"] - 0.1
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1

    # per-cell variation: another chip model, recorded in the results
    _, per_cell = run_eval([f"ckpt={trained_run}", "variation.sigma=1.0", "variation.level=cell"], "noisy_cell")
    assert validations == [1, 1, 1]
    assert per_cell["results"]["variation"] == {"sigma": 1.0, "seed": 0, "level": "cell"}
    assert per_cell["results"]["final"] != noisy["results"]["final"]

    # sigma = 0 in a new run directory: clean and final both from the cache, no validation, no data loaded
    _, cached = run_eval([f"ckpt={trained_run}", "variation.sigma=0"], "zero_cached")
    assert validations == [1, 1, 1]
    assert cached["results"]["final"] == cached["results"]["clean"] == results["clean"]
    assert cached["results"]["cim_summary"] == results["cim_summary"]

    # the same job again: finished before, so nothing is evaluated
    again_metrics, again = run_eval([f"ckpt={trained_run}", "variation.sigma=0", "variation.seed=3"], "zero")
    assert validations == [1, 1, 1] and again_metrics == metrics and again["results"] == results


def test_adc_noise_at_evaluation_time(trained_run: Path, run_eval, tmp_path: Path) -> None:
    """`adc.noise_lsb` applies to the "final" pass only (clean stays ideal), is reproducible, and costs accuracy."""
    runs = {}
    for noise in (0.0, 2.0):
        _, objects = run_eval([f"ckpt={trained_run}", f"adc.noise_lsb={noise}"], f"noise{noise}")
        runs[noise] = objects["results"]
    assert runs[0.0]["final"] == runs[0.0]["clean"] == runs[2.0]["clean"]
    assert runs[2.0]["adc_errors"]["noise_lsb"] == 2.0
    assert runs[2.0]["final"]["val/acc"] < runs[2.0]["clean"]["val/acc"]
    _, again = run_eval([f"ckpt={trained_run}", "adc.noise_lsb=2.0"], "again")
    assert again["results"]["final"] == runs[2.0]["final"]
    with pytest.raises(ValueError, match="noise_lsb=-1"):
        run_eval([f"ckpt={trained_run}", "adc.noise_lsb=-1"], "bad")


def test_bad_checkpoints_are_refused_with_a_clear_error(trained_run: Path, run_eval, make_cfg, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoints/last.ckpt.*checkpoints/best.ckpt"):
        run_eval([f"ckpt={tmp_path}"], "dir")
    with pytest.raises(FileNotFoundError, match="/nonexistent/x.ckpt"):
        run_eval(["ckpt=/nonexistent/x.ckpt"], "file")
    with pytest.raises(ValueError, match="ckpt=<path> is required"):
        run_eval([], "missing")
    with pytest.raises(ValueError, match="variation.sigma"):
        run_eval([f"ckpt={trained_run}", "variation.sigma=-0.1"], "sigma")
    with pytest.raises(ValueError, match="invalid variation.level 'chip'; valid choices: weight, cell"):
        run_eval([f"ckpt={trained_run}", "variation.level=chip"], "level")
    with pytest.raises(ValueError, match="trained on cimexp.data.SyntheticDataModule.*data=cifar100"):
        evaluate(make_cfg([f"ckpt={trained_run}", "data=cifar10"], "data", "evaluate"))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        run_eval([f"ckpt={tmp_path}/plain.pt"], "plain")

    # a checkpoint whose ADC steps were never initialised (e.g. saved in stage 1 of two-stage QAT)
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=False)
    for key, state in checkpoint["state_dict"].items():
        if key.endswith("_extra_state"):
            state["psum_step_ready"] = False
    torch.save(checkpoint, tmp_path / "stage1.ckpt")
    with pytest.raises(ValueError, match="stage 1 of two-stage QAT"):
        run_eval([f"ckpt={tmp_path}/stage1.ckpt"], "stage1")
    assert not (tmp_path / "stage1" / "results.json").exists()


def test_run_directory_falls_back_to_best_ckpt(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.ckpt").touch()
    assert resolve_checkpoint(tmp_path) == tmp_path / "checkpoints" / "best.ckpt"
    (tmp_path / "checkpoints" / "last.ckpt").touch()
    assert resolve_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.ckpt"


def test_multirun_of_two_evaluations(trained_run: Path, run_cli, tmp_path: Path) -> None:
    """`python -m cimexp.evaluate -m` over two sigmas: a results.json per job, one clean evaluation between them."""
    result = run_cli(
        ["-m", f"ckpt={trained_run}", "variation.sigma=0,0.5", *EVAL_DATA, "trainer.enable_progress_bar=false"],
        cwd=tmp_path,
        module="cimexp.evaluate",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (sweep_dir,) = (tmp_path / "logs" / "evaluate" / "multiruns").iterdir()
    jobs = sorted(sweep_dir.glob("*/results.json"))
    assert len(jobs) == 2
    runs = [json.loads(path.read_text()) for path in jobs]
    assert [r["variation"]["sigma"] for r in runs] == [0.0, 0.5]
    assert runs[0]["clean"] == runs[1]["clean"] == runs[0]["final"]
    assert {r["sweep_group"] for r in runs} == {sweep_dir.name}
    assert len(list((tmp_path / "logs" / "evaluate" / "clean_cache").glob("*.json"))) == 1
    assert (result.stdout + result.stderr).count("[cimexp.evaluate][INFO] - evaluate resnet20/synthetic") == 2


@pytest.mark.parametrize("side_file", ["running", "corrupt"])
def test_any_checkpoint_evaluates_whatever_its_results_json_says(
    trained_run: Path, run_eval, tmp_path: Path, caplog: pytest.LogCaptureFixture, side_file: str
) -> None:
    """The checkpoint holds everything evaluation needs: a training run that was stopped (results.json still says
    ``running``, without the final fields) is evaluated and reported as unfinished; a corrupt results.json is
    ignored with a message instead of stopping the evaluation."""
    import shutil

    run_dir = tmp_path / "stopped_run"
    shutil.copytree(trained_run, run_dir)
    content = {"running": '{"status": "running", "history": []}', "corrupt": '{"status": "fin'}[side_file]
    (run_dir / "results.json").write_text(content)

    _, objects = run_eval([f"ckpt={run_dir}"], "eval")
    results = objects["results"]
    assert results["status"] == "finished" and results["model"] == "resnet20"
    out = caplog.text  # the status lines go through logging
    if side_file == "running":
        assert results["train_results"]["status"] == "running"
        assert "unfinished training run (status 'running')" in out
    else:
        assert results["train_results"] is None and "unreadable" in out and "results.json" in out
