"""results.json (cimexp.results): the contract between the writers (train, evaluate) and the report's reader, and
the rule that a finished run is reused only for the same config."""

from __future__ import annotations

import json
from pathlib import Path

import lightning
import pytest
import torch
import yaml

import cimexp
import cimexp.train
from cimexp.evaluate import evaluate
from cimexp.report import collect
from cimexp.results import (
    EVALUATE_FIELDS,
    HEADER,
    METRICS,
    SCHEMA_VERSION,
    TRAIN_FIELDS,
    StaleRunError,
    config_hash,
    hashed_config,
    make_record,
    read_results,
    reusable_results,
    upgrade,
)
from cimexp.train import train

FLOAT = ["cim=none", "logger=none", "trainer.max_epochs=1"]
"""A float ResNet-20 for one epoch: reuse does not depend on the layers, and CIM step calibration costs seconds."""


@pytest.fixture
def run(make_cfg, tiny_data, quiet):
    """``run(overrides, subdir)``: ``train()`` on tiny synthetic data into ``tmp_path / subdir``."""
    return lambda overrides, subdir="job": train(make_cfg([*tiny_data, *quiet, *overrides], subdir))


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cimexp.train, "validate_train", lambda cfg: pytest.fail("a finished run ran again"))


def test_train_and_evaluate_write_the_schema_the_report_reads(make_cfg, tiny_data, quiet, tmp_path: Path) -> None:
    """The contract: a tiny ``train()`` (debug profile) and an ``evaluate()`` of its checkpoint, both read back with
    the report's reader."""
    train(make_cfg([*tiny_data, *quiet, "debug=limit", "trainer.max_epochs=1", "logger=none"], "sweep/train"))
    eval_overrides = [*tiny_data, *quiet, f"ckpt={tmp_path / 'sweep' / 'train'}", "clean_cache_dir=null"]
    evaluate(make_cfg([*eval_overrides, "variation.sigma=0.1"], "sweep/evaluate", "evaluate"))

    expected = {"train": ({*HEADER, *TRAIN_FIELDS}, "final"), "evaluate": ({*HEADER, *EVALUATE_FIELDS}, "clean")}
    for kind, (keys, metrics_part) in expected.items():
        record = read_results(tmp_path / "sweep" / kind / "results.json")
        assert record.keys() == keys and list(record)[: len(HEADER)] == list(HEADER)
        assert (record["schema_version"], record["kind"], record["status"]) == (SCHEMA_VERSION, kind, "finished")
        assert set(METRICS) <= record["final"].keys() and set(METRICS) <= record[metrics_part].keys()
        assert "val/acc_top5" not in record["final"]
        assert record["versions"].keys() == {"python", "torch", "lightning", "cimexp"}
        assert record["versions"]["torch"] == torch.__version__
        assert record["versions"]["lightning"] == lightning.__version__
        assert record["versions"]["cimexp"] == cimexp.__version__
        assert record["config_hash"] == config_hash(record["config"])
        assert not any(key.startswith(("paths.", "logger", "hydra.")) for key in record["config"])
    train_record = read_results(tmp_path / "sweep" / "train" / "results.json")
    assert set(METRICS) <= train_record["history"][0].keys()
    assert train_record["config"]["optimizer.lr"] == 0.1 and "task_name" not in train_record["config"]
    evaluate_record = read_results(tmp_path / "sweep" / "evaluate" / "results.json")
    assert evaluate_record["config"]["ckpt"].startswith("last.ckpt sha256:")  # the checkpoint by its content

    runs, skipped = collect([tmp_path / "sweep"], include_debug=True)
    assert skipped.empty, skipped.to_dict("records")
    assert sorted(runs["kind"]) == ["evaluate", "train"]
    assert sorted(runs["run_dir"]) == ["evaluate", "train"]  # relative to the sweep root
    row = runs.set_index("kind").loc["evaluate"]
    assert row["ckpt"] == "train/checkpoints/last.ckpt" and row["sigma"] == 0.1
    assert runs["acc_top5"].notna().all() and runs["acc"].between(0, 100).all()


