"""Atomic writes: whole files only, with the mode a plain open() gives (results are readable by colleagues)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from cimexp.cim import CIMConv2d, calibrate
from cimexp.files import atomic_write, atomic_write_json


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_json_files_get_the_mode_of_plain_files(tmp_path: Path, umask_022) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_json(tmp_path / "results.json", {"acc": np.float32(0.5), "t": torch.tensor(2), "p": tmp_path})
    assert _mode(tmp_path / "results.json") == _mode(plain) == 0o644
    assert json.loads((tmp_path / "results.json").read_text()) == {"acc": 0.5, "t": 2, "p": str(tmp_path)}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "results.json", {"status": "running"})

    def broken(f):
        f.write(b'{"status": "fin')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "results.json", broken)
    assert json.loads((tmp_path / "results.json").read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_exported_chip_programs_are_readable_too(tmp_path: Path, umask_022) -> None:
    layer = CIMConv2d(4, 4, 3, padding=1, array_size=36)
    calibrate(layer, torch.rand(2, 4, 5, 5))
    paths = layer.cim_program().save(tmp_path / "layer")
    assert [_mode(Path(p)) for p in paths] == [0o644, 0o644]


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: what a crafted checkpoint would do with a real payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("entry", ["model.init_from", "cimexp.evaluate", "ckpt_path"])
def test_a_checkpoint_carrying_code_is_refused_and_never_runs(make_cfg, tiny_data, tmp_path: Path, entry: str) -> None:
    """Every place that reads user-given checkpoints (float weights to fine-tune from; checkpoints to evaluate; a
    checkpoint to resume training from, which Lightning loads with ``weights_only=True`` too) refuses a file whose
    unpickling would run code, names it, and the payload never runs; a refused resume leaves no run directory."""
    from cimexp.models import load_float_weights, resnet20
    from cimexp.run.build import load_checkpoint
    from cimexp.train import train

    marker = tmp_path / "payload_ran"
    crafted = tmp_path / "checkpoints" / "last.ckpt"
    crafted.parent.mkdir()
    torch.save({"state_dict": {"model.fc.bias": torch.zeros(10)}, "hyper_parameters": _Payload(marker)}, crafted)
    with pytest.raises(ValueError, match=r"refusing to load .*last\.ckpt.*could run code"):
        if entry == "model.init_from":
            load_float_weights(resnet20(), crafted)
        elif entry == "cimexp.evaluate":
            load_checkpoint(crafted)
        else:
            train(make_cfg([*tiny_data, "logger=none", f"ckpt_path={crafted}"], "resumed"))
    assert not marker.exists()
    assert not (tmp_path / "resumed").exists()
