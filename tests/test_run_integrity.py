"""Runs that cannot claim settings that never ran: resumes only under the config that wrote the checkpoint, one
process per run directory, data known by content, files read without running code, corrupt checkpoints named as
such with a fallback, and runtime refusals as one line with exit code 2."""

from __future__ import annotations

import json
import os
import pickle
import random
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cimexp.data import CIFAR10DataModule
from cimexp.data.base import DataError
from cimexp.data.cifar import read_pickled_batches
from cimexp.files import (
    CorruptFileError,
    RunLockedError,
    read_checkpoint,
    readable_checkpoint,
    run_lock,
)
from cimexp.results import TRAIN_FIELDS, StaleRunError, hashed_config, make_record, reusable_results
from cimexp.run.callbacks import KeepPreviousCheckpointIO
from cimexp.train import train


@pytest.fixture
def run(make_cfg, tiny_data, quiet):
    """``run(overrides, subdir)``: train on tiny synthetic data into ``tmp_path / subdir``."""
    return lambda overrides, subdir: train(make_cfg([*tiny_data, *quiet, "logger=none", *overrides], subdir))


def _interrupt(run_dir: Path) -> None:
    """Make a finished run look killed after its last checkpoint (its results.json says ``interrupted``)."""
    path = run_dir / "results.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "status": "interrupted"}))


def test_an_unfinished_run_resumes_only_under_the_config_that_wrote_its_checkpoint(run, tmp_path: Path) -> None:
    run(["trainer.max_epochs=1"], "run")
    _interrupt(tmp_path / "run")
    before = (tmp_path / "run" / "results.json").read_text()
    with pytest.raises(StaleRunError, match=r"unfinished run of another config.*optimizer\.lr: 0\.1 -> 0\.5"):
        run(["trainer.max_epochs=1", "optimizer.lr=0.5"], "run")
    assert (tmp_path / "run" / "results.json").read_text() == before  # nothing ran, nothing recorded
    # what does not change results may change: the checkpoint interval, the logger
    _, resumed = run(["trainer.max_epochs=1", "checkpoint.every_minutes=3", "logger=csv"], "run")
    assert resumed["results"]["status"] == "finished"
    # an explicit continuation may lengthen the run, not change it
    _, longer = run(["trainer.max_epochs=2", "ckpt_path=last"], "run")
    assert longer["results"]["epochs"] == 2
    with pytest.raises(StaleRunError, match=r"optimizer\.momentum"):
        run(["trainer.max_epochs=3", "ckpt_path=last", "optimizer.momentum=0.5"], "run")


def test_a_run_directory_is_locked_while_a_process_trains_in_it(run, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = run_dir / "run.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": "now"}))
    with pytest.raises(RunLockedError, match=rf"is in use: pid {os.getpid()} on .* delete .*run\.lock"):
        run(["trainer.max_epochs=1"], "run")
    assert not (run_dir / "results.json").exists() and not (run_dir / "checkpoints").exists()

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(gone.stdout), "since": "then"}))
    with pytest.warns(UserWarning, match="removed a stale lock"):
        _, objects = run(["trainer.max_epochs=1"], "run")
    assert objects["results"]["status"] == "finished" and not lock.exists()

    with run_lock(run_dir), pytest.raises(RunLockedError), run_lock(run_dir):  # a second holder, same process
        pass


def _fake_cifar(folder: Path, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        np.savez(folder / f"{split}.npz", images=np.zeros((len(labels), 32, 32, 3), np.uint8), labels=labels)


def test_data_is_known_by_content(tmp_path: Path) -> None:
    """A finished run is reused only on the same data: the same path with other labels is another data set."""
    _fake_cifar(tmp_path / "data" / "cifar10", np.arange(20) % 10)
    module = CIFAR10DataModule(data_dir=tmp_path / "data")
    files = module.data_files()
    assert [f.name for f in files] == ["train.npz", "test.npz"]
    config = {"data": {"_target_": "cimexp.data.CIFAR10DataModule", "data_dir": str(tmp_path / "data")}}
    hashed = hashed_config(config, data_files=files)
    assert set(hashed) >= {"data.sha256.train.npz", "data.sha256.test.npz"}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps(_record(hashed)))
    assert reusable_results(run_dir, "train", config, data_files=files) is not None

    _fake_cifar(tmp_path / "data" / "cifar10", (np.arange(20) + 1) % 10)  # every label shifted, same path
    with pytest.raises(StaleRunError, match=r"data\.sha256\.train\.npz"):
        reusable_results(
            run_dir, "train", config, data_files=CIFAR10DataModule(data_dir=tmp_path / "data").data_files()
        )
    # a record from before data digests is compared by the data's settings alone
    legacy = {k: v for k, v in hashed.items() if not k.startswith("data.sha256.")}
    (run_dir / "results.json").write_text(json.dumps(_record(legacy)))
    assert reusable_results(run_dir, "train", config, data_files=files) is not None