def test_finished_run_is_reused_only_for_the_same_config(
    run, make_cfg, tiny_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics, _ = run(FLOAT)
    results = tmp_path / "job" / "results.json"
    stored, stamp = results.read_text(), results.stat().st_mtime_ns

    # a changed setting: refused, naming the key with its old and new value and the ways forward
    with pytest.raises(StaleRunError, match=r"optimizer\.lr: 0\.1 -> 0\.5") as refused:
        run([*FLOAT, "optimizer.lr=0.5"])
    message = str(refused.value)
    assert "1 keys differ" in message and "hydra.run.dir=<new dir>" in message and "delete" in message
    assert "ckpt_path=last" in message
    assert results.read_text() == stored and results.stat().st_mtime_ns == stamp

    # the same config, or one that differs only in keys that cannot change results: the stored results
    with monkeypatch.context() as patch:
        _no_training(patch)
        again_metrics, again = run(FLOAT)
        # without `quiet`: progress bar, model summary and log_every_n_steps at their defaults
        ignored = ["logger=csv", "tags=[x]", "task_name=elsewhere", "optimized_metric=val/acc", "paths.data_dir=/x"]
        relabelled_metrics, _ = train(make_cfg([*tiny_data, *FLOAT, *ignored, "+trainer.profiler=simple"], "job"))
    assert again_metrics == relabelled_metrics == json.loads(stored)["final"]
    assert again["results"] == read_results(results) and again.keys() == {"cfg", "results"}
    assert metrics["val/acc"] == again_metrics["val/acc"]

    # continuing the finished run on purpose trains on, and the continued run is then reused for its own config
    _, more = run([*FLOAT, "trainer.max_epochs=2", "ckpt_path=last"])
    assert more["trainer"].current_epoch == 2 and read_results(results)["config"]["trainer.max_epochs"] == 2
    with monkeypatch.context() as patch:
        _no_training(patch)
        run([*FLOAT, "trainer.max_epochs=2"])
    with pytest.raises(StaleRunError, match=r"trainer\.max_epochs: 2 -> 1"):
        run(FLOAT)


def test_evaluation_is_reused_only_for_the_same_checkpoint_content(make_cfg, tiny_data, quiet, tmp_path: Path) -> None:
    train(make_cfg([*tiny_data, *quiet, *FLOAT], "trained"))
    ckpt = tmp_path / "trained" / "checkpoints" / "last.ckpt"
    overrides = [*tiny_data, *quiet, f"ckpt={ckpt}", "clean_cache_dir=null"]
    _, first = evaluate(make_cfg(overrides, "eval", "evaluate"))
    _, again = evaluate(make_cfg(overrides, "eval", "evaluate"))
    assert again.keys() == {"cfg", "results"} and again["results"] == read_results(tmp_path / "eval" / "results.json")

    with pytest.raises(StaleRunError, match=r"variation\.sigma: 0\.0 -> 0\.3"):
        evaluate(make_cfg([*overrides, "variation.sigma=0.3"], "eval", "evaluate"))
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")  # the training run's checkpoint replaced (e.g. trained on)
    changed = r"ckpt: \"last\.ckpt sha256:[0-9a-f]{16}\" -> \"last\.ckpt sha256:"
    with pytest.raises(StaleRunError, match=changed) as refused:
        evaluate(make_cfg(overrides, "eval", "evaluate"))
    assert "ckpt_path" not in str(refused.value)  # no training to continue


def test_hashed_config_leaves_out_keys_that_cannot_change_results(tmp_path: Path) -> None:
    init = tmp_path / "float.pt"
    init.write_bytes(b"weights")
    config = {
        "optimizer": {"lr": 0.1},
        "model": {"init_from": str(init), "kernels": "auto"},
        "paths": {"output_dir": "/a"},
        "logger": {"wandb": {"project": "p"}},
        "trainer": {"max_epochs": 2, "enable_progress_bar": True, "default_root_dir": "/a", "precision": "32-true"},
        "callbacks": {"results": {"path": "/a/results.json"}, "telemetry": {"every_n_steps": 100}},
        "data": {"data_dir": "/data", "batch_size": 8},
        "task_name": "train",
        "tags": ["x"],
        "ckpt_path": None,
    }
    hashed = hashed_config(config, {"model.init_from": init})
    assert hashed == {
        "optimizer.lr": 0.1,
        "model.init_from": hashed["model.init_from"],
        "model.kernels": "auto",
        "trainer.max_epochs": 2,
        "trainer.precision": "32-true",
        "callbacks.telemetry.every_n_steps": 100,
        "data.batch_size": 8,
    }
    assert hashed["model.init_from"].startswith("float.pt sha256:")
    moved = {**config, "paths": {"output_dir": "/b"}, "data": {"data_dir": "/elsewhere", "batch_size": 8}}
    assert config_hash(hashed_config(moved, {"model.init_from": init})) == config_hash(hashed)
    init.write_bytes(b"other weights")  # the same path, another file: a change
    assert hashed_config(config, {"model.init_from": init})["model.init_from"] != hashed["model.init_from"]


def test_reader_upgrades_old_files_and_refuses_newer_ones() -> None:
    old = {"kind": "evaluate", "status": "finished", "clean": {"val/acc_top5": 0.9}, "final": {"val/acc_top5": 0.8}}
    upgraded = upgrade(old)
    assert upgraded["schema_version"] == 1 and upgraded["clean"] == {"val/acc5": 0.9}
    assert upgraded["final"] == {"val/acc5": 0.8} and old["final"] == {"val/acc_top5": 0.8}  # a copy
    assert upgrade({"status": "finished"})["kind"] == "train"  # files from before `kind`
    with pytest.raises(ValueError, match="schema_version=99"):
        upgrade({"schema_version": 99, "kind": "train"})
    with pytest.raises(ValueError, match=r"undeclared fields \['extra'\].*TRAIN_FIELDS"):
        make_record("train", "finished", {}, **dict.fromkeys(TRAIN_FIELDS), extra=1)
    with pytest.raises(ValueError, match="valid choices: running, finished"):
        make_record("train", "done", {}, **dict.fromkeys(TRAIN_FIELDS))


def test_runs_of_schema_version_1_are_compared_through_their_resolved_config(tmp_path: Path) -> None:
    config = {"optimizer": {"lr": 0.1}, "paths": {"output_dir": str(tmp_path)}}
    (tmp_path / "results.json").write_text(json.dumps({"kind": "train", "status": "finished", "final": {}}))
    (tmp_path / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    assert reusable_results(tmp_path, "train", {**config, "paths": {"output_dir": "/moved"}}) is not None
    with pytest.raises(StaleRunError, match=r"optimizer\.lr: 0\.1 -> 0\.2"):
        reusable_results(tmp_path, "train", {**config, "optimizer": {"lr": 0.2}})
    (tmp_path / "config_resolved.yaml").unlink()
    with pytest.raises(StaleRunError, match="no recorded config"):
        reusable_results(tmp_path, "train", config)
    assert reusable_results(tmp_path, "evaluate", config) is None  # another kind: nothing to reuse


def test_a_run_recorded_before_the_callbacks_moved_is_the_same_run() -> None:
    from cimexp.results import config_differences

    old = {"schedule._target_": "cimexp.callbacks.QATSchedule", "optimizer.lr": 0.1}
    new = {"schedule._target_": "cimexp.run.callbacks.QATSchedule", "optimizer.lr": 0.1}
    assert config_differences(old, new) == []
    assert config_differences(old, {**new, "schedule._target_": "cimexp.run.callbacks.Other"}) != []


def test_a_run_recorded_under_a_renamed_group_is_the_same_run() -> None:
    from cimexp.results import config_differences

    old = {"scheduler._target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "scheduler.T_max": None}
    new = {"lr_schedule._target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "lr_schedule.T_max": None}
    assert config_differences(old, new) == []
    assert config_differences(old, {**new, "lr_schedule.T_max": 36}) == ["lr_schedule.T_max: null -> 36"]


def test_a_cpu_run_recorded_before_model_compile_auto_is_the_same_run() -> None:
    """``model.compile: false``, the default until ``auto``, runs what ``auto`` runs on a CPU (eager), and only
    there: a run that ran eagerly on a GPU would now run under CUDA graphs."""
    from cimexp.results import config_differences

    old = {"model.compile": False, "trainer.accelerator": "cpu"}
    assert config_differences(old, {**old, "model.compile": "auto"}) == []
    gpu = {"model.compile": False, "trainer.accelerator": "gpu"}
    assert config_differences(gpu, {**gpu, "model.compile": "auto"}) == ['model.compile: false -> "auto"']
    assert config_differences(old, {**old, "model.compile": True}) == ["model.compile: false -> true"]


def test_a_run_recorded_with_copies_of_its_settings_is_the_same_run() -> None:
    from cimexp.results import config_differences

    old = {"adc.bits": 4, "cim.adc_bits": 4, "cim._target_": "cimexp.cim.CIMConv2d"}
    new = {"adc.bits": 4, "cim._target_": "cimexp.cim.CIMConv2d"}
    assert config_differences(old, new) == []
    assert config_differences(old, {**new, "adc.bits": 3}) == ["adc.bits: 4 -> 3"]
