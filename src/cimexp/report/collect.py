"""Read the ``results.json`` files of training and evaluation runs into one tidy table: one row per run.

Two kinds of runs write ``results.json``:

- ``kind: "train"`` (``python -m cimexp.train``; files without ``kind`` are training runs): ``final`` and ``best``
  metrics, the per-epoch ``history``, the CIM settings (``cim``, ``null`` for a float network) and ``cim_summary``.
- ``kind: "evaluate"`` (``python -m cimexp.evaluate``): a trained checkpoint evaluated once, ``clean`` and under
  one draw of log-normal cell variation (``variation: {sigma, seed}``, accuracy in ``final``), with the training
  run's results (``train_results``, without history) when known.

The file format is :mod:`cimexp.results`; files are read through its :func:`~cimexp.results.read_results`, which
upgrades files of earlier versions (metric names). Accuracies are fractions in the files and percentages (top-1 %)
in the table. Paths in the table (``run_dir``, ``ckpt``, skipped files) are relative to the sweep root
(:func:`~cimexp.report.paths.sweep_root`), so committed tables hold no machine's absolute paths.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from cimexp.cim.vocabulary import FLOAT, GRANULARITIES, NO_PSQ, QUANTIZER_READINGS
from cimexp.report.paths import find_results, relative_path, sweep_root, table_path
from cimexp.results import DONE_STATUSES, KINDS, read_results, upgrade

SETTING_COLUMNS = ("w_bits", "a_bits", "dac_bits", "cell_bits", "adc_bits", "array_size", "weight_encoding")
"""The CIM hardware and bit-width settings; a figure panel or a curve label names those that vary."""

CONDITION_COLUMNS = ("schedule", "noise_lsb", "train_noise_lsb", "train_sigma", "calibration", "quantizer")
"""How a configuration was trained or evaluated besides its settings: QAT schedule, ADC noise of the accuracy
measurement (``noise_lsb``: the evaluation's, or for a training run the noise it trained and validated with), ADC
noise during training (noise-aware training), variation-aware training sigma, and how the training run's steps were
calibrated before its first step (``calibration``: the weight / activation / partial-sum methods, e.g.
``mse/mse/percentile``; empty for a float network or a record without them), and the reading of the quantizers
it trained with (``quantizer``: :func:`quantizer_label`)."""

TRAINING_COLUMNS = (*CONDITION_COLUMNS, "epochs")
"""How a training run was trained besides its settings: the :data:`CONDITION_COLUMNS` and its length in epochs
(runs fine-tuned for 1 and for 2 epochs are different configurations: tables and figures never pool them)."""

QUANT_SCHEME_COLUMNS = ("scheme", "weight_granularity", "psum_granularity", "psum_quant")
"""The columns that name a quantization scheme: its label (:func:`scheme_name`), its weight and partial-sum
granularity, and whether partial sums are quantized. Paired differences compare schemes with all else equal."""

TRAINED_NETWORK_COLUMNS = ("model", "dataset", *QUANT_SCHEME_COLUMNS, "schedule", "stage1_epochs")
"""What network a run trained (or evaluated): model, data set, quantization scheme and QAT schedule (the first
columns of a runs table)."""

COLUMNS = (
    "kind",
    "status",
    *TRAINED_NETWORK_COLUMNS,
    *SETTING_COLUMNS,
    "acc",
    "acc_best",
    "acc_clean",
    "acc_top5",
    "loss",
    "dequant_ops",
    "dequant_ops_per_layer",
    "cim_layers",
    "train_time_s",
    "epochs",
    "wall_time_s",
    "sigma",
    "noise_lsb",
    "train_noise_lsb",
    "train_sigma",
    "calibration",
    "quantizer",
    "clip_rate",
    "seed",
    "train_seed",
    "run_name",
    "sweep_group",
    "ckpt",
    "git_commit",
    "run_dir",
)
"""The table's columns, in order. ``status`` is ``finished`` or ``diverged`` (ran to the end with a non-finite
loss: a result like any other, e.g. chance accuracy, pooled with its configuration's other seeds, never dropped).
``cim_summary.total`` keys other than the ones above (ADC cost such as
``adc_energy_pj`` per image, ``adc_area_um2``, ``n_adcs``, ``adc_conversions``, ``adc_model``, ``cost_model`` (its
constants as JSON); ``arrays``, ``cells``, ...) follow as extra columns, empty for runs whose file lacks them."""

INT_COLUMNS = (
    "stage1_epochs",
    "w_bits",
    "a_bits",
    "dac_bits",
    "cell_bits",
    "adc_bits",
    "array_size",
    "dequant_ops",
    "cim_layers",
    "epochs",
    "seed",
    "train_seed",
    "adc_conversions",
    "n_adcs",
    "arrays",
    "columns",
    "cells",
    "weight_scales",
    "psum_scales",
)
"""Integer columns that may be empty (float runs have no bit widths): pandas' nullable ``Int64``."""

LAYER_CLIP_KEY = "layer_clip_rate"
"""Column of a training run's per-layer ADC clip rates from its last validation epoch (``psum_telemetry``), as
compact JSON ``{layer: clip rate}``; ``clip_rate`` is their mean."""

HISTORY_KEY = "history"
"""Column of per-epoch records ``{"epoch", "cum_train_time_s", "acc"}`` (training runs; not written to CSV)."""


class UnfinishedRun(Exception):
    """A results file of a run that has not finished (``status`` other than ``"finished"``)."""


def collect(paths: Iterable[str | Path], include_debug: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read every ``results.json`` below ``paths`` into a table of finished runs, and list the files skipped.

    A file is skipped, never fatal, when it cannot be read or parsed, lacks a required field, or belongs to a
    run that is not over (``status: "running"`` while training, ``"interrupted"``). A ``"diverged"`` run (a
    non-finite loss at the end) is over and is a result: it is kept, with its ``status``. Smoke runs of a
    ``debug=`` profile (one batch, a few limited epochs) are skipped too, unless ``include_debug``.

    Returns:
        ``(runs, skipped)``: ``runs`` has one row per finished run with the :data:`COLUMNS` (then any extra
        ``cim_summary.total`` keys, then :data:`HISTORY_KEY`), sorted by kind, model, dataset, granularity,
        schedule, sigma and seed; ``skipped`` has the columns ``path`` and ``reason``. Paths are relative to
        :func:`~cimexp.report.paths.sweep_root` of ``paths``.

    Raises:
        FileNotFoundError: a path is neither a directory nor a ``results.json`` file
            (:func:`~cimexp.report.paths.find_results`).
    """
    paths = list(paths)
    root = sweep_root(paths)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for path in find_results(paths):
        shown = relative_path(path, root)
        try:
            record = read_results(path)
            debug = (record.get("choices") or {}).get("debug")
            if debug is not None and not include_debug:
                skipped.append({"path": shown, "reason": f"smoke run (debug={debug}); include it with --include-debug"})
                continue
            rows.append(parse_results(record, path.parent, root))
        except UnfinishedRun as reason:
            skipped.append({"path": shown, "reason": f"unfinished: {reason}"})
        except OSError as error:
            skipped.append({"path": shown, "reason": f"unreadable: {error}"})
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
            # One bad file (truncated JSON, an old or foreign schema) must not stop the report.
            message = str(error) if not isinstance(error, KeyError) else f"missing key {error}"
            skipped.append({"path": shown, "reason": f"malformed ({type(error).__name__}): {message}"})
    return runs_table(rows), pd.DataFrame(skipped, columns=["path", "reason"])


def parse_results(record: Any, run_dir: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """One table row (a dict of :data:`COLUMNS`, extra cost keys and :data:`HISTORY_KEY`) from the parsed content
    of a ``results.json`` found in ``run_dir`` (read through :func:`cimexp.results.upgrade`).

    ``run_dir`` and the record's ``ckpt`` appear relative to ``root`` (the sweep root; ``None``: absolute). The
    checkpoint's path is taken relative to the run directory the record names, so it stays right when the
    results tree was produced on another machine or moved.

    Raises:
        UnfinishedRun: ``status`` is neither ``"finished"`` nor ``"diverged"``.
        ValueError, KeyError, TypeError: the content does not follow the schema (the message says where).
    """
    record = upgrade(record)
    status = record.get("status")
    if status not in DONE_STATUSES:
        raise UnfinishedRun(f"status={status!r}")
    kind = record["kind"]
    shown_dir = relative_path(run_dir, root) if root is not None else str(Path(run_dir).resolve())

    row: dict[str, Any] = {
        "kind": kind,
        "status": status,
        "model": record["model"],
        "dataset": record["data"],
        **_scheme(record["cim"]),
        "schedule": record["schedule"]["name"],
        "stage1_epochs": record["schedule"].get("stage1_epochs"),
        **_cost(record.get("cim_summary")),
        "wall_time_s": _number(record.get("wall_time_s"), "wall_time_s"),
        "run_name": record.get("run_name"),
        "sweep_group": record.get("sweep_group"),
        "git_commit": (record.get("git") or {}).get("commit"),
        "run_dir": shown_dir,
    }
    final = record["final"]
    row["acc"] = _percent(final["val/acc"], "final.val/acc", required=True)
    row["acc_top5"] = _percent(final.get("val/acc5"), "final.val/acc5")
    row["loss"] = _number(final.get("val/loss"), "final.val/loss")
    if kind == "train":
        row.update(_train_fields(record))
    else:
        row.update(_evaluate_fields(record))
        row["ckpt"] = table_path(record.get("ckpt"), record.get("run_dir"), shown_dir, root)
    row["noise_lsb"] = float((record.get("adc_errors") or {}).get("noise_lsb", 0.0))
    trained = record if kind == "train" else (record.get("train_results") or {})
    row["train_noise_lsb"] = float((trained.get("adc_errors") or {}).get("noise_lsb", 0.0))
    row["train_sigma"] = float((trained.get("variation") or {}).get("train_sigma", 0.0))
    row["calibration"] = _calibration(trained.get("config") or {}) if record["cim"] else None
    row["quantizer"] = quantizer_label(trained.get("config") or {}, cim=bool(record["cim"]))
    row.update(_telemetry(record.get("psum_telemetry")))
    return row


def _calibration(config: dict[str, Any]) -> str | None:
    """``weight/act/psum`` calibration methods of a flattened run config, ``None`` where it does not name them."""
    methods = [config.get(f"calibration.{quantizer}") for quantizer in ("weight", "act", "psum")]
    return "/".join(map(str, methods)) if all(methods) else None


def quantizer_label(config: dict[str, Any], cim: bool = True) -> str:
    """The reading of the quantizers a run trained with, from its flattened config: the name of a
    :data:`QUANTIZER_READINGS` entry, or the nearest one followed by what differs (``lsq+weight_grad_scale=0.0001``).

    ``weight_splits`` counts only where the weight granularity leaves it open (layer, array); for a float network
    (``cim`` false) only the weight decay of normalisation weights and biases counts. Keys a record lacks take the
    first reading's values (records written before the keys existed ran it)."""
    default = next(iter(QUANTIZER_READINGS.values()))
    decayed = config.get("no_weight_decay")
    exempt = set(decayed) if isinstance(decayed, list | tuple) else {"steps", "norms", "biases"}
    values = {key: config.get(f"quantizer.{key}", value) for key, value in default.items() if key != "decay_steps"}
    values["decay_steps"] = "steps" not in exempt
    values["decay_norms_biases"] = not ({"norms", "biases"} & exempt)
    ignored = set() if cim else set(values) - {"decay_norms_biases"}
    if config.get("granularity.weight") in ("channel", "column"):
        ignored.add("weight_splits")

    def differences(reading: dict[str, Any]) -> dict[str, Any]:
        full = {"decay_norms_biases": False, **reading}
        return {k: v for k, v in values.items() if k not in ignored and not _same_value(v, full[k])}

    name, diff = min(((n, differences(r)) for n, r in QUANTIZER_READINGS.items()), key=lambda item: len(item[1]))
    return "+".join([name, *(f"{key}={value}" for key, value in sorted(diff.items()))])


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return str(a).lower() == str(b).lower()
    return float(a) == float(b)


def _telemetry(telemetry: dict[str, Any] | None) -> dict[str, Any]:
    """``clip_rate`` (mean over the CIM layers) and :data:`LAYER_CLIP_KEY` of a run's ``psum_telemetry``."""
    if not telemetry:
        return {}
    rates = {
        layer: _number(stats["clip_rate"], f"psum_telemetry.{layer}.clip_rate") for layer, stats in telemetry.items()
    }
    return {"clip_rate": sum(rates.values()) / len(rates), LAYER_CLIP_KEY: json.dumps(rates, separators=(",", ":"))}


def runs_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The runs table from rows of :func:`parse_results`: columns in order, integer columns as ``Int64``, sorted."""
    table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(COLUMNS), dtype=object)
    extra = sorted(set(table.columns) - set(COLUMNS) - {HISTORY_KEY})
    table = table.reindex(columns=[*COLUMNS, *extra, *([HISTORY_KEY] if rows else [])])
    evaluations = table["kind"] == "evaluate"
    if evaluations.any():  # an evaluation without its training record takes its checkpoint's length from another
        known = table.loc[evaluations].groupby("ckpt", dropna=False)["epochs"].transform("first")
        table.loc[evaluations, "epochs"] = table.loc[evaluations, "epochs"].fillna(known)
    table = with_column_types(table)
    order = ["kind", "model", "dataset", "weight_granularity", "psum_granularity", "schedule", "sigma", "seed"]
    return table.sort_values(order, key=_sort_key, kind="stable").reset_index(drop=True)


def with_column_types(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with :data:`INT_COLUMNS` as nullable integers (where every value is a whole number) and
    ``psum_quant`` as bool; also restores the types after a CSV round trip."""
    table = table.copy()
    for column in INT_COLUMNS:
        if column in table:
            values = pd.to_numeric(table[column], errors="coerce")
            if (values.dropna() % 1 == 0).all():
                table[column] = values.astype("Int64")
    if "psum_quant" in table:
        table["psum_quant"] = table["psum_quant"].astype(bool)
    return table


def granularity_rank(value: Any) -> int:
    """Sort rank of a granularity label: layer, array, channel, column, then no partial-sum quantization, then float."""
    order = (*GRANULARITIES, NO_PSQ, FLOAT)
    return order.index(value) if value in order else len(order)


def _sort_key(column: pd.Series) -> pd.Series:
    if column.name in ("weight_granularity", "psum_granularity"):
        return column.map(granularity_rank)
    if column.name == "kind":
        return column.map(lambda kind: KINDS.index(kind) if kind in KINDS else len(KINDS))
    return column


def _scheme(cim: dict[str, Any] | None) -> dict[str, Any]:
    """The granularity and hardware columns; float networks get ``float`` labels and empty settings."""
    if cim is None:
        empty = dict.fromkeys(SETTING_COLUMNS)
        return {"scheme": FLOAT, "weight_granularity": FLOAT, "psum_granularity": FLOAT, "psum_quant": False, **empty}
    weight = str(cim["weight_granularity"])
    psum_quant = bool(cim["psum_quant"])
    psum = str(cim["psum_granularity"]) if psum_quant else NO_PSQ
    for name, value in (("weight_granularity", weight), ("psum_granularity", psum)):
        if value not in (*GRANULARITIES, NO_PSQ):
            raise ValueError(f"cim.{name}={value!r} is not one of {', '.join(GRANULARITIES)}")
    settings = {key: cim.get(key) for key in SETTING_COLUMNS}
    if settings["dac_bits"] is None:  # unset: the whole activation in one DAC cycle
        settings["dac_bits"] = settings["a_bits"]
    return {
        "scheme": scheme_name(weight, psum),
        "weight_granularity": weight,
        "psum_granularity": psum,
        "psum_quant": psum_quant,
        **settings,
    }


def scheme_name(weight_granularity: str, psum_granularity: str) -> str:
    """The paper's 'weight/partial-sum' label: ``column/column``, ``layer w/o PSQ``, ``float``."""
    if weight_granularity == FLOAT:
        return FLOAT
    if psum_granularity == NO_PSQ:
        return f"{weight_granularity} w/o PSQ"
    return f"{weight_granularity}/{psum_granularity}"


def _cost(summary: dict[str, Any] | None) -> dict[str, Any]:
    """The ``cim_summary.total`` entries (an object such as ``cost_model`` as compact JSON), plus dequantization
    ops per layer (total / CIM layers)."""
    if summary is None:
        return {}
    total = summary["total"]
    if not isinstance(total, dict):
        raise TypeError(f"cim_summary.total is a {type(total).__name__}, not an object")
    cost = {
        key: json.dumps(value, sort_keys=True, separators=(",", ":")) if isinstance(value, (dict, list)) else value
        for key, value in total.items()
    }
    layers, ops = cost.get("cim_layers"), cost.get("dequant_ops")
    cost["dequant_ops_per_layer"] = ops / layers if ops is not None and layers else math.nan
    return cost


def _train_fields(record: dict[str, Any]) -> dict[str, Any]:
    best = record.get("best") or {}
    return {
        "acc_best": _percent(best.get("val/acc"), "best.val/acc"),
        "acc_clean": _percent(record["final"]["val/acc"], "final.val/acc"),
        "train_time_s": _number(record.get("train_time_s"), "train_time_s"),
        "epochs": record.get("epochs"),
        "sigma": 0.0,
        "seed": record.get("seed"),
        "train_seed": record.get("seed"),
        HISTORY_KEY: _history(record.get("history")),
    }


def _evaluate_fields(record: dict[str, Any]) -> dict[str, Any]:
    variation = record["variation"]
    trained = record.get("train_results") or {}
    return {
        "acc_best": _percent((trained.get("best") or {}).get("val/acc"), "train_results.best.val/acc"),
        "acc_clean": _percent(record["clean"]["val/acc"], "clean.val/acc"),
        "train_time_s": _number(trained.get("train_time_s"), "train_results.train_time_s"),
        "epochs": trained.get("epochs"),
        "sigma": _number(variation["sigma"], "variation.sigma", required=True),
        "seed": variation.get("seed"),
        "train_seed": record.get("seed"),
        HISTORY_KEY: [],
    }


def _history(records: Any) -> list[dict[str, float]]:
    """Per-epoch ``{"epoch", "cum_train_time_s", "acc"}`` (acc in %) from a training run's ``history``."""
    if records is None:
        return []
    if not isinstance(records, list):
        raise TypeError(f"history is a {type(records).__name__}, not a list of per-epoch records")
    curve = []
    for i, entry in enumerate(records):
        if not isinstance(entry, dict):
            raise TypeError(f"history[{i}] is a {type(entry).__name__}, not an object")
        if entry.get("val/acc") is None:  # an epoch without validation
            continue
        curve.append(
            {
                "epoch": int(_number(entry["epoch"], f"history[{i}].epoch", required=True)),
                "cum_train_time_s": _number(entry.get("cum_train_time_s"), f"history[{i}].cum_train_time_s"),
                "acc": _percent(entry["val/acc"], f"history[{i}].val/acc", required=True),
            }
        )
    return sorted(curve, key=lambda point: point["epoch"])


def _number(value: Any, where: str, required: bool = False) -> float:
    """``value`` as a float; ``None`` becomes NaN unless ``required``."""
    if value is None and not required:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}={value!r} is not a number")
    return float(value)


def _percent(value: Any, where: str, required: bool = False) -> float:
    """An accuracy fraction in [0, 1] as a percentage."""
    fraction = _number(value, where, required)
    if not math.isnan(fraction) and not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{where}={value!r} is not an accuracy fraction in [0, 1]")
    return 100.0 * fraction
