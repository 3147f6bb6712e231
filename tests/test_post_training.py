"""cimexp.post_training: the post-training table on synthetic data, end to end; resuming and growing it; errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from cimexp.cim import Calibration
from cimexp.models import resnet20
from cimexp.post_training import post_training
from cimexp.report.post_training import COLUMNS, COLUMNS_0_2, render_table
from cimexp.report.stats import estimate
from cimexp.run.build import build_net
from cimexp.run.classifier import calibrate_network
from cimexp.run.post_training import calibration_batches, point_config, top1_accuracy

TINY = [
    "data=synthetic",
    "data.image_size=8",
    "data.train_size=32",
    "data.val_size=20",
    "data.batch_size=8",
    "model.kernels=eager",
    "grid.psum=[column]",
    "grid.adc_bits=[3]",
    "grid.weight_methods=[max,mse]",
    "grid.psum_methods=[percentile]",
    "calibration.bn_batches=2",
]
"""Synthetic 8x8 images; a 2 x 1 x 1 x 2 x 1 grid of CIM ResNet-20 points, BatchNorm re-estimated on 16 images."""


@pytest.fixture
def float_ckpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "float.pt"
    torch.save(resnet20(num_classes=10).state_dict(), path)
    return path


@pytest.fixture
def table(make_cfg, float_ckpt: Path, tmp_path: Path):
    """``table(overrides)``: run the post-training table into ``tmp_path / "table"``."""

    def _run(overrides: list[str]) -> tuple[list[dict], dict]:
        cfg = make_cfg(
            [*TINY, f"model.init_from={float_ckpt}", f"out_dir={tmp_path}/table", *overrides], "run", "post_training"
        )
        return post_training(cfg)

    return _run


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_table_end_to_end_then_resumed_grown_and_extended(table, make_cfg, float_ckpt: Path, tmp_path: Path) -> None:
    rows, info = table(["grid.weight=[layer,column]"])
    assert info["computed"] == 5  # the float network and 2 granularities x 2 weight methods
    assert [(r["weight_granularity"], r["weight_method"]) for r in rows] == [
        ("float", ""),
        ("layer", "max"),
        ("layer", "mse"),
        ("column", "max"),
        ("column", "mse"),
    ]
    stored = _csv(info["csv"])
    assert tuple(stored[0]) == COLUMNS and stored == rows
    assert {(r["val_images"], r["calibration_images"], r["bn_images"], r["ckpt"]) for r in rows} == {
        ("20", "8", "16", "float.pt")
    }
    text = info["table"].read_text()
    for words in ("### 3-bit ADC", "| max / percentile |", "layer/column | column/column", "Best method per scheme"):
        assert words in text
    assert "BatchNorm re-estimated on 16 images" in text and f"Float network: {rows[0]['top1']}%" in text
    assert text.count("**") == 2 * 2  # the best method of each of the 2 schemes in bold

    # A point is what the API gives: calibrate on the first training batch, re-estimate BatchNorm, evaluate.
    cfg = make_cfg([*TINY, f"model.init_from={float_ckpt}"], "check", "post_training")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    batches = [images for images, _ in list(datamodule.train_dataloader())[:2]]
    net = build_net(point_config(cfg, "column", "column", 3), 10)
    calibrate_network(net, batches, Calibration(weight="max", psum="percentile"), 1, 2)
    accuracy = top1_accuracy(net, datamodule.val_dataloader(), torch.device("cpu"))
    assert rows[3]["top1"] == f"{100 * accuracy:.2f}"

    again, info = table(["grid.weight=[layer,column]"])
    assert info["computed"] == 0 and again == rows and _csv(info["csv"]) == rows
    info["csv"].rename(info["csv"].with_name("cells.csv"))  # the file's name in 0.1: adopted, nothing recomputed
    again, info = table(["grid.weight=[layer,column]"])
    assert info["computed"] == 0 and again == rows and not info["csv"].with_name("cells.csv").exists()

    grown, info = table(["grid.weight=[layer,array,column]"])
    assert info["computed"] == 2 and len(_csv(info["csv"])) == 7
    assert [r["weight_granularity"] for r in grown] == ["float", "layer", "layer", "array", "array", "column", "column"]

    changed, info = table(["grid.weight=[layer]", "calibration.percentile=99"])
    assert info["computed"] == 3 and changed[0]["setting"] != rows[0]["setting"]  # float too: a new setting
    assert info["table"].read_text().count("## Setting") == 2


@pytest.mark.parametrize(
    ("overrides", "error", "words"),
    [
        (["grid.psum_methods=[prc]"], ValueError, ["grid.psum_methods", "'prc'", "max, percentile, lsq, mse"]),
        (["grid.weight_methods=[percentile]"], ValueError, ["grid.weight_methods", "max, lsq, mse"]),
        (["grid.weight=[row]"], ValueError, ["grid.weight", "'row'", "layer, array, channel, column"]),
        (["grid.adc_bits=[0]"], ValueError, ["grid.adc_bits", "0"]),
        (["grid.psum=[]"], ValueError, ["grid.psum", "non-empty list"]),
        (["grid.draws=[-1]"], ValueError, ["grid.draws", "-1", "integers >= 0"]),
        (["grid.draws=[0,1,0]"], ValueError, ["grid.draws", "listed twice"]),
        (["calibration.act=minmax"], ValueError, ["calibration.act", "'minmax'"]),
        (["calibration.bn_batches=-1"], ValueError, ["calibration.bn_batches=-1"]),
        (["cim=none"], ValueError, ["needs CIM layers", "cim=default"]),
        # every point would run without ADCs under labels of partial-sum granularities and ADC bits
        (["granularity=column_nopsq"], ValueError, ["granularity.psum_quant=false", "valid: true"]),
        (["model.init_from=/nonexistent/float.pt"], FileNotFoundError, ["/nonexistent/float.pt", "CIMEXP_FLOAT_CKPT"]),
    ],
)
def test_bad_values_are_refused_before_any_work(table, tmp_path: Path, overrides, error, words) -> None:
    with pytest.raises(error) as info:
        table(overrides)
    for word in words:
        assert word in str(info.value)
    assert not (tmp_path / "table").exists()


def test_a_cells_csv_of_another_version_is_refused(table, tmp_path: Path) -> None:
    (tmp_path / "table").mkdir()
    (tmp_path / "table" / "points.csv").write_text("scheme,top1\nlayer/layer,50\n")
    with pytest.raises(ValueError, match="written by another version"):
        table(["grid.weight=[layer]"])


def test_calibration_draws_give_means_intervals_and_paired_differences(table, make_cfg, float_ckpt, tmp_path) -> None:
    rows, info = table(["grid.weight=[layer,column]", "grid.weight_methods=[max]", "grid.draws=[0,1,2]"])
    assert info["computed"] == 1 + 3 * 2
    assert [(r["weight_granularity"], r["draw"]) for r in rows] == [
        ("float", ""),
        *[(weight, draw) for draw in "012" for weight in ("layer", "column")],
    ]
    # A draw is the first batches of the training loader's epoch of that number: other images, the same each time.
    cfg = make_cfg([*TINY, f"model.init_from={float_ckpt}"], "check", "post_training")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    draws = [calibration_batches(datamodule, draw, 2) for draw in (0, 1)]
    assert not torch.equal(draws[0][0], draws[1][0])
    assert all(torch.equal(a, b) for a, b in zip(calibration_batches(datamodule, 1, 2), draws[1], strict=True))
    assert torch.equal(draws[0][0], next(iter(datamodule.train_dataloader()))[0])  # draw 0: cimexp 0.2's batches

    top1 = {(r["weight_granularity"], r["draw"]): float(r["top1"]) for r in rows[1:]}
    text = info["table"].read_text()
    assert "Calibration draws 0, 1, 2: a cell is the mean ± std over them." in text
    column = estimate(top1[("column", d)] for d in "012")
    assert f"| column/column | {column.format(label_ci=False)} |" in text
    paired = estimate(top1[("column", d)] - top1[("layer", d)] for d in "012")
    assert f"| column | {paired.format(signed=True, label_ci=False)} |" in text

    # A points.csv of 0.2 (no draw column, one draw: 0) is read as draw 0: only the new draws are computed.
    stored = _csv(info["csv"])
    legacy = [{k: v for k, v in r.items() if k != "draw"} for r in stored if r["draw"] in ("", "0")]
    info["csv"].write_text(
        ",".join(COLUMNS_0_2) + "\n" + "".join(",".join(r[k] for k in COLUMNS_0_2) + "\n" for r in legacy)
    )
    again, info = table(["grid.weight=[layer,column]", "grid.weight_methods=[max]", "grid.draws=[0,1]"])
    assert info["computed"] == 2  # draw 1 again, with the same numbers
    assert [{**r, "seconds": ""} for r in again] == [{**r, "seconds": ""} for r in rows[:5]]
    assert tuple(_csv(info["csv"])[0]) == COLUMNS


def test_one_draw_renders_as_before_draws_existed() -> None:
    common = dict.fromkeys(COLUMNS, "1") | {"setting": "s", "ckpt": "c.pt", "data": "d", "seconds": "1.0"}
    rows = [
        common | {"weight_granularity": "float", "psum_granularity": "float", "adc_bits": "", "draw": "", "top1": "90"},
        *(
            common
            | {"adc_bits": "4", "weight_granularity": w, "psum_granularity": "column", "weight_method": "max"}
            | {"psum_method": "percentile", "draw": "0", "top1": top1}
            for w, top1 in (("layer", "61.25"), ("column", "70.50"))
        ),
    ]
    text = render_table(rows)
    assert "| max / percentile | **61.25** | **70.50** |" in text  # the best (only) method of each scheme
    assert "| column/column | 70.50 (max / percentile) |" in text
    assert "draws" not in text and "±" not in text