def _record(hashed: dict) -> dict:
    return make_record("train", "finished", hashed, **dict.fromkeys(TRAIN_FIELDS))


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_cifar_batches_are_read_without_running_code(tmp_path: Path) -> None:
    for protocol in (2, 5):  # Python 2's batches as torchvision ships them, and numpy 2's buffers
        batch = {"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 3], "filenames": ["a"] * 4}
        (tmp_path / f"ok{protocol}").write_bytes(pickle.dumps(batch, protocol=protocol))
        images, labels = read_pickled_batches([tmp_path / f"ok{protocol}"], "labels")
        assert images.shape == (4, 3, 32, 32) and labels.tolist() == [0, 1, 2, 3]
    marker = tmp_path / "payload_ran"
    (tmp_path / "crafted").write_bytes(pickle.dumps({"data": _Payload(marker), "labels": []}))
    with pytest.raises(DataError, match=r"crafted: .*refused global pathlib"):
        read_pickled_batches([tmp_path / "crafted"], "labels")
    assert not marker.exists()


def test_corrupt_checkpoints_are_called_corrupt_and_the_one_before_is_used(tmp_path: Path) -> None:
    io = KeepPreviousCheckpointIO()
    last = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, last)
    io.save_checkpoint({"step": torch.tensor(2)}, last)
    assert read_checkpoint(f"{last}.prev")["step"] == 1 and read_checkpoint(last)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.prev"]  # no temporary left

    last.write_bytes(last.read_bytes()[:100])  # a kill in the middle of an older writer's save
    with pytest.raises(CorruptFileError, match="corrupt"):
        read_checkpoint(last)
    with pytest.warns(RuntimeWarning, match=r"corrupt.*the checkpoint before it"):
        used, content = readable_checkpoint(last)
    assert used.name == "last.ckpt.prev" and content["step"] == 1

    noise = tmp_path / "noise.ckpt"
    for seed in range(40):  # random bytes fail in many places of the unpickler (seeds 2, 14: IndexError; 20: KeyError)
        noise.write_bytes(random.Random(seed).randbytes(4096))
        with pytest.raises(CorruptFileError, match=r"noise\.ckpt: not a readable checkpoint, the file is corrupt"):
            readable_checkpoint(noise)
    with pytest.raises(FileNotFoundError):  # a wrong path is the caller's, not a corrupt file
        read_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(IsADirectoryError):
        read_checkpoint(tmp_path)
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"x": _Payload(tmp_path / "ran")}, crafted)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="could run code") as refused:
            read_checkpoint(crafted)
    assert not isinstance(refused.value, CorruptFileError) and not (tmp_path / "ran").exists()


