"""`python -m cimexp.report` and its pure parts, on a small fake tree of results.json files whose numbers are known."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cimexp.report import (
    adc_energy_figure,
    collect,
    find_results,
    grid_table,
    history_table,
    load_report,
    log_to_wandb,
    make_report,
    reference_table,
    time_to_accuracy_table,
    variation_table,
    write_report,
)
from cimexp.report.cli import gather, main
from cimexp.report.collect import COLUMNS, GRANULARITIES, granularity_rank, parse_results, runs_table
from cimexp.report.curves import in_stage1
from cimexp.report.figures import REFERENCE_LABEL, qat_figure
from cimexp.report.figures import granularity_grid_figure as granularity_grid
from cimexp.report.markdown import paired_lines, to_markdown
from cimexp.report.publish import FIGURES
from cimexp.report.reference import PAPER_FILE, REFERENCE_COLUMNS, paper_reference
from cimexp.report.stats import estimate_columns
from cimexp.report.tables import (
    NO_PSQ_COLUMN,
    adc_energy_table,
    adc_noise_table,
    clip_rate_table,
    comparison_table,
    paired_table,
    paired_tables,
    pareto_front,
    summary_table,
    varying,
)

IN_THE_TREE = sorted(set(FIGURES) - {"budget"})
"""The figures the results tree (:func:`make_results_tree`) has data for: all but the budget figure, which needs a
scheme pair trained for two lengths (its own test: ``test_budget_figure_draws_each_paired_difference_...``)."""
REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "report.ipynb"
CIM_LAYERS = 18
DEQUANT_PER_LAYER = {"layer/layer": 1, "layer/column": 1000, "column/array": 1000, "column/column": 1000}
ADC_ENERGY_PJ = {"layer/layer": 5000.0, "layer/column": 9000.0, "column/column": 9000.0}


def _cim(weight: str, psum: str, psum_quant: bool = True) -> dict[str, Any]:
    return {
        "w_bits": 4,
        "a_bits": 4,
        "cell_bits": 2,
        "adc_bits": 4,
        "array_size": 128,
        "weight_granularity": weight,
        "psum_granularity": psum,
        "psum_quant": psum_quant,
        "weight_encoding": "twos_complement",
    }


def _summary(weight: str, psum: str, psum_quant: bool = True) -> dict[str, Any]:
    total: dict[str, Any] = {"dequant_ops": DEQUANT_PER_LAYER.get(f"{weight}/{psum}", 100) * CIM_LAYERS}
    total.update({"arrays": 57, "adc_conversions": 56320, "cim_layers": CIM_LAYERS})
    if psum_quant and f"{weight}/{psum}" in ADC_ENERGY_PJ:
        cost_model = {"name": "zigzag", "adc_share": 1, "source": "test"}
        total.update(
            {"adc_energy_pj": ADC_ENERGY_PJ[f"{weight}/{psum}"], "adc_model": "zigzag", "cost_model": cost_model}
        )
    return {"layers": [], "total": total}


def train_results(
    dataset: str,
    weight: str | None,
    psum: str | None,
    acc: float,
    seed: int = 0,
    psum_quant: bool = True,
    schedule: str = "one_stage",
    history: list[tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """A finished training run's results.json (train.py's schema); ``weight=None`` is the float network.
    ``history``: ``(cum_train_time_s, val/acc)`` per epoch."""
    is_cim = weight is not None
    records = [
        {"epoch": epoch, "step": 10 * (epoch + 1), "cum_train_time_s": time_s, "val/acc": val_acc, "val/loss": 1.0}
        for epoch, (time_s, val_acc) in enumerate(history or [])
    ]
    return {
        "kind": "train",
        "status": "finished",
        "run_name": f"{weight}/{psum}",
        "sweep_group": "sweep",
        "run_dir": "/somewhere/else",
        "overrides": [],
        "choices": {},
        "git": {"commit": "abc", "dirty": False},
        "model": "resnet20",
        "data": dataset,
        "cim": _cim(weight, psum, psum_quant) if is_cim else None,
        "schedule": {"name": schedule, "stage1_epochs": 2 if schedule == "two_stage" else 0},
        "seed": seed,
        "epochs": max(len(records), 1),
        "global_step": 40,
        "wall_time_s": 100.0,
        "train_time_s": records[-1]["cum_train_time_s"] if records else 90.0,
        "final": {"val/acc": acc, "val/acc5": 0.99, "val/loss": 0.5, "train/loss": 0.4},
        "best": {"val/acc": max([acc] + [r["val/acc"] for r in records]), "epoch": 0, "cum_train_time_s": 90.0},
        "checkpoints": {"best": None, "last": None},
        "cim_summary": _summary(weight, psum, psum_quant) if is_cim else None,
        "history": records,
    }


def evaluate_results(weight: str, psum: str, sigma: float, seed: int, acc: float, with_train: bool) -> dict[str, Any]:
    """A finished evaluation run's results.json (cimexp.evaluate's schema)."""
    trained = train_results("cifar10", weight, psum, 0.9)
    trained.pop("history")
    return {
        "kind": "evaluate",
        "status": "finished",
        "run_name": f"sigma={sigma}",
        "sweep_group": "variation",
        "run_dir": "/elsewhere",
        "overrides": [],
        "ckpt": f"/ckpts/{weight}_{psum}.ckpt",
        "cim": _cim(weight, psum),
        "schedule": {"name": "one_stage", "stage1_epochs": 0, "stage2_started_epoch": None},
        "model": "resnet20",
        "data": "cifar10",
        "seed": 7,
        "variation": {"sigma": sigma, "seed": seed},
        "clean": {"val/acc": 0.9, "val/acc_top5": 0.99, "val/loss": 0.4},
        "final": {"val/acc": acc, "val/acc_top5": 0.98, "val/loss": 0.6},
        "cim_summary": _summary(weight, psum),
        "train_results": trained if with_train else None,
        "wall_time_s": 3.0,
    }


GRID_RUNS = [  # cifar10, one-stage QAT: (weight, psum, psum_quant, seed, acc)
    ("layer", "layer", True, 0, 0.80),
    ("layer", "layer", True, 1, 0.82),
    ("layer", "column", True, 0, 0.85),
    ("column", "array", True, 0, 0.86),
    ("column", "column", True, 0, 0.88),
    ("layer", "column", False, 0, 0.89),
    ("column", "column", False, 0, 0.90),
]
VARIATION_ACC = {  # (scheme, sigma) -> accuracy of variation seeds 0 and 1
    ("column/column", 0.0): (0.88, 0.88),
    ("column/column", 0.1): (0.87, 0.85),
    ("column/column", 0.2): (0.80, 0.76),
    ("layer/layer", 0.0): (0.81, 0.81),
    ("layer/layer", 0.1): (0.75, 0.73),
    ("layer/layer", 0.2): (0.60, 0.50),
}
CLIP_RATES = {"layer": (0.10, 0.20, 0.30), "array": (0.05, 0.1, 0.1), "column": (0.01, 0.02, 0.03)}
"""Per-layer ADC clip rates in the grid runs' psum_telemetry, by partial-sum granularity."""
ONE_STAGE_CURVE = [(60.0, 0.50), (120.0, 0.70), (180.0, 0.85), (240.0, 0.88)]
TWO_STAGE_CURVE = [(50.0, 0.60), (100.0, 0.75), (150.0, 0.80), (200.0, 0.85)]
N_TRAIN = len(GRID_RUNS) + 1 + 2
N_EVALUATE = 2 * len(VARIATION_ACC)


def write_results(root: Path, relative: str, content: dict[str, Any] | str) -> None:
    """``content`` (a record, or raw text) as ``root/relative/results.json``."""
    path = root / relative / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))