def test_refusals_at_run_time_are_one_line_with_exit_code_2(run_cli, tiny_data, quiet, tmp_path: Path) -> None:
    args = [*tiny_data, *quiet, "logger=none", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"]
    assert run_cli(args, tmp_path).returncode == 0
    _interrupt(tmp_path / "run")
    refused = run_cli([*args, "optimizer.lr=0.5"], tmp_path)
    assert refused.returncode == 2, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("cimexp-train: error: ") and "optimizer.lr" in errors[0]
    assert "Traceback" not in refused.stderr

    _fake_cifar(tmp_path / "bad", np.arange(20) % 10)  # 20 images: not CIFAR-10's 50,000
    missing = run_cli(
        ["data=cifar10", f"data.data_dir={tmp_path / 'bad'}", f"hydra.run.dir={tmp_path / 'new'}"], tmp_path
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr
    assert "train.npz: 20 images" in missing.stderr
    assert not (tmp_path / "new").exists()  # refused before it began: no run directory left behind


def test_a_gpu_trainer_without_a_gpu_is_refused_before_anything_is_written(
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"trainer\.accelerator=gpu .*no CUDA GPU is visible.*trainer=cpu"):
        run(["trainer=gpu"], "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_the_summary_of_an_interrupted_run_says_where_it_stopped() -> None:
    from cimexp.run.summary import summary_line

    results = {"model": "resnet20", "data": "cifar10", "cim": None, "status": "interrupted", "global_step": 14,
               "epochs": 0, "wall_time_s": 31.2, "run_dir": "/runs/a", "final": {}, "train_time_s": 0.0}  # fmt: skip
    line = summary_line(results)
    assert "stopped after 14 steps, in epoch 1, 31.2 s" in line and "n/a" not in line


def test_a_long_cpu_run_announces_its_estimate_and_the_faster_alternatives() -> None:
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from cimexp.run.summary import cpu_time_notice

    cifar = SimpleNamespace(train_subset=None, split_sizes=(50_000, 10_000), batch_size=128)
    on = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    paper = OmegaConf.create({"trainer": {"max_epochs": 200, "max_steps": -1}})
    notice = cpu_time_notice(paper, cifar, on)
    assert notice is not None and len(notice.splitlines()) == 1
    assert "78,200 training steps" in notice and "about 20 h" in notice and "experiment=quick" in notice
    assert "trainer=gpu" in notice
    quick = OmegaConf.create({"trainer": {"max_epochs": 1, "max_steps": 100}})
    assert cpu_time_notice(quick, cifar, on) is None
    gpu = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    assert cpu_time_notice(paper, cifar, gpu) is None


def test_a_progress_bar_resumed_inside_an_epoch_shows_its_epoch_and_total(tmp_path: Path) -> None:
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from cimexp.run.callbacks import RunProgressBar

    seen: list[tuple[str, int | None, int]] = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, idx) -> None:  # noqa: ANN001
            bar = next(c for c in trainer.callbacks if isinstance(c, RunProgressBar)).train_progress_bar
            seen.append((bar.desc, bar.total, bar.n))

    def trainer(**kwargs) -> L.Trainer:  # noqa: ANN003
        return L.Trainer(callbacks=[RunProgressBar(), Watch()], logger=False, enable_checkpointing=False,
                         limit_train_batches=8, limit_val_batches=0, enable_model_summary=False, **kwargs)  # fmt: skip

    class SaveInside(L.Callback):  # a checkpoint after batch 3 of 8 in epoch 1, as RecoveryCheckpoint writes one
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, idx) -> None:  # noqa: ANN001
            if idx == 2:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")

    first = trainer(max_epochs=1)
    first.callbacks.append(SaveInside())
    first.fit(BoringModel())
    seen.clear()
    trainer(max_epochs=2).fit(BoringModel(), ckpt_path=tmp_path / "mid.ckpt")
    assert [(desc.rstrip(": "), total, n) for desc, total, n in (seen[0], seen[5])] == [
        ("Epoch 1/2", 8, 4),  # not "Training: 4/?"
        ("Epoch 2/2", 8, 1),
    ]


def test_a_run_resumed_inside_its_last_epoch_reports_the_uninterrupted_training_means(
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The epoch's ``train/loss``, ``train/acc`` and ``lr`` are means over all its batches, those before the resume
    included (checkpoints keep their sums); the soak found them taken over the batches after the resume only."""
    import signal

    from cimexp.run.classifier import ImageClassifier

    overrides = ["trainer.max_epochs=1", "data.train_size=32", "checkpoint.every_n_steps=1"]
    _, whole = run(overrides, "whole")
    step = ImageClassifier.training_step

    def stop_after_batch_1(module, batch, idx):  # noqa: ANN001, ANN202
        if module.global_step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # RecoveryCheckpoint's handler: stop once this batch is saved
        return step(module, batch, idx)

    with monkeypatch.context() as patch, pytest.raises(SystemExit):
        patch.setattr(ImageClassifier, "training_step", stop_after_batch_1)
        run(overrides, "parts")
    assert json.loads((tmp_path / "parts" / "results.json").read_text())["global_step"] == 2  # inside the epoch
    _, parts = run(overrides, "parts")
    assert parts["results"]["global_step"] == whole["results"]["global_step"] == 4
    for key in ("train/loss", "train/acc", "lr", "val/acc", "val/loss"):
        assert parts["results"]["final"][key] == whole["results"]["final"][key], key