def make_results_tree(root: Path) -> Path:
    """A results tree like ``logs/``: a cifar10 granularity multirun with a float run, a cifar100 QAT comparison
    (one- vs two-stage, with histories), a variation sweep of evaluation runs, and four bad files."""
    write = partial(write_results, root)
    for i, (weight, psum, psum_quant, seed, acc) in enumerate(GRID_RUNS):
        results = train_results("cifar10", weight, psum, acc, seed, psum_quant)
        if psum_quant:
            rates = CLIP_RATES[psum]
            results["psum_telemetry"] = {
                f"layer{j}.conv": {"clip_rate": rate, "code_utilization": 0.75, "conversions": 1000}
                for j, rate in enumerate(rates)
            }
        write(f"train/multiruns/grid/{i}", results)
    write("train/runs/float", train_results("cifar10", None, None, 0.91))
    one_stage = train_results("cifar100", "column", "column", 0.88, history=ONE_STAGE_CURVE)
    two_stage = train_results("cifar100", "layer", "column", 0.85, schedule="two_stage", history=TWO_STAGE_CURVE)
    write("train/multiruns/qat/0", one_stage)
    write("train/multiruns/qat/1", two_stage)
    for i, ((scheme, sigma), accs) in enumerate(VARIATION_ACC.items()):
        weight, psum = scheme.split("/")
        for seed, acc in enumerate(accs):
            write(f"evaluate/multiruns/var/{i}_{seed}", evaluate_results(weight, psum, sigma, seed, acc, seed == 0))
    write("train/runs/truncated", '{"status": "finished", "final": {"val/acc"')
    write("train/runs/running", {"status": "running", "history": []})
    no_final = train_results("cifar10", "layer", "layer", 0.8)
    del no_final["final"]
    write("train/runs/no_final", no_final)
    write("train/runs/percent", train_results("cifar10", "layer", "layer", 80.0))
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_results_tree(tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="module")
def collected(tree: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return collect([tree])


@pytest.fixture(scope="module")
def report_dir(tree: Path, collected, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs, skipped = collected
    out = tmp_path_factory.mktemp("report")
    write_report(make_report(runs, skipped, reference=reference_table(["paper"])), out)
    return out


def test_collect_one_row_per_finished_run_with_the_table_columns(collected, tree: Path) -> None:
    runs, _ = collected
    assert list(runs.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert (runs["kind"] == "train").sum() == N_TRAIN and (runs["kind"] == "evaluate").sum() == N_EVALUATE
    # where the file is found, relative to the sweep root: committed tables hold no machine's absolute paths
    assert not runs["run_dir"].map(lambda d: Path(d).is_absolute()).any()
    assert runs["run_dir"].map(lambda d: (tree / d / "results.json").is_file()).all()

    grid_row = runs[(runs["dataset"] == "cifar10") & (runs["scheme"] == "layer/column") & (runs["kind"] == "train")]
    row = grid_row.iloc[0]
    assert row["acc"] == pytest.approx(85.0) and row["acc_best"] == pytest.approx(85.0)
    assert row["acc_top5"] == pytest.approx(99.0)
    assert (row["weight_granularity"], row["psum_granularity"], row["psum_quant"]) == ("layer", "column", True)
    assert (row["w_bits"], row["a_bits"], row["cell_bits"], row["adc_bits"], row["array_size"]) == (4, 4, 2, 4, 128)
    assert row["weight_encoding"] == "twos_complement" and row["schedule"] == "one_stage"
    assert row["dequant_ops"] == 1000 * CIM_LAYERS and row["dequant_ops_per_layer"] == pytest.approx(1000)
    assert row["sigma"] == 0.0 and row["seed"] == 0 and row["epochs"] == 1 and row["train_time_s"] == 90.0
    assert row["adc_energy_pj"] == 9000.0 and row["adc_model"] == "zigzag"
    assert json.loads(row["cost_model"]) == {"name": "zigzag", "adc_share": 1, "source": "test"}

    no_psq = runs[(runs["scheme"] == "layer w/o PSQ")].iloc[0]
    assert no_psq["psum_granularity"] == "none" and not no_psq["psum_quant"]
    assert pd.isna(no_psq["adc_energy_pj"]) and pd.isna(no_psq["cost_model"])  # no cost keys in its file

    fp = runs[runs["scheme"] == "float"].iloc[0]
    assert (fp["weight_granularity"], fp["psum_granularity"]) == ("float", "float") and fp["acc"] == 91.0
    assert pd.isna(fp["adc_bits"]) and pd.isna(fp["dequant_ops_per_layer"])

    evaluated = runs[(runs["kind"] == "evaluate") & (runs["scheme"] == "column/column") & (runs["sigma"] == 0.1)]
    assert sorted(evaluated["acc"]) == pytest.approx([85.0, 87.0])
    assert sorted(evaluated["seed"]) == [0, 1] and set(evaluated["train_seed"]) == {7}
    assert set(evaluated["acc_clean"]) == {90.0}
    with_train = evaluated[evaluated["seed"] == 0].iloc[0]
    without_train = evaluated[evaluated["seed"] == 1].iloc[0]
    assert with_train["epochs"] == 1 and with_train["train_time_s"] == 90.0 and with_train["acc_best"] == 90.0
    assert pd.isna(without_train["train_time_s"])
    assert without_train["epochs"] == 1  # its checkpoint's length, known from the other evaluation of that checkpoint
    # the checkpoint relative to the run directory the record names, joined to the run's directory in the table
    run_dir = Path(with_train["run_dir"])
    assert Path(with_train["ckpt"]) == run_dir.parent / "ckpts" / "column_column.ckpt"  # /elsewhere/../ckpts/...


def test_collect_skips_and_lists_bad_files_without_crashing(collected) -> None:
    _, skipped = collected
    reasons = {Path(path).parent.name: reason for path, reason in zip(skipped["path"], skipped["reason"], strict=True)}
    assert set(reasons) == {"truncated", "running", "no_final", "percent"}
    assert reasons["running"] == "unfinished: status='running'"
    assert reasons["truncated"].startswith("malformed (JSONDecodeError)")
    assert "missing key 'final'" in reasons["no_final"]
    assert "final.val/acc=80.0 is not an accuracy fraction" in reasons["percent"]


def test_a_diverged_seed_is_a_result_not_a_skipped_file(tmp_path: Path) -> None:
    """Dropping a seed that diverged would pick the seeds that make a scheme look good: it stays in the mean."""
    for seed, acc in enumerate([0.84, 0.83, 0.10]):
        record = train_results("cifar10", "layer", "layer", acc, seed)
        if seed == 2:
            record["status"], record["final"]["val/loss"] = "diverged", math.nan
        write_results(tmp_path, f"seed={seed}", record)
    runs, skipped = collect([tmp_path])
    assert skipped.empty and runs["status"].tolist() == ["finished", "finished", "diverged"]
    cell = grid_table(runs).iloc[0]
    assert cell["layer_n"] == 3 and cell["layer"] == pytest.approx((84 + 83 + 10) / 3)
    report_dir = tmp_path / "report"
    write_report(make_report(runs, skipped), report_dir)
    saved = pd.read_csv(report_dir / "runs.csv")
    saved.drop(columns="status").to_csv(report_dir / "runs.csv", index=False)  # as written before the column
    assert load_report(report_dir).runs["status"].tolist() == ["finished"] * 3


def test_a_run_an_earlier_report_skipped_is_not_listed_once_it_finished(tmp_path: Path) -> None:
    sweeps = tmp_path / "sweeps"
    write_results(sweeps, "a/seed=0", train_results("cifar10", "layer", "column", 0.85, 0))
    write_results(sweeps, "a/seed=1", {"kind": "train", "status": "interrupted"})
    assert main([str(sweeps), "--out", str(tmp_path / "old")]) == 0
    assert pd.read_csv(tmp_path / "old" / "skipped.csv")["path"].tolist() == ["a/seed=1/results.json"]
    write_results(sweeps, "a/seed=1", train_results("cifar10", "layer", "column", 0.86, 1))  # resumed
    write_results(sweeps, "b/seed=0", train_results("cifar10", "column", "column", 0.84, 0))  # another sweep
    runs, skipped, _ = gather([str(tmp_path / "old" / "runs.csv"), str(sweeps / "a" / "seed=1"), str(sweeps / "b")])
    assert sorted(runs["run_dir"]) == ["a/seed=0", "a/seed=1", "b/seed=0"] and skipped.empty


def test_runs_of_different_lengths_are_not_pooled(tmp_path: Path) -> None:
    """A 1-epoch grid and 2-epoch schedule runs of the same scheme (the medium study's Figs. 7 and 9) stay apart."""
    for epochs, accs in ((1, [0.85, 0.86]), (2, [0.87, 0.88])):
        for seed, acc in enumerate(accs):
            record = train_results("cifar10", "column", "column", acc, seed)
            record["epochs"] = epochs
            write_results(tmp_path, f"e{epochs}/seed={seed}", record)
    runs, _ = collect([tmp_path])
    grid = grid_table(runs).reset_index()
    assert grid["epochs"].tolist() == [1, 2] and grid["column"].tolist() == pytest.approx([85.5, 87.5])
    assert grid["column_n"].tolist() == [2, 2]


def test_find_results_names_a_missing_path_and_deduplicates(tree: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.*neither a directory nor a results.json"):
        find_results([tree / "nope"])
    grid = tree / "train" / "multiruns" / "grid"
    assert len(find_results([grid, grid / "0", grid / "0" / "results.json"])) == len(GRID_RUNS)


def test_granularity_labels_sort_as_the_layer_orders_its_levels() -> None:
    from cimexp.cim import Granularity  # the report itself does not import torch

    assert tuple(level.name.lower() for level in sorted(Granularity)) == GRANULARITIES
    labels = ["float", "column", "none", "channel", "array", "layer"]
    assert sorted(labels, key=granularity_rank) == ["layer", "array", "channel", "column", "none", "float"]


def test_grid_table_pivots_weight_by_psum_with_no_psq_and_float(collected) -> None:
    grid = grid_table(collected[0])
    # cifar100's runs are two-stage and 4 epochs long: both keys vary
    assert grid.index.names == ["model", "dataset", "schedule", "epochs", "weight_granularity"]
    means = ["layer", "array", "column", NO_PSQ_COLUMN, "float"]
    assert list(grid.columns) == [c for name in means for c in estimate_columns(name)]
    layer = grid.loc[("resnet20", "cifar10", "one_stage", 1, "layer")]
    assert layer["layer"] == pytest.approx(81.0)  # mean of seeds 0 and 1
    assert (layer["layer_std"], layer["layer_n"]) == (pytest.approx(math.sqrt(2.0)), 2)
    half = 12.7062047361747 * math.sqrt(2.0) / math.sqrt(2.0)  # t(0.975, 1) * std / sqrt(n)
    assert (layer["layer_ci_low"], layer["layer_ci_high"]) == pytest.approx((81.0 - half, 81.0 + half))
    assert layer["column"] == pytest.approx(85.0) and pd.isna(layer["array"]) and layer["column_n"] == 1
    assert pd.isna(layer["column_std"]) and pd.isna(layer["column_ci_low"])  # one seed: no spread to give
    assert layer[NO_PSQ_COLUMN] == pytest.approx(89.0) and layer["float"] == pytest.approx(91.0)
    column = grid.loc[("resnet20", "cifar10", "one_stage", 1, "column")]
    assert (column["array"], column["column"], column[NO_PSQ_COLUMN]) == pytest.approx((86.0, 88.0, 90.0))
    two_stage = grid.loc[("resnet20", "cifar100", "two_stage", 4, "layer")]
    assert two_stage["column"] == pytest.approx(85.0) and pd.isna(two_stage["float"])
    assert list(grid.index.get_level_values("weight_granularity")[:2]) == ["layer", "column"]


def test_variation_table_mean_and_std_over_seeds(collected) -> None:
    table = variation_table(collected[0]).set_index(["scheme", "sigma"])
    assert len(table) == len(VARIATION_ACC)
    for (scheme, sigma), accs in VARIATION_ACC.items():
        values = pd.Series(accs) * 100
        assert table.loc[(scheme, sigma), "acc"] == pytest.approx(values.mean())
        if sigma > 0:  # two chip instances of one training seed
            assert table.loc[(scheme, sigma), "acc_std"] == pytest.approx(values.std())
            assert table.loc[(scheme, sigma), "acc_n"] == 2
        else:  # without variation the chip seed changes nothing: one replicate per training seed, no spread
            assert table.loc[(scheme, sigma), "acc_n"] == 1 and pd.isna(table.loc[(scheme, sigma), "acc_std"])
    assert table.loc[("layer/layer", 0.2), "acc_std"] == pytest.approx(math.sqrt(50.0))


def test_adc_energy_table_is_relative_to_column_column_at_4_bits(collected) -> None:
    runs, _ = collected
    table = adc_energy_table(runs).set_index(["dataset", "scheme"])
    cifar10 = table.loc["cifar10"]
    assert cifar10.loc["column/column", "energy_rel"] == 1.0 and cifar10.loc["column/column", "acc_delta"] == 0.0
    assert cifar10.loc["layer/layer", "energy_rel"] == pytest.approx(5000 / 9000)
    assert cifar10.loc["layer/layer", "acc_delta"] == pytest.approx(81.0 - 88.0)  # seeds 0.80 and 0.82 averaged
    assert cifar10["reference"].unique().tolist() == ["column/column, 4-bit ADC"]
    assert cifar10["pareto"].tolist() == [True, False, True]  # layer/layer (cheapest), layer/column, column/column


def test_adc_energy_compares_configurations_trained_under_the_same_conditions(tmp_path: Path) -> None:
    for name, (weight, psum, acc, noise) in {
        "ll": ("layer", "layer", 0.80, 0.0),
        "cc": ("column", "column", 0.88, 0.0),
        "ll_noise_aware": ("layer", "layer", 0.70, 0.5),
    }.items():
        record = train_results("cifar10", weight, psum, acc)
        record["adc_errors"] = {"noise_lsb": noise}
        write_results(tmp_path, name, record)
    runs, _ = collect([tmp_path])
    table = adc_energy_table(runs).set_index(["noise_lsb", "scheme"])
    assert table.loc[(0.0, "layer/layer"), "acc_delta"] == pytest.approx(-8.0)  # against plain column/column
    assert table.loc[(0.0, "layer/layer"), "pareto"] and table.loc[(0.0, "column/column"), "pareto"]
    noise_aware = table.loc[(0.5, "layer/layer")]  # alone in its panel: its own reference, not column/column's
    assert noise_aware["reference"] == "layer/layer, 4-bit ADC" and noise_aware["acc_delta"] == 0.0
    assert noise_aware["pareto"]  # not dominated by the plain runs it is not comparable with
    assert len(adc_energy_figure(runs).axes) == 2  # one panel per condition (plain, noise-aware)


def test_dac_by_adc_sweep_points_name_both_bit_widths(tmp_path: Path) -> None:
    for dac_bits, adc_bits in ((None, 4), (1, 4), (1, 2)):  # None: one 4-bit DAC value (a_bits)
        record = train_results("cifar10", "column", "column", 0.8)
        record["cim"].update(dac_bits=dac_bits, adc_bits=adc_bits)
        write_results(tmp_path, f"dac{dac_bits}_adc{adc_bits}", record)
    runs, _ = collect([tmp_path])
    assert sorted(runs["dac_bits"]) == [1, 1, 4]
    assert len(adc_energy_table(runs)) == 3 and "dac_bits" in adc_energy_table(runs)
    labels = {text.get_text() for text in adc_energy_figure(runs).axes[0].texts}
    assert labels == {"DAC 4b, ADC 4b", "DAC 1b, ADC 4b", "DAC 1b, ADC 2b"}


def test_adc_noise_table_pivots_evaluation_noise_per_training_noise(tmp_path: Path, collected) -> None:
    accs = {  # (scheme, noise-aware training, evaluation noise) -> accuracy of noise seeds 0 and 1
        ("layer/layer", False, 0.0): (0.80, 0.80),
        ("layer/layer", False, 1.0): (0.50, 0.40),
        ("layer/layer", True, 0.0): (0.78, 0.78),
        ("layer/layer", True, 1.0): (0.70, 0.68),
        ("column/column", False, 0.0): (0.85, 0.85),
        ("column/column", False, 1.0): (0.60, 0.62),
    }
    for i, ((scheme, noise_aware, noise), pair) in enumerate(accs.items()):
        weight, psum = scheme.split("/")
        for seed, acc in enumerate(pair):
            record = evaluate_results(weight, psum, 0.0, 0, acc, with_train=True)
            record["adc_errors"] = {"noise_lsb": noise, "seed": seed}
            record["train_results"]["adc_errors"] = {"noise_lsb": 0.5 if noise_aware else 0.0}
            write_results(tmp_path, f"{i}_{seed}", record)
    runs, _ = collect([tmp_path])
    table = adc_noise_table(runs).set_index(["scheme", "train_noise_lsb"])
    assert table.loc[("layer/layer", 0.0), "noise=1 LSB"] == pytest.approx(45.0)
    assert table.loc[("layer/layer", 0.5), "noise=1 LSB"] == pytest.approx(69.0)
    assert table.loc[("column/column", 0.0), "noise=0 LSB"] == pytest.approx(85.0)
    assert table["noise=1 LSB_n"].tolist() == [2, 2, 2]  # each noisy evaluation is a replicate
    assert table["noise=0 LSB_n"].tolist() == [1, 1, 1]  # noise-free ones are deterministic: one per training seed
    assert table.index.tolist() == [("layer/layer", 0.0), ("layer/layer", 0.5), ("column/column", 0.0)]
    assert adc_noise_table(collected[0]).empty  # the variation sweep has one noise level
    assert variation_table(runs).empty  # and this sweep one sigma: no Fig. 10 of a single point


def test_clip_rate_table_from_psum_telemetry(collected) -> None:
    runs, _ = collected
    table = clip_rate_table(runs)
    layer_layer = table[table["scheme"] == "layer/layer"]
    assert layer_layer["layer"].tolist() == ["layer0.conv", "layer1.conv", "layer2.conv"]
    assert layer_layer["clip_rate_pct"].tolist() == pytest.approx([10.0, 20.0, 30.0])  # mean of the two seeds
    column = runs[(runs["scheme"] == "column/column") & (runs["kind"] == "train") & (runs["dataset"] == "cifar10")]
    assert column["clip_rate"].tolist() == pytest.approx([0.02])
    assert runs.loc[~runs["psum_quant"].astype(bool), "clip_rate"].isna().all()
    assert (runs["noise_lsb"] == 0).all() and (runs["train_sigma"] == 0).all()


def test_history_and_time_to_accuracy(collected) -> None:
    history = history_table(collected[0])
    assert len(history) == len(ONE_STAGE_CURVE) + len(TWO_STAGE_CURVE)
    assert sorted(history["acc"].unique())[-1] == pytest.approx(88.0)
    table = time_to_accuracy_table(history)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["curve_a"], row["curve_b"]) == ("layer/column, two-stage", "column/column, one-stage")
    assert (row["best_a"], row["best_b"], row["target_acc"]) == pytest.approx((85.0, 88.0, 85.0))
    assert (row["epoch_a"], row["epoch_b"]) == (3, 2)  # the one-stage run reaches 85% one epoch earlier
    assert (row["time_a_min"], row["time_b_min"]) == pytest.approx((200 / 60, 180 / 60))
    assert row["faster"] == "column/column, one-stage" and row["time_saved_pct"] == pytest.approx(10.0)


def test_stage1_epochs_of_two_stage_qat_do_not_count_as_reached_accuracy(tmp_path) -> None:
    # Stage 1 validates without partial-sum quantization: its 95% is not what two-stage QAT delivers (86% at stage 2).
    two_stage = train_results(
        "cifar10",
        "layer",
        "column",
        0.86,
        schedule="two_stage",
        history=[(100, 0.90), (200, 0.95), (300, 0.8), (400, 0.86)],
    )
    write_results(tmp_path, "two", two_stage)
    write_results(tmp_path, "one", train_results("cifar10", "column", "column", 0.88, history=ONE_STAGE_CURVE))
    history = history_table(collect([tmp_path])[0])
    assert history.loc[in_stage1(history), "acc"].tolist() == pytest.approx([90.0, 95.0])
    row = time_to_accuracy_table(history).iloc[0]
    assert (row["curve_a"], row["curve_b"]) == ("layer/column, two-stage", "column/column, one-stage")
    assert (row["best_a"], row["best_b"], row["target_acc"]) == pytest.approx((86.0, 88.0, 86.0))
    assert (row["epoch_a"], row["epoch_b"]) == (3, 3)
    assert (row["time_a_min"], row["time_b_min"]) == pytest.approx((400 / 60, 240 / 60))
    assert row["faster"] == "column/column, one-stage"
    figure = qat_figure(history)
    (stage1_time,) = [line for line in figure.axes[0].get_lines() if line.get_marker() == "o" and len(line.get_xdata())]
    assert stage1_time.get_xdata().tolist() == pytest.approx([100 / 60, 200 / 60])
    stars = [line for line in figure.axes[0].get_lines() if line.get_marker() == "*"]
    assert sorted(star.get_ydata()[0] for star in stars) == pytest.approx([86.0, 88.0])


def test_pareto_front_keeps_points_nothing_cheaper_beats() -> None:
    x = pd.Series([1.0, 2.0, 2.0, 3.0, 0.5], index=list("abcde"))
    y = pd.Series([80.0, 85.0, 90.0, 89.0, 70.0], index=list("abcde"))
    assert pareto_front(x, y).to_dict() == {"a": True, "b": False, "c": True, "d": False, "e": True}


def test_a_float_network_does_not_make_cim_settings_vary() -> None:
    frame = pd.DataFrame({"w_bits": [4, 4, None], "adc_bits": [3, 4, None], "scheme": ["a", "b", "float"]})
    assert varying(frame, ["w_bits", "adc_bits", "missing"]) == ["adc_bits"]


def test_the_papers_numbers_ship_with_the_package() -> None:
    """``--reference paper`` reads report/published/kim2025.csv through the package, which the wheel carries."""
    paper = paper_reference()
    assert list(paper.columns) == [*REFERENCE_COLUMNS, "w_bits", "a_bits", "cell_bits", "adc_bits"]
    quantized = paper.loc[paper["weight_granularity"] != "float", ["w_bits", "a_bits", "cell_bits", "adc_bits"]]
    assert len(quantized) == 10 and (quantized == [4, 4, 2, 4]).all(axis=None)  # the paper's Table II
    assert paper.loc[paper["weight_granularity"] == "float", "adc_bits"].isna().all()  # a float network: any runs
    proposal = paper[(paper["dataset"] == "cifar10") & (paper["weight_granularity"] == "column")]
    assert proposal["acc"].tolist() == [90.21] and proposal["source"].tolist() == ["Kim et al. 2025, Sec. IV-B"]
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["cimexp.report"]
    package = REPO / "src" / "cimexp" / "report"
    shipped = [path.relative_to(package) for path in (package / "published").iterdir()]
    assert Path(PAPER_FILE) in shipped and all(any(f.match(glob) for glob in globs) for f in shipped)


def test_reference_numbers_and_comparison(collected, tmp_path: Path) -> None:
    reference = reference_table(["paper"])
    assert reference.equals(paper_reference())
    comparison = comparison_table(collected[0], reference)
    ours = comparison[(comparison["dataset"] == "cifar10") & (comparison["weight_granularity"] == "float")].iloc[0]
    assert ours["acc"] == pytest.approx(91.0) and ours["reference_acc"] == pytest.approx(90.70)
    assert ours["delta"] == pytest.approx(0.30)
    csv = tmp_path / "mine.csv"
    csv.write_text("model,dataset,weight_granularity,acc\nresnet20,cifar10,layer,80\n")
    with pytest.raises(ValueError, match="lacks the columns psum_granularity"):
        reference_table([csv])
    with pytest.raises(FileNotFoundError, match="`paper`"):
        reference_table(["papr"])


def test_runs_calibrated_differently_are_different_configurations() -> None:
    """How the steps started changes results by tens of points at a 3-bit ADC: it must never pool seeds."""
    rows = []
    for seed in (0, 1):
        for method, acc in (("percentile", 0.2), ("mse", 0.7)):
            record = train_results("cifar10", "layer", "layer", acc, seed)
            record["config"] = {"calibration.weight": "mse", "calibration.act": "mse", "calibration.psum": method}
            rows.append(parse_results(record, f"/runs/{method}/{seed}"))
    rows.append(parse_results(train_results("cifar10", None, None, 0.9), "/runs/float"))  # no CIM: no calibration
    runs = runs_table(rows)
    assert runs["calibration"].tolist().count("mse/mse/percentile") == 2 and runs["calibration"].isna().sum() == 1

    summary = summary_table(runs).dropna(subset=["calibration"]).set_index("calibration")
    assert summary.loc["mse/mse/percentile", "acc"] == pytest.approx(20.0)
    assert summary.loc["mse/mse/mse", "acc"] == pytest.approx(70.0) and summary.loc["mse/mse/mse", "acc_n"] == 2
    grid = grid_table(runs)
    assert sorted(grid["layer"].dropna()) == pytest.approx([20.0, 70.0])


def test_a_reference_number_meets_only_runs_of_its_settings(collected) -> None:
    """The paper's numbers were measured with 4-bit ADCs: the same scheme at 3 bits gets no published number."""
    runs = collected[0]
    layer_column = (runs["kind"] == "train") & (runs["dataset"] == "cifar10") & (runs["scheme"] == "layer/column")
    at_3_bits = runs[layer_column].assign(adc_bits=3, acc=runs.loc[layer_column, "acc"] - 20)
    reference = reference_table(["paper"])

    def compared(frame: pd.DataFrame) -> pd.DataFrame:
        table = comparison_table(frame, reference)
        return table[(table["dataset"] == "cifar10") & (table["weight_granularity"] == "layer")]

    both = compared(pd.concat([runs, at_3_bits], ignore_index=True))
    assert both["adc_bits"].tolist() == [4] and both["acc"].iloc[0] == pytest.approx(85.0)
    alone = compared(pd.concat([runs[~layer_column], at_3_bits], ignore_index=True))
    assert len(alone) == 1 and pd.isna(alone["acc"].iloc[0])  # the number stays, with no runs beside it

    figure = granularity_grid(pd.concat([runs, at_3_bits], ignore_index=True), reference=reference)
    stars = {  # published numbers drawn per cifar10 panel, by ADC resolution
        "adc_bits=3" in ax.get_title(): sum(line.get_marker() == "*" for line in ax.get_lines())
        for ax in figure.axes
        if "/ cifar10," in ax.get_title()
    }
    assert stars[False] >= 1 and stars[True] == 0


def test_write_report_writes_tables_figures_and_reads_back(report_dir: Path, collected) -> None:
    runs, skipped = collected
    for name in ["runs", "skipped", "granularity_grid", "variation", "qat_time_to_accuracy", "reference_comparison"]:
        assert (report_dir / f"{name}.csv").stat().st_size > 0 and (report_dir / f"{name}.md").is_file(), name
    for name in IN_THE_TREE:
        png, svg = report_dir / f"{name}.png", report_dir / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text(), name
    markdown = (report_dir / "report.md").read_text()
    assert "![granularity_grid](granularity_grid.png)" in markdown and "truncated/results.json" in markdown
    assert "| layer/column, two-stage |" in (report_dir / "qat_time_to_accuracy.md").read_text()

    loaded = load_report(report_dir)
    assert len(loaded.runs) == len(runs) and len(loaded.skipped) == len(skipped)
    pd.testing.assert_frame_equal(loaded.tables["granularity_grid"], make_report(runs).tables["granularity_grid"])
    pd.testing.assert_frame_equal(loaded.tables["variation"], variation_table(runs), check_dtype=False)
    assert set(loaded.figures) == set(IN_THE_TREE)


def test_figures_are_drawn_only_with_data_and_stale_ones_removed(collected, report_dir: Path, tmp_path: Path) -> None:
    runs, _ = collected
    shutil.copytree(report_dir, tmp_path, dirs_exist_ok=True)  # a full report from before
    floats_only = runs[runs["scheme"] == "float"]
    report = make_report(floats_only)
    assert report.figures == {} and set(report.tables) == {"summary"}  # the float run, over its one seed
    write_report(report, tmp_path)
    assert not list(tmp_path.glob("*.png")) and not (tmp_path / "variation.csv").exists()
    assert "Not drawn: needs evaluation runs" in (tmp_path / "report.md").read_text()
    empty, _ = collect([tmp_path])  # a directory without results.json
    assert empty.empty and make_report(empty).figures == {}


def test_cli_writes_the_report_and_lists_skipped_files(tree: Path) -> None:
    """Two directories (the variation sweep; the float run next to the bad files), the report in the default place."""
    variation, single_runs = tree / "evaluate", tree / "train" / "runs"
    command = [sys.executable, "-m", "cimexp.report", str(variation), str(single_runs), "--reference", "paper"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{N_EVALUATE + 1} finished runs (1 training, {N_EVALUATE} evaluation)" in result.stdout
    assert "4 results files skipped" in result.stdout and "status='running'" in result.stdout
    assert "figure variation: drawn" in result.stdout
    assert "figure qat: not drawn, needs training runs with a per-epoch history" in result.stdout
    out = variation / "report"
    assert (out / "variation.png").is_file() and (out / "variation.svg").is_file()
    assert not (out / "qat.png").exists()
    comparison = pd.read_csv(out / "reference_comparison.csv")  # only cifar10's published numbers
    assert set(comparison["dataset"]) == {"cifar10"} and comparison["acc"].notna().sum() == 1


def test_cli_errors_name_the_bad_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "missing' is neither a directory" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 1  # nothing to report
    assert (tmp_path / "report" / "report.md").is_file()


def test_log_to_wandb_offline_stores_tables_and_images(collected, tmp_path: Path) -> None:
    runs, skipped = collected
    evaluated = runs[runs["kind"] == "evaluate"]  # two figures (fewer to render): variation, and QAT curves
    report = make_report(evaluated, skipped, history=history_table(runs))
    assert set(report.figures) == {"qat", "variation"}
    run_dir = log_to_wandb(report, mode="offline", save_dir=tmp_path)
    assert run_dir is not None and run_dir.name.startswith("offline-run-") and run_dir.is_relative_to(tmp_path)
    assert list(run_dir.glob("*.wandb"))
    media = [p.name for p in (run_dir / "files" / "media").rglob("*") if p.is_file()]
    for name in report.figures:
        assert any(m.startswith(f"{name}_") and m.endswith(".png") for m in media), (name, media)
    for name in ["runs", "skipped", "variation", "qat_time_to_accuracy"]:
        assert any(m.startswith(f"{name}_") and m.endswith(".table.json") for m in media), (name, media)
    for plot in ["qat_time", "variation"]:  # the native line plots' tables (qat_epoch shares qat_time's)
        assert any(m.startswith(f"{plot}_table_") for m in media), (plot, media)
    assert log_to_wandb(report, mode="disabled") is None


def test_notebook_runs_on_a_results_directory(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("CIMEXP_RESULTS", str(tree))
    monkeypatch.delenv("CIMEXP_REPORT_DIR", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": REPO}}
    ).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) == len(IN_THE_TREE)
    text = "".join(output.get("text", "") for output in outputs)
    assert f"{N_TRAIN + N_EVALUATE} finished runs" in text and os.path.join("running", "results.json") in text


def test_smoke_runs_of_debug_profiles_stay_out_unless_asked_for(tmp_path: Path) -> None:
    """A one-batch ``debug=fdr`` run is no evidence: it is left out of the tables (and listed as skipped), unless
    the report is asked for it (``--include-debug``)."""
    write_results(tmp_path, "train/runs/real", train_results("cifar10", "column", "column", 0.80))
    smoke = train_results("cifar10", "layer", "layer", 0.6562)
    smoke["choices"] = {"debug": "fdr"}
    write_results(tmp_path, "debug/runs/fdr", smoke)

    runs, skipped = collect([tmp_path])
    assert len(runs) == 1 and runs["acc"].tolist() == [80.0]
    assert skipped["reason"].tolist() == ["smoke run (debug=fdr); include it with --include-debug"]
    runs, skipped = collect([tmp_path], include_debug=True)
    assert len(runs) == 2 and skipped.empty


# --- seeds and statistics: configurations over seeds, paired differences, figures that fit their canvas ----------

PAIRED_ACC = {  # scheme -> accuracy of seeds 0, 1, 2 (cifar10, 4-bit ADC)
    "column/column": (0.88, 0.90, 0.87),
    "layer/column": (0.86, 0.89, 0.84),  # column/column - layer/column: 2, 1, 3 points
    "layer/layer": (0.80, 0.80, 0.79),
}


def write_paired_runs(root: Path) -> None:
    """Three seeds of three schemes, and a fourth seed of layer/layer alone (nothing to pair it with)."""
    for scheme, accs in PAIRED_ACC.items():
        weight, psum = scheme.split("/")
        for seed, acc in enumerate(accs):
            write_results(root, f"{weight}_{psum}/seed={seed}", train_results("cifar10", weight, psum, acc, seed))
    write_results(root, "layer_layer/seed=3", train_results("cifar10", "layer", "layer", 0.50, seed=3))


def test_summary_table_gives_each_configuration_over_its_seeds(tmp_path: Path) -> None:
    write_paired_runs(tmp_path)
    runs, _ = collect([tmp_path])
    table = summary_table(runs).set_index("scheme")
    assert list(table.columns[:3]) == ["kind", "model", "dataset"] and "seed" not in table.columns
    column = table.loc["column/column"]
    assert (column["acc"], column["acc_std"], column["acc_n"]) == (pytest.approx(88.333333), pytest.approx(1.527525), 3)
    half = 4.302652729749464 * column["acc_std"] / math.sqrt(3)
    assert (column["acc_ci_low"], column["acc_ci_high"]) == pytest.approx((88.333333 - half, 88.333333 + half))
    assert table.loc["layer/layer", "acc_n"] == 4  # all its seeds, paired or not
    markdown = to_markdown(summary_table(runs))
    assert "| 88.33 ± 1.53 (n=3) [84.54, 92.13] |" in markdown and "_std" not in markdown


def test_paired_differences_pair_schemes_by_seed(tmp_path: Path) -> None:
    write_paired_runs(tmp_path)
    runs, _ = collect([tmp_path])
    table = paired_table(runs).set_index("scheme")
    assert set(table.index) == {"layer/column", "layer/layer"} and set(table["reference"]) == {"column/column"}
    # differences 2, 1, 3: mean 2, std 1, half-width t(0.975, 2) / sqrt(3) = 2.48414
    row = table.loc["layer/column"]
    assert (row["difference"], row["difference_std"], row["difference_n"]) == (pytest.approx(2.0), 1.0, 3)
    assert (row["difference_ci_low"], row["difference_ci_high"]) == pytest.approx((-0.484138, 4.484138), abs=1e-6)
    assert table.loc["layer/layer", "difference_n"] == 3  # seed 3 has no column/column run to pair with
    lines = paired_lines(paired_table(runs))
    assert "resnet20 / cifar10: column/column - layer/column: +2.00 ± 1.00 (n=3), 95% CI [-0.48, 4.48]" in lines
    against_layer = paired_table(runs, reference="layer/layer").set_index("scheme")
    assert against_layer.loc["column/column", "difference"] == pytest.approx(-(8.0 + 10.0 + 8.0) / 3)
    assert "| column/column | layer/column | +2.00 ± 1.00 (n=3) [-0.48, 4.48] |" in to_markdown(paired_table(runs))


def test_paired_differences_under_variation_pair_training_seed_and_chip(collected) -> None:
    table = paired_table(collected[0])
    evaluated = table[table["kind"] == "evaluate"].set_index("sigma")
    # column/column - layer/layer per chip at sigma 0.2: (80 - 60, 76 - 50) = (20, 26)
    assert evaluated.loc[0.2, "difference"] == pytest.approx(23.0) and evaluated.loc[0.2, "difference_n"] == 2
    assert evaluated.loc[0.0, "difference_n"] == 1  # without variation the chips are one and the same network


NESTED_SEED_SHIFT = (0.0, 0.04, -0.03)
"""A common effect of each training seed (0, 1, 2) on the accuracy of all its chip instances."""
NESTED_SCHEMES = {"column/column": 0.8, "layer/layer": 1.5}
"""Accuracy lost per unit sigma, by scheme."""


def nested_acc(scheme: str, sigma: float, seed: int, chip: int) -> float:
    """Accuracy (fraction) of the evaluation of training seed ``seed``'s checkpoint of ``scheme`` on chip ``chip``:
    a scheme and sigma effect, the seed's common shift, and a chip effect that differs between seeds and schemes."""
    chip_effect = 0.01 * chip * (1 + seed) * (2.0 if scheme == "layer/layer" else 1.0)
    return 0.85 - NESTED_SCHEMES[scheme] * sigma + NESTED_SEED_SHIFT[seed] - chip_effect


def write_nested_variation(root: Path, seeds: tuple[int, ...], chips: tuple[int, ...] = (0, 1, 2)) -> pd.DataFrame:
    """Evaluations of both :data:`NESTED_SCHEMES` at sigma 0.1 and 0.2 on ``chips`` of each training seed's
    checkpoint, collected."""
    for scheme, sigma, seed, chip in itertools.product(NESTED_SCHEMES, (0.1, 0.2), seeds, chips):
        weight, psum = scheme.split("/")
        record = evaluate_results(weight, psum, sigma, chip, nested_acc(scheme, sigma, seed, chip), with_train=True)
        record["seed"] = seed
        write_results(root, f"{weight}_{psum}/s={sigma}/seed={seed}/chip={chip}", record)
    return collect([root])[0]


def test_chip_instances_are_nested_in_their_training_seed(tmp_path: Path) -> None:
    runs = write_nested_variation(tmp_path, seeds=(0, 1, 2))
    table = variation_table(runs).set_index(["scheme", "sigma"])
    summary = summary_table(runs).set_index(["scheme", "sigma"])
    assert len(table) == 4  # two schemes at two sigmas
    for scheme, sigma in itertools.product(NESTED_SCHEMES, (0.1, 0.2)):
        chips = pd.DataFrame([[100 * nested_acc(scheme, sigma, s, c) for c in range(3)] for s in range(3)])
        seed_means = chips.mean(axis=1)  # the independent replicates: one per training seed
        row = table.loc[(scheme, sigma)]
        assert (row["acc"], row["acc_std"], row["acc_n"]) == (
            pytest.approx(seed_means.mean()),
            pytest.approx(seed_means.std()),
            3,
        )
        half = 4.302652729749464 * seed_means.std() / math.sqrt(3)  # t(0.975, 2): 2 degrees of freedom, not 8
        assert (row["acc_ci_low"], row["acc_ci_high"]) == pytest.approx(
            (seed_means.mean() - half, seed_means.mean() + half)
        )
        assert row["acc_std"] != pytest.approx(chips.stack().std())  # not the spread of the 9 runs
        assert summary.loc[(scheme, sigma), ["acc", "acc_std", "acc_n"]].tolist() == pytest.approx(
            row[["acc", "acc_std", "acc_n"]].tolist()
        )


def test_the_chips_of_one_training_seed_stay_its_replicates(tmp_path: Path) -> None:
    runs = write_nested_variation(tmp_path, seeds=(1,))
    table = variation_table(runs).set_index(["scheme", "sigma"])
    for scheme, sigma in itertools.product(NESTED_SCHEMES, (0.1, 0.2)):
        chips = pd.Series([100 * nested_acc(scheme, sigma, 1, c) for c in range(3)])
        row = table.loc[(scheme, sigma)]
        assert (row["acc"], row["acc_std"], row["acc_n"]) == (
            pytest.approx(chips.mean()),
            pytest.approx(chips.std()),
            3,
        )


def test_paired_differences_under_variation_average_the_chips_of_each_training_seed(tmp_path: Path) -> None:
    runs = write_nested_variation(tmp_path, seeds=(0, 1, 2))
    table = paired_table(runs).set_index("sigma")
    assert set(table["scheme"]) == {"layer/layer"} and len(table) == 2
    for sigma in (0.1, 0.2):
        per_seed = pd.Series(
            [
                pd.Series(
                    [
                        100 * (nested_acc("column/column", sigma, s, c) - nested_acc("layer/layer", sigma, s, c))
                        for c in range(3)
                    ]
                ).mean()
                for s in range(3)
            ]
        )
        row = table.loc[sigma]
        assert (row["difference"], row["difference_n"]) == (pytest.approx(per_seed.mean()), 3)
        assert row["difference_std"] == pytest.approx(per_seed.std())
        half = 4.302652729749464 * per_seed.std() / math.sqrt(3)
        assert (row["difference_ci_low"], row["difference_ci_high"]) == pytest.approx(
            (per_seed.mean() - half, per_seed.mean() + half)
        )


def test_every_table_of_the_report_shows_n(report_dir: Path) -> None:
    for name in ["summary", "paired_differences", "granularity_grid", "variation", "reference_comparison"]:
        markdown = (report_dir / f"{name}.md").read_text()
        assert "(n=" in markdown, name
        assert not any(column.endswith(("_std", "_ci_low")) for column in markdown.splitlines()[0].split(" | "))
    assert "| 81.00 ± 1.41 (n=2) [68.29, 93.71] |" in (report_dir / "granularity_grid.md").read_text()
    assert "| 85.00 (n=1) |" in (report_dir / "granularity_grid.md").read_text()  # one seed, said so
    grid = pd.read_csv(report_dir / "granularity_grid.csv")  # the CSV keeps the numbers apart
    assert {"layer", "layer_std", "layer_n", "layer_ci_low", "layer_ci_high"} <= set(grid.columns)
    markdown = (report_dir / "report.md").read_text()
    assert "95% Student-t" in markdown and "- resnet20 / cifar10" in markdown


def make_seeded_tree(root: Path, seeds: tuple[int, ...], adc_bits: tuple[int, ...]) -> Path:
    """A results tree like a sweep with seed lists: every weight x partial-sum pair, w/o PSQ and float at each
    ADC resolution (a panel each) and seed, with telemetry and ADC energy; one- vs two-stage curves; variation
    runs of two schemes at three sigmas, two chips per training seed."""
    schemes = [(w, p, True) for w in ("layer", "array", "column") for p in ("layer", "array", "column")]
    schemes += [(w, w, False) for w in ("layer", "array", "column")]
    for bits in adc_bits:
        for i, (weight, psum, psum_quant) in enumerate(schemes):
            for seed in seeds:
                acc = 0.78 + 0.004 * i + (0.04 if not psum_quant else 0.0) - 0.03 * (4 - bits) + 0.006 * seed
                record = train_results("cifar10", weight, psum, acc, seed, psum_quant)
                record["cim"]["adc_bits"] = bits
                if psum_quant:
                    rates = [rate * (1 + 0.1 * seed) for rate in CLIP_RATES[psum]]
                    record["psum_telemetry"] = {f"layer{j}.conv": {"clip_rate": r} for j, r in enumerate(rates)}
                write_results(root, f"grid/adc={bits}/{weight}_{psum}_{psum_quant}/seed={seed}", record)
    for seed in seeds:
        write_results(root, f"grid/float/seed={seed}", train_results("cifar10", None, None, 0.91 - 0.002 * seed, seed))
        jitter = [(time_s, acc - 0.01 * seed) for time_s, acc in ONE_STAGE_CURVE]
        one_stage = train_results("cifar100", "column", "column", 0.88, seed, history=jitter)
        two_stage = train_results(
            "cifar100", "layer", "column", 0.85, seed, schedule="two_stage", history=TWO_STAGE_CURVE
        )
        write_results(root, f"qat/one/seed={seed}", one_stage)
        write_results(root, f"qat/two/seed={seed}", two_stage)
        for scheme in ("layer/layer", "column/column"):
            weight, psum = scheme.split("/")
            for sigma in (0.0, 0.1, 0.2):
                for chip in (0, 1):
                    acc = 0.85 - sigma * (1.5 if weight == "layer" else 0.8) - 0.01 * chip * (sigma > 0) - 0.003 * seed
                    record = evaluate_results(weight, psum, sigma, chip, acc, with_train=True)
                    record["seed"] = seed
                    write_results(root, f"variation/{weight}_{psum}/s={sigma}/chip={chip}/seed={seed}", record)
    return root


def assert_fits_canvas(name: str, figure: Figure) -> None:
    """``figure`` as drawn lies inside its canvas (its tight bounding box, each panel with its tick labels, each
    legend, title, axis label and text), and nothing written meets anything else written: titles and axis labels
    of different panels, the legend and the panels, the texts inside one panel."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    width, height = figure.get_size_inches()
    tight = figure.get_tightbbox(renderer)  # inches
    tolerance = 1.0 / figure.dpi  # one pixel
    assert tight.x0 >= -tolerance and tight.y0 >= -tolerance, (name, tight)
    assert tight.x1 <= width + tolerance and tight.y1 <= height + tolerance, (name, tight, (width, height))
    canvas_box = figure.bbox
    labels = [(ax, text) for ax in figure.axes for text in (ax.title, ax.xaxis.label, ax.yaxis.label)]
    texts = [*(text for _, text in labels), *(text for ax in figure.axes for text in ax.texts)]
    for artist in [*figure.axes, *figure.legends, *texts]:
        box = artist.get_tightbbox(renderer) if isinstance(artist, Axes) else artist.get_window_extent(renderer)
        inside = box.x0 >= -1 and box.y0 >= -1 and box.x1 <= canvas_box.x1 + 1 and box.y1 <= canvas_box.y1 + 1
        assert inside, (name, artist, box, canvas_box)
    for (ax_a, a), (ax_b, b) in itertools.combinations(labels, 2):
        if ax_a is not ax_b and a.get_text() and b.get_text():
            overlap = a.get_window_extent(renderer).overlaps(b.get_window_extent(renderer))
            assert not overlap, (name, a.get_text(), b.get_text())
    for legend, ax in itertools.product(figure.legends, figure.axes):
        assert not legend.get_window_extent(renderer).overlaps(ax.get_tightbbox(renderer)), (name, "legend")
    for ax in figure.axes:
        for a, b in itertools.combinations(ax.texts, 2):
            overlap = a.get_window_extent(renderer).overlaps(b.get_window_extent(renderer))
            assert not overlap, (name, a.get_text(), b.get_text())


@pytest.mark.parametrize(
    ("seeds", "adc_bits"),
    [((0,), (4,)), ((0, 1, 2), (4, 3))],
    ids=["one seed, one panel (the quick grid)", "three seeds, two panels"],
)
def test_every_figure_fits_its_canvas_with_error_bars_and_a_legend_entry_for_each_mark(
    tmp_path: Path, seeds: tuple[int, ...], adc_bits: tuple[int, ...]
) -> None:
    runs, _ = collect([make_seeded_tree(tmp_path, seeds, adc_bits)])
    report = make_report(runs, reference=reference_table(["paper"]))
    assert set(report.figures) == set(IN_THE_TREE)
    for name, figure in report.figures.items():
        assert_fits_canvas(name, figure)
        (legend,) = figure.legends  # one legend below the panels, which says what the spread is
        assert "±1 std" in legend.get_title().get_text(), name

    grid = report.figures["granularity_grid"]
    (legend,) = grid.legends
    labels = [text.get_text() for text in legend.get_texts()]
    star = legend.legend_handles[labels.index(REFERENCE_LABEL)]  # the paper's numbers are explained
    assert star.get_marker() == "*"
    assert {"float network", "layer partial sums", "column partial sums"} <= set(labels)
    renderer = FigureCanvasAgg(grid).get_renderer()
    grid_panels = [ax for ax in grid.axes if ax.get_title().split(",")[0] == "resnet20 / cifar10"]
    assert len(grid_panels) == len(adc_bits)  # (the cifar100 panels hold the QAT curves' runs)
    for ax in grid_panels:
        boxes = [text.get_window_extent(renderer) for text in ax.texts]  # value and n of each bar
        assert len(boxes) == 9 and all(f"n={len(seeds)}" in text.get_text() for text in ax.texts)
        assert all(not a.overlaps(b) for a, b in itertools.combinations(boxes, 2)), "bar labels collide"
        panel = ax.get_window_extent(renderer)
        assert all(panel.x0 <= b.x0 and b.x1 <= panel.x1 and panel.y0 <= b.y0 <= b.y1 <= panel.y1 for b in boxes)
        bars_with_error = [line for line in ax.lines if line.get_linestyle() == "None" and line.get_marker() == "_"]
        assert bool(bars_with_error) == (len(seeds) > 1)  # error bars (their caps) where there is a spread


def test_cli_makes_a_report_again_from_its_runs_csv(report_dir: Path, tmp_path: Path) -> None:
    """A committed report is made again from its own tables: no results.json needed."""
    out = tmp_path / "again"
    assert main([str(report_dir / "runs.csv"), "--reference", "paper", "--out", str(out)]) == 0
    for name in ["runs", "granularity_grid", "variation", "paired_differences", "summary", "skipped"]:
        assert (out / f"{name}.md").read_text() == (report_dir / f"{name}.md").read_text(), name
    assert (out / "history.csv").read_text() == (report_dir / "history.csv").read_text()
    assert main([str(report_dir / "runs.csv"), "--out", str(out), "--paired-reference", "layer/layer"]) == 0
    assert "| layer/layer | column/column | -7.00 (n=1) |" in (out / "paired_differences.md").read_text()
    both = ["--paired-reference", "column/column", "--paired-reference", "layer/layer"]
    assert main([str(report_dir / "runs.csv"), "--out", str(out), *both]) == 0
    paired = (out / "paired_differences.md").read_text()
    assert "| 0.00 | column/column | layer/layer | +7.00 (n=1) |" in paired  # each reference against the other
    assert "| 0.00 | layer/layer | column/column | -7.00 (n=1) |" in paired


def test_cli_names_an_unknown_paired_reference(report_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(report_dir / "runs.csv"), "--out", str(report_dir / "x"), "--paired-reference", "colum/column"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "'colum/column' is not a scheme of these runs: layer/layer" in error


@pytest.mark.parametrize("committed", ["quick", "quick/beyond", "quick/qat_schedules"])
def test_committed_report_figures_fit_their_canvas(committed: str) -> None:
    """The committed reports as their figures are drawn from their own runs tables (many panels, long titles)."""
    report = load_report(REPO / "experiments" / "results" / committed)
    assert report.figures
    for name, figure in report.figures.items():
        assert_fits_canvas(f"{committed}: {name}", figure)


def test_paired_differences_against_several_references_leave_no_cell_blank(tmp_path: Path) -> None:
    """Tables of two references share their columns: a column that varies in one (here the length, with 2-epoch
    runs of column/column and layer/layer only) is filled in the other's rows too (it was blank)."""
    write_paired_runs(tmp_path)
    for scheme in ("column/column", "layer/layer"):
        weight, psum = scheme.split("/")
        for seed, acc in enumerate(PAIRED_ACC[scheme]):
            record = {**train_results("cifar10", weight, psum, acc + 0.01, seed), "epochs": 2}
            write_results(tmp_path, f"{weight}_{psum}/two_epochs/seed={seed}", record)
    runs, _ = collect([tmp_path])
    table = paired_tables(runs, ["column/column", "layer/column"])
    assert set(table["reference"]) == {"column/column", "layer/column"}
    assert "epochs" in table and table["epochs"].notna().all()
    assert set(table.loc[table["reference"] == "layer/column", "epochs"]) == {1}


def test_budget_figure_draws_each_paired_difference_against_the_epochs_with_its_interval(tmp_path: Path) -> None:
    """The medium study's budget figure: column/column - layer/column after 1 and after 3 epochs, paired by seed,
    one line (not also its mirror, layer/column - column/column), 95% CI error bars; a scheme pair trained for
    one budget only (layer/layer) draws nothing."""
    write_paired_runs(tmp_path)
    three = {"column/column": (0.90, 0.91, 0.90), "layer/column": (0.90, 0.90, 0.89)}  # differences 0, 1, 1
    for scheme, accs in three.items():
        weight, psum = scheme.split("/")
        for seed, acc in enumerate(accs):
            record = {**train_results("cifar10", weight, psum, acc, seed), "epochs": 3}
            write_results(tmp_path, f"{weight}_{psum}/three_epochs/seed={seed}", record)
    runs, _ = collect([tmp_path])
    report = make_report(runs, paired_reference=["column/column", "layer/column"])
    figure = report.figures["budget"]
    assert_fits_canvas("budget", figure)
    ((ax,),) = [figure.axes]
    (container,) = ax.containers
    line = container.lines[0]
    assert container.get_label() == "column/column − layer/column"
    assert list(line.get_xdata()) == [1, 3] and list(line.get_ydata()) == pytest.approx([2.0, 2.0 / 3])
    (legend,) = figure.legends
    assert "95% CI" in legend.get_title().get_text() and "n=3" in legend.get_title().get_text()
    assert [text.get_text() for text in legend.get_texts()] == ["column/column − layer/column"]
    lower, upper = container.lines[1]  # the caps: the interval's ends
    paired = report.tables["paired_differences"]
    rows = paired[(paired["reference"] == "column/column") & (paired["scheme"] == "layer/column")].sort_values("epochs")
    assert list(lower.get_ydata()) == pytest.approx(rows["difference_ci_low"].tolist())
    assert list(upper.get_ydata()) == pytest.approx(rows["difference_ci_high"].tolist())
    assert "budget" not in make_report(collect([tmp_path / "column_column"])[0]).figures  # one length: no figure
