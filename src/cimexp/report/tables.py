"""Aggregated tables over the runs table of :func:`cimexp.report.collect.collect`: one row per configuration with
the statistics of its seeds, paired differences between schemes over the same seeds, the granularity grid (Fig. 7),
accuracy under cell variation (Fig. 10), per-epoch training curves and time-to-accuracy (Fig. 9), and published
reference numbers. All are pure functions of DataFrames; accuracies are top-1 %.

Every aggregated number comes with its spread, in one column convention: a metric ``X`` (the mean over the
independent replicates of a configuration, :func:`replicate_units`) is followed by ``X_std`` (sample standard
deviation), ``X_n`` (how many replicates) and ``X_ci_low`` / ``X_ci_high`` (the 95% Student-t confidence interval of
the mean; empty below two replicates). :func:`to_markdown` shows the five as one cell, ``mean ± std (n=k) [low,
high]``, or ``mean (n=1)``, so no table presents one seed as if it were a result.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cimexp.report import stats
from cimexp.report.collect import (
    CONDITION_COLUMNS,
    FLOAT,
    GRANULARITIES,
    HISTORY_KEY,
    LAYER_CLIP_KEY,
    NO_PSQ,
    SCHEME_COLUMNS,
    SETTING_COLUMNS,
    TRAINING_COLUMNS,
    granularity_rank,
)

PANEL_KEYS = ("model", "dataset")
"""Every figure draws one panel per model and data set (and per other setting that varies, where it must)."""
NO_PSQ_COLUMN = "w/o PSQ"
"""Grid column: the same weight granularity without partial-sum quantization (the paper's dashed lines)."""
HISTORY_COLUMNS = ("epoch", "cum_train_time_s", "acc")

REFERENCE_COLUMNS = ("model", "dataset", "weight_granularity", "psum_granularity", "acc", "source")
"""Columns of a reference CSV (``--reference path.csv``): accuracy in top-1 %, granularities as in the runs table
(``layer``/``array``/``column``; ``psum_granularity=none`` for no partial-sum quantization; both ``float`` for the
full-precision network); ``source`` says where the number comes from. Optional: any of the runs table's CIM
settings (``SETTING_COLUMNS``, e.g. ``adc_bits``): a number that gives one is compared only with runs of that setting
(a 4-bit-ADC result is not set beside 3-bit runs); left out or blank, with runs of any."""

_PAPER_SETTINGS = {"w_bits": 4, "a_bits": 4, "cell_bits": 2, "adc_bits": 4}
"""The paper's Table II, under which every quantized number of :data:`PAPER_REFERENCE` was measured."""

PAPER_REFERENCE = pd.DataFrame(
    [
        ("resnet20", "cifar10", "float", "float", 90.70, "Kim et al. 2025, Sec. IV-B"),
        ("resnet20", "cifar10", "column", "column", 90.21, "Kim et al. 2025, Sec. IV-B"),
        ("resnet20", "cifar10", "layer", "column", 89.22, "Kim et al. 2025, Sec. IV-B (90.21 - 0.99)"),
        ("resnet20", "cifar100", "column", "column", 72.09, "Kim et al. 2025, Sec. IV-B"),
        ("resnet20", "cifar100", "layer", "column", 69.40, "Kim et al. 2025, Sec. IV-B"),
        ("resnet20", "cifar100", "column", "none", 72.22, "Kim et al. 2025, Sec. IV-B"),
        ("resnet18", "imagenet", "float", "float", 69.13, "Kim et al. 2025, Table III"),
        ("resnet18", "imagenet", "layer", "layer", 64.86, "Kim et al. 2025, Table III"),
        ("resnet18", "imagenet", "array", "array", 66.53, "Kim et al. 2025, Table III"),
        ("resnet18", "imagenet", "layer", "array", 65.94, "Kim et al. 2025, Table III"),
        ("resnet18", "imagenet", "layer", "column", 67.50, "Kim et al. 2025, Table III"),
        ("resnet18", "imagenet", "column", "column", 68.51, "Kim et al. 2025, Table III"),
    ],
    columns=list(REFERENCE_COLUMNS),
).pipe(
    lambda table: table.assign(
        **{
            key: table["weight_granularity"].ne(FLOAT).map({True: value, False: pd.NA})
            for key, value in _PAPER_SETTINGS.items()
        }
    )
)
"""The numbers the paper states in its text and Table III (``--reference paper``); Fig. 7/8/9/10 give the rest
only as plots. The paper's settings are its Table II (W4A4, 2-bit cells, 4-bit ADCs; 128x128 arrays for
ResNet-20), trained for many more epochs than a CPU run; its quantized numbers carry the first four, so they are
compared only with runs under them."""


def varying(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The ``columns`` of ``frame`` that take more than one value among the rows that have one (a float network
    has no CIM settings: its empty ones do not make a setting vary)."""
    return [c for c in columns if c in frame and frame[c].nunique() > 1]


def train_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The training runs (``kind == "train"``) of a runs table."""
    return runs[runs["kind"] == "train"]


ESTIMATE_SUFFIXES = ("_std", "_n", "_ci_low", "_ci_high")
"""Columns that follow a metric's mean (see the module docstring)."""

CONFIGURATION_COLUMNS = (
    *SCHEME_COLUMNS,
    *SETTING_COLUMNS,
    "epochs",
    "sigma",
    "noise_lsb",
    "train_noise_lsb",
    "train_sigma",
    "calibration",
    "quantizer",
)
"""What makes runs one configuration, whose seeds are replicates: every setting the runs table records except the
seeds (``seed``, ``train_seed``) and what identifies or times a single run. ``epochs`` is the training length, of
the run or, for an evaluation, of the run that trained its checkpoint (checkpoints trained for 1 and for 2 epochs
are different networks)."""

SCHEME_COLUMNS = ("scheme", "weight_granularity", "psum_granularity", "psum_quant")
"""The columns that name a quantization scheme; paired differences compare schemes with all else equal."""

TRAIN_METRICS = ("acc", "acc_best", "acc_top5", "train_time_s")
"""Metrics :func:`summary_table` gives per training configuration."""
EVALUATE_METRICS = ("acc",)
"""Metrics :func:`summary_table` gives per evaluation configuration (``acc_clean`` is one number per checkpoint)."""

PAIRED_REFERENCE = "column/column"
"""The scheme paired differences are taken against by default (the paper's proposal)."""


def estimate_columns(name: str) -> list[str]:
    """The mean column ``name`` and its :data:`ESTIMATE_SUFFIXES` companions."""
    return [name, *(f"{name}{suffix}" for suffix in ESTIMATE_SUFFIXES)]


def replicate_units(runs: pd.DataFrame, pairing: bool = False) -> pd.Series:
    """The measurement each run is, as a label on the index of ``runs``; runs with the same label in one
    configuration are repeats of one measurement and are averaged before any statistic.

    - Training runs: their seed.
    - Evaluation runs: the training seed and the chip instance (variation seed). An evaluation without variation and
      without ADC noise (``sigma`` 0, ``noise_lsb`` 0) is deterministic: its variation seed changes nothing, so
      the training seed alone.
    - Evaluations with ADC noise: each run is its own measurement (its ADC noise seed is not in the runs table);
      with ``pairing``, labelled by training seed and chip instance (their noise draws averaged), so that schemes
      pair on them.
    - Runs without a seed: each its own measurement, paired with nothing.

    The chip instances of one training seed share the trained network, so they are not independent of each other:
    where the evaluations under cell variation (``sigma`` > 0) of one configuration span two or more training
    seeds, the independent replicate is the training seed, and :func:`summarize` and :func:`paired_table` average
    its chip instances (and their repeats) before taking statistics over the training seeds. Where they span one
    training seed, the chip instances are the replicates (the spread is then chip-to-chip, of one network).
    """
    index = runs.index
    seed = _column(runs, "seed")
    train_seed = _column(runs, "train_seed") if "train_seed" in runs else seed
    evaluation = (_column(runs, "kind") == "evaluate").fillna(False).astype(bool)
    sigma = pd.to_numeric(_column(runs, "sigma"), errors="coerce").fillna(0.0)
    noise = pd.to_numeric(_column(runs, "noise_lsb"), errors="coerce").fillna(0.0)
    deterministic = evaluation & (sigma == 0) & (noise == 0)
    noisy = evaluation & (noise > 0) & (not pairing)
    chip = seed.astype(object).where(~deterministic, "-")
    labels = train_seed.astype(str) + "/" + chip.astype(str)
    own = noisy | train_seed.isna() | (chip.isna() & ~deterministic)
    positions = pd.Series([f"run {i}" for i in range(len(runs))], index=index)
    return labels.where(~own, positions)


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    """Column ``name`` of ``runs``, or NAs where the runs table has no such column."""
    return runs[name] if name in runs else pd.Series(pd.NA, index=runs.index, dtype=object)


def _chip_seeds(runs: pd.DataFrame) -> pd.Series:
    """The training seed (as text) in which each run's chip instance is nested: that of evaluation runs under cell
    variation (``sigma`` > 0); NA for every other run (see :func:`replicate_units`)."""
    evaluation = (_column(runs, "kind") == "evaluate").fillna(False).astype(bool)
    sigma = pd.to_numeric(_column(runs, "sigma"), errors="coerce").fillna(0.0)
    train_seed = _column(runs, "train_seed")
    return train_seed.astype(str).where(evaluation & (sigma > 0) & train_seed.notna())


def _over_training_seeds(measurements: pd.DataFrame, keys: Sequence[str], values: Sequence[str]) -> pd.DataFrame:
    """``measurements`` (one row per :func:`replicate_units` label ``_unit`` of each ``keys`` group, with its
    :func:`_chip_seeds` ``_seed``) averaged to one row per independent replicate: in a group whose chip instances
    span two or more training seeds, those of one training seed become one replicate; other rows stay as they are.
    Columns: ``keys``, ``_replicate``, ``values``."""
    nested = measurements["_seed"].notna()
    seeds = measurements["_seed"].groupby([measurements[k] for k in keys], dropna=False, sort=False)
    spans_seeds = seeds.transform("nunique") >= 2
    replicate = measurements["_unit"].where(~(nested & spans_seeds), "seed " + measurements["_seed"])
    grouped = measurements.assign(_replicate=replicate).groupby([*keys, "_replicate"], dropna=False, sort=False)
    return grouped[list(values)].mean().reset_index()


def summarize(frame: pd.DataFrame, keys: Sequence[str], values: Sequence[str]) -> pd.DataFrame:
    """Statistics of ``values`` over the independent replicates of each ``keys`` group: the group keys, then per
    value its mean and :data:`ESTIMATE_SUFFIXES` columns. Repeats of one measurement (:func:`replicate_units`) are
    averaged first; where a group's evaluations under cell variation span two or more training seeds, so are the
    chip instances of each training seed, and mean, std, n and interval are over the training seeds (n = number of
    training seeds); over one training seed, over its chip instances. Groups in order of first appearance; missing
    keys form groups of their own."""
    columns = [*keys, *(column for value in values for column in estimate_columns(value))]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    numbers = frame[list(values)].apply(pd.to_numeric, errors="coerce").astype(float)
    measurements = (
        frame[list(keys)]
        .assign(**{value: numbers[value] for value in values}, _unit=replicate_units(frame), _seed=_chip_seeds(frame))
        .groupby([*keys, "_unit", "_seed"], dropna=False, sort=False)[list(values)]
        .mean()
        .reset_index()
    )
    replicates = _over_training_seeds(measurements, keys, values)
    groups = replicates.groupby(list(keys), dropna=False, sort=False)[list(values)]
    aggregated = groups.agg(["mean", "std", "count"])
    table = aggregated.index.to_frame(index=False)
    table.columns = list(keys)
    for value in values:
        mean, std = aggregated[(value, "mean")].to_numpy(), aggregated[(value, "std")].to_numpy()
        n = aggregated[(value, "count")].to_numpy().astype(int)
        bounds = [stats.confidence_interval(float(m), float(s), int(k)) for m, s, k in zip(mean, std, n, strict=True)]
        table[value] = mean
        table[f"{value}_std"] = std
        table[f"{value}_n"] = n
        table[f"{value}_ci_low"] = [low for low, _ in bounds]
        table[f"{value}_ci_high"] = [high for _, high in bounds]
    return table[columns]


def scheme_stats(frame: pd.DataFrame, keys: Sequence[str], value: str = "acc", x: str | None = None) -> pd.DataFrame:
    """:func:`summarize` of one ``value`` with short names: the group keys, ``mean``, ``std`` (empty for one
    replicate), ``n``, ``ci_low``, ``ci_high`` and, if ``x`` names a column, its mean as ``x``."""
    values = [value, *([x] if x is not None else [])]
    table = summarize(frame, keys, values)
    short = ["mean", "std", "n", "ci_low", "ci_high"]
    table = table.rename(columns=dict(zip(estimate_columns(value), short, strict=True)))
    if x is not None:
        table = table.drop(columns=estimate_columns(x)[1:]).rename(columns={x: "x"})
    return table


def configuration_keys(runs: pd.DataFrame) -> list[str]:
    """The :data:`CONFIGURATION_COLUMNS` of ``runs`` (training and evaluation runs alike)."""
    return [c for c in CONFIGURATION_COLUMNS if c in runs]


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (all settings but the seeds, :data:`CONFIGURATION_COLUMNS`) with the statistics
    of its runs: :data:`TRAIN_METRICS` for training and :data:`EVALUATE_METRICS` for evaluation configurations,
    each with its ``_std``, ``_n`` and 95% interval columns.

    Shows ``kind``, ``model``, ``dataset``, ``scheme`` and the configuration columns that vary (the others are the
    same for every row). Sorted by kind, model, data set, scheme, then the rest. Empty without runs.
    """
    parts = []
    for kind, metrics in (("train", TRAIN_METRICS), ("evaluate", EVALUATE_METRICS)):
        frame = runs[runs["kind"] == kind]
        if not frame.empty:
            summary = summarize(frame, configuration_keys(frame), [m for m in metrics if m in frame])
            parts.append(summary.assign(kind=kind))
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    shown = ["kind", *PANEL_KEYS, "scheme"]
    shown += varying(table, [c for c in CONFIGURATION_COLUMNS if c not in (*shown, *SCHEME_COLUMNS)])
    metrics = [c for metric in dict.fromkeys((*TRAIN_METRICS, *EVALUATE_METRICS)) for c in estimate_columns(metric)]
    table = table[[*shown, *(c for c in metrics if c in table)]]
    return table.sort_values(shown, key=_granularity_key, kind="stable").reset_index(drop=True)


def paired_tables(runs: pd.DataFrame, references: str | Sequence[str] = PAIRED_REFERENCE) -> pd.DataFrame:
    """:func:`paired_table` of accuracy against each of ``references`` in turn, its rows one table after another."""
    references = [references] if isinstance(references, str) else list(references)
    tables = [paired_table(runs, reference=r, all_columns=len(references) > 1) for r in references]
    filled = [table for table in tables if not table.empty]
    if len(filled) <= 1:
        return (filled or tables)[0] if len(references) == 1 else _shown_columns(pd.concat(tables or [pd.DataFrame()]))
    return _shown_columns(pd.concat(filled, ignore_index=True))


def _shown_columns(table: pd.DataFrame) -> pd.DataFrame:
    """A paired table (:func:`paired_table` with ``all_columns``) with the configuration columns that vary among all
    its rows, so that tables of several references share their columns and leave no cell blank."""
    if table.empty:
        return table
    shown = ["kind", *PANEL_KEYS]
    shown += varying(table, [c for c in CONFIGURATION_COLUMNS if c not in (*shown, *SCHEME_COLUMNS) and c in table])
    return table[[*shown, "reference", "scheme", *estimate_columns("difference")]].reset_index(drop=True)


def paired_table(
    runs: pd.DataFrame, reference: str = PAIRED_REFERENCE, value: str = "acc", all_columns: bool = False
) -> pd.DataFrame:
    """Paired differences ``reference - scheme`` of ``value`` between the ``reference`` scheme and every other
    scheme, over the replicates both have (the same seeds; for evaluations the same training seed and chip
    instance, :func:`replicate_units` with ``pairing``: a variation seed draws the same cell factors for every
    scheme) with all other settings equal: mean, std, n and the 95% paired Student-t interval of the difference.
    Where the pairs under cell variation span two or more training seeds, the differences of the chip instances of
    one training seed are averaged first and the statistics are over the training seeds (n = number of training
    seeds); over one training seed, over its chip instances. Pairing removes what a seed does to both schemes (data
    order, initial draw, evaluation subset), so it resolves smaller differences than two separate intervals would.

    Columns: ``kind``, ``model``, ``dataset``, the configuration columns that vary (``all_columns``: all of them,
    for :func:`paired_tables` to combine tables of several references), ``reference``, ``scheme``,
    then ``difference`` with its :data:`ESTIMATE_SUFFIXES` columns (percentage points; positive: the reference is
    higher). One row per scheme that shares at least one replicate with the reference; empty without any.
    """
    rows = []
    for kind in ("train", "evaluate"):
        frame = runs[(runs["kind"] == kind) & runs[value].notna()]
        if frame.empty or reference not in set(frame["scheme"]):
            continue
        keys = [c for c in configuration_keys(frame) if c not in SCHEME_COLUMNS]
        frame = frame.assign(_unit=replicate_units(frame, pairing=True), _seed=_chip_seeds(frame))
        for group, configuration in frame.groupby(keys, dropna=False, sort=False):
            if reference not in set(configuration["scheme"]):
                continue
            means = configuration.groupby(["_unit", "scheme"], sort=False)[value].mean().unstack("scheme")
            seeds = configuration.drop_duplicates("_unit").set_index("_unit")["_seed"]
            for scheme in sorted(means.columns, key=_scheme_rank):
                differences = (means[reference] - means[scheme]).dropna().rename("difference")
                if scheme == reference or differences.empty:
                    continue
                pairs = differences.rename_axis("_unit").reset_index().assign(scheme=scheme)
                pairs["_seed"] = seeds.reindex(pairs["_unit"]).to_numpy()
                replicates = _over_training_seeds(pairs, ["scheme"], ["difference"])
                difference = stats.estimate(replicates["difference"])
                rows.append(
                    {
                        "kind": kind,
                        **dict(zip(keys, group, strict=True)),
                        "reference": reference,
                        "scheme": scheme,
                        **dict(zip(estimate_columns("difference"), _numbers(difference), strict=True)),
                    }
                )
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    shown = ["kind", *PANEL_KEYS]
    others = [c for c in CONFIGURATION_COLUMNS if c not in (*shown, *SCHEME_COLUMNS) and c in table]
    shown += others if all_columns else varying(table, others)
    table = table[[*shown, "reference", "scheme", *estimate_columns("difference")]]
    return table.sort_values([*shown, "scheme"], key=_granularity_key, kind="stable").reset_index(drop=True)


def paired_lines(table: pd.DataFrame, digits: int = 2) -> list[str]:
    """The rows of :func:`paired_table` as text, e.g. ``resnet20 / cifar10, adc_bits=3: column/column -
    layer/column: +0.85 ± 0.31 (n=3), 95% CI [0.08, 1.62]`` (naming the settings that vary among the rows of
    its kind)."""
    lines = []
    keys = [c for c in table.columns if c not in ("kind", "reference", "scheme", *estimate_columns("difference"))]
    for _, row in table.iterrows():
        shown = varying(table[table["kind"] == row["kind"]], [k for k in keys if k not in PANEL_KEYS])
        where = ", ".join(
            [" / ".join(str(row[k]) for k in PANEL_KEYS)] + [f"{k}={_plain_value(row[k])}" for k in shown]
        )
        numbers = [row[c] for c in estimate_columns("difference")]
        text = stats.format_estimate(*numbers, digits=digits, signed=True)
        lines.append(f"{where}: {row['reference']} - {row['scheme']}: {text}")
    return lines


def _numbers(estimate: stats.Estimate) -> tuple[float, float, int, float, float]:
    return estimate.mean, estimate.std, estimate.n, estimate.ci_low, estimate.ci_high


def _plain_value(value: object) -> str:
    """``4`` rather than ``4.0`` for whole numbers."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def pareto_front(x: pd.Series, y: pd.Series) -> pd.Series:
    """Which points are Pareto-optimal for a lower ``x`` (cost) and a higher ``y`` (accuracy): no other point has
    an ``x`` as low or lower with a higher ``y``. Returns a boolean Series on the index of ``x``."""
    order = pd.DataFrame({"x": x, "y": y}).sort_values(["x", "y"], ascending=[True, False], kind="stable")
    best_so_far = order["y"].cummax().shift(fill_value=-math.inf)
    return (order["y"] > best_so_far).reindex(x.index)


def grid_table(runs: pd.DataFrame, value: str = "acc") -> pd.DataFrame:
    """Accuracy of the training runs over weight x partial-sum granularity (the paper's Fig. 7), over seeds.

    Rows: one per weight granularity, per model and data set (and per other setting or schedule that varies among
    the runs with partial-sum quantization). Columns: ``layer``, ``array``, ``column`` (partial-sum granularity),
    :data:`NO_PSQ_COLUMN` (the same weight granularity without partial-sum quantization, matched on the settings
    except ADC bits and schedule) and ``float`` (the float network of that model and data set), each the mean over
    seeds followed by its ``_std``, ``_n`` and 95% interval columns (:data:`ESTIMATE_SUFFIXES`). Empty when there
    is no quantized training run.
    """
    train = train_runs(runs)
    cim = train[train["weight_granularity"] != FLOAT]
    if cim.empty:
        return pd.DataFrame()
    psq = cim[cim["psum_quant"]]
    keys = [*PANEL_KEYS, *varying(psq, [*SETTING_COLUMNS, *TRAINING_COLUMNS])]
    row_keys = [*keys, "weight_granularity"]
    psums = [g for g in GRANULARITIES if g in set(psq["psum_granularity"])]
    grid = _side_by_side(summarize(psq, [*row_keys, "psum_granularity"], [value]), row_keys, "psum_granularity", value)
    grid = grid.reindex(columns=[*row_keys, *(c for psum in psums for c in estimate_columns(psum))])
    no_psq_keys = [k for k in keys if k not in ("adc_bits", "schedule")] + ["weight_granularity"]
    no_psq = _renamed(summarize(cim[~cim["psum_quant"]], no_psq_keys, [value]), value, NO_PSQ_COLUMN)
    grid = grid.merge(no_psq, how="outer", on=no_psq_keys)
    floats = _renamed(summarize(train[train["weight_granularity"] == FLOAT], list(PANEL_KEYS), [value]), value, FLOAT)
    grid = grid.merge(floats, how="left", on=list(PANEL_KEYS))
    for column in grid.columns:
        if column.endswith("_n"):
            grid[column] = grid[column].astype("Int64")
    grid = grid.sort_values(row_keys, key=_granularity_key, kind="stable")
    return grid.set_index(row_keys)


def _renamed(table: pd.DataFrame, value: str, name: str) -> pd.DataFrame:
    """``table`` with the estimate columns of ``value`` named after ``name``."""
    return table.rename(columns=dict(zip(estimate_columns(value), estimate_columns(name), strict=True)))


def _side_by_side(
    table: pd.DataFrame, keys: Sequence[str], column: str, value: str, name: Callable[[Any], str] = str
) -> pd.DataFrame:
    """A wide table from a :func:`summarize` table: one row per ``keys``, the estimate columns of ``value`` for each
    level of ``column`` side by side (in order of appearance), named ``name(level)``."""
    wide: pd.DataFrame | None = None
    for level in table[column].drop_duplicates():
        part = _renamed(table[table[column] == level].drop(columns=column), value, name(level))
        wide = part if wide is None else wide.merge(part, how="outer", on=list(keys))
    return wide if wide is not None else pd.DataFrame(columns=list(keys))


def variation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Accuracy under log-normal cell variation (the paper's Fig. 10): statistics over the replicates (training seeds,
    each the mean of its chip instances, or the chip instances of a single training seed; at sigma 0 the training
    seeds alone, :func:`replicate_units`) per model, data set, scheme and sigma.

    Columns: the group keys (``model``, ``dataset``, settings and ``schedule`` when they vary, ``scheme``,
    ``weight_granularity``, ``psum_granularity``, ``sigma``), then ``acc`` with its ``_std``, ``_n`` and 95%
    interval columns. Empty unless the evaluation runs cover more than one sigma (an ADC-noise sweep at sigma 0
    alone is :func:`adc_noise_table`'s).
    """
    evaluated = runs[runs["kind"] == "evaluate"]
    if evaluated["sigma"].nunique() < 2:
        return pd.DataFrame()
    keys = [
        *PANEL_KEYS,
        *varying(evaluated, [*SETTING_COLUMNS, *CONDITION_COLUMNS]),
        "scheme",
        "weight_granularity",
        "psum_granularity",
        "sigma",
    ]
    table = summarize(evaluated, keys, ["acc"]).sort_values(keys, key=_granularity_key, kind="stable")
    return table.reset_index(drop=True)


def adc_noise_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Accuracy under ADC noise, with and without noise-aware training: top-1 (%) of the evaluation runs without
    cell variation (``sigma == 0``) over their noise seeds (each noisy evaluation is a replicate; the noise-free
    one is one per training seed), one row per model, data set, scheme and training noise (``train_noise_lsb``: 0
    for plain training), one column ``noise=<n> LSB`` per evaluation noise ``noise_lsb``, each with its ``_std``,
    ``_n`` and 95% interval columns. Empty unless these runs cover more than one noise level.
    """
    evaluated = runs[(runs["kind"] == "evaluate") & (runs["sigma"] == 0)]
    if evaluated["noise_lsb"].nunique() < 2:
        return pd.DataFrame()
    settings = varying(evaluated, [*SETTING_COLUMNS, "schedule", "train_sigma"])
    keys = [*PANEL_KEYS, *settings, "scheme", "weight_granularity", "psum_granularity", "train_noise_lsb"]
    summary = summarize(evaluated, [*keys, "noise_lsb"], ["acc"]).sort_values("noise_lsb", kind="stable")
    table = _side_by_side(summary, keys, "noise_lsb", "acc", name=lambda level: f"noise={level:g} LSB")
    table = table.sort_values(keys, key=_granularity_key, kind="stable")
    return table.reset_index(drop=True)


ENERGY_REFERENCE = {"weight_granularity": "column", "psum_granularity": "column", "adc_bits": 4}
"""The configuration ADC energy and accuracy are compared with: the paper's column/column with 4-bit ADCs."""


def adc_energy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Accuracy against ADC energy per image of the training runs that quantize partial sums (seeds averaged), absolute
    and relative to a reference configuration per panel (model, data set, and the training/evaluation conditions of
    :data:`CONDITION_COLUMNS` that vary: a noise-aware run is not compared with a plain one):
    :data:`ENERGY_REFERENCE` when it is in the panel, else the panel's costliest configuration.

    Columns: the group keys (``model``, ``dataset``, settings and conditions that vary, ``adc_bits``, ``scheme``,
    ``weight_granularity``, ``psum_granularity``), ``acc`` (mean top-1 %) with its ``_std``, ``_n`` and 95%
    interval columns, ``adc_energy_nj``,
    ``energy_rel`` (x the reference's energy), ``acc_delta`` (points against the reference), ``reference`` (the
    reference's scheme and ADC bits) and ``pareto`` (no configuration of the panel is as cheap or cheaper and more
    accurate). Sorted by panel, then energy. Empty without such runs.
    """
    if "adc_energy_pj" not in runs:
        return pd.DataFrame()
    train = train_runs(runs)
    costed = train[train["psum_quant"].astype(bool) & pd.to_numeric(train["adc_energy_pj"], errors="coerce").notna()]
    if costed.empty:
        return pd.DataFrame()
    costed = costed.assign(adc_energy_nj=pd.to_numeric(costed["adc_energy_pj"]) / 1000.0)
    panel_keys = [*PANEL_KEYS, *varying(costed, TRAINING_COLUMNS)]
    settings = [c for c in varying(costed, SETTING_COLUMNS) if c != "adc_bits"]
    keys = [*panel_keys, *settings, "adc_bits", "scheme", "weight_granularity", "psum_granularity"]
    points = summarize(costed, keys, ["acc", "adc_energy_nj"]).drop(columns=estimate_columns("adc_energy_nj")[1:])
    panels = []
    for _, panel in points.groupby(panel_keys, dropna=False, sort=False):
        is_reference = pd.Series(True, index=panel.index)
        for key, value in ENERGY_REFERENCE.items():
            is_reference &= panel[key] == value
        reference = panel[is_reference].iloc[0] if is_reference.any() else panel.loc[panel["adc_energy_nj"].idxmax()]
        panel = panel.assign(
            energy_rel=panel["adc_energy_nj"] / reference["adc_energy_nj"],
            acc_delta=panel["acc"] - reference["acc"],
            reference=f"{reference['scheme']}, {reference['adc_bits']}-bit ADC",
            pareto=pareto_front(panel["adc_energy_nj"], panel["acc"]),
        )
        panels.append(panel)
    table = pd.concat(panels).sort_values([*panel_keys, "adc_energy_nj"], kind="stable")
    return table.reset_index(drop=True)


def clip_rate_table(runs: pd.DataFrame) -> pd.DataFrame:
    """ADC clip rate (% of conversions that saturate at ``adc_min`` / ``adc_max``) per CIM layer, from the last
    validation epoch of each training run that recorded partial-sum telemetry, over seeds. The mechanism behind
    the paper's Fig. 6: one coarse ADC step must cover columns of very different partial-sum ranges.

    Long form: ``model``, ``dataset``, the settings and conditions that vary, ``scheme``, ``weight_granularity``,
    ``psum_granularity``, ``layer_index`` (network order), ``layer``, ``clip_rate_pct`` with its ``_std``, ``_n``
    and 95% interval columns. Empty without telemetry.
    """
    if LAYER_CLIP_KEY not in runs:
        return pd.DataFrame()
    train = train_runs(runs)
    train = train[train[LAYER_CLIP_KEY].notna() & train["psum_quant"].astype(bool)]
    if train.empty:
        return pd.DataFrame()
    keys = [*PANEL_KEYS, *varying(train, [*SETTING_COLUMNS, *TRAINING_COLUMNS]), "scheme"]
    keys += ["weight_granularity", "psum_granularity"]
    rows = [
        {**{k: run[k] for k in [*keys, "kind", "seed", "train_seed"]}, "layer_index": i, "layer": layer}
        | {"clip_rate_pct": 100.0 * rate}
        for _, run in train.iterrows()
        for i, (layer, rate) in enumerate(json.loads(run[LAYER_CLIP_KEY]).items())
    ]
    long = pd.DataFrame(rows)
    table = summarize(long, [*keys, "layer_index", "layer"], ["clip_rate_pct"])
    table = table.sort_values([*keys, "layer_index"], key=_granularity_key, kind="stable")
    return table.reset_index(drop=True)


def history_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Training curves in long form: one row per training run and validated epoch.

    Columns: ``run_dir``, ``model``, ``dataset``, ``scheme``, ``weight_granularity``, ``psum_granularity``,
    ``schedule``, ``stage1_epochs``, the settings, ``seed``, then ``epoch``, ``cum_train_time_s`` (training time so
    far, validation excluded) and ``acc`` (top-1 %). Needs the runs table as :func:`collect` returns it (with its
    history column).
    """
    run_columns = [
        "run_dir",
        *PANEL_KEYS,
        "scheme",
        "weight_granularity",
        "psum_granularity",
        "schedule",
        "stage1_epochs",
        *SETTING_COLUMNS,
        "seed",
    ]
    train = train_runs(runs)
    if HISTORY_KEY not in train:
        return pd.DataFrame(columns=[*run_columns, *HISTORY_COLUMNS])
    points = [
        {**{c: run.get(c) for c in run_columns}, **point}
        for _, run in train.iterrows()
        for point in (run[HISTORY_KEY] if isinstance(run[HISTORY_KEY], list) else [])
    ]
    return pd.DataFrame(points, columns=[*run_columns, *HISTORY_COLUMNS])


def curve_labels(history: pd.DataFrame) -> pd.Series:
    """A legend label per training curve (index: ``run_dir``): scheme and schedule, plus the settings and seed
    when they differ between curves of the same model and data set."""
    runs = history.drop_duplicates("run_dir").set_index("run_dir")
    labels = pd.Series("", index=runs.index, dtype=object)
    for _, panel in runs.groupby(list(PANEL_KEYS), dropna=False, sort=False):
        extra = varying(panel, [*SETTING_COLUMNS, "seed"])
        for run_dir, run in panel.iterrows():
            parts = [run["scheme"], run["schedule"].replace("_", "-")] + [f"{c}={run[c]}" for c in extra]
            labels[run_dir] = ", ".join(str(p) for p in parts)
    return labels


def in_stage1(history: pd.DataFrame) -> pd.Series:
    """Whether each record of :func:`history_table` is from two-stage QAT's stage 1: trained and validated without
    partial-sum quantization, so not yet the network the schedule delivers (epochs ``< stage1_epochs``)."""
    if history.empty:
        return pd.Series(False, index=history.index, dtype=bool)
    stage1_epochs = pd.to_numeric(history["stage1_epochs"], errors="coerce").fillna(0)
    return ((history["schedule"] == "two_stage") & (history["epoch"] < stage1_epochs)).astype(bool)


CURVE_COLUMNS = (
    "curve",
    *PANEL_KEYS,
    "schedule",
    "epoch",
    "stage1",
    "cum_train_time_s",
    *estimate_columns("acc"),
)


def mean_curves(history: pd.DataFrame) -> pd.DataFrame:
    """Training curves over seeds: one curve per configuration of :func:`history_table`'s runs, per epoch the
    accuracy over its seeds (``acc`` with its ``_std``, ``_n`` and 95% interval columns) and their mean cumulative
    training time ``cum_train_time_s``; ``stage1`` marks two-stage QAT's stage-1 epochs (:func:`in_stage1`).

    ``curve`` labels a configuration: scheme and schedule, plus the settings (and the two-stage switch epoch) that
    differ between the curves of one model and data set. Columns: :data:`CURVE_COLUMNS`.
    """
    if history.empty:
        return pd.DataFrame(columns=list(CURVE_COLUMNS))
    history = history.assign(curve=_configuration_labels(history), stage1=in_stage1(history))
    keys = ["curve", *PANEL_KEYS, "schedule", "epoch", "stage1"]
    table = summarize(history, keys, ["acc", "cum_train_time_s"]).drop(columns=estimate_columns("cum_train_time_s")[1:])
    return table[list(CURVE_COLUMNS)]


def _configuration_labels(history: pd.DataFrame) -> pd.Series:
    """The :func:`mean_curves` label of each row of ``history``."""
    labels = pd.Series("", index=history.index, dtype=object)
    for _, panel in history.groupby(list(PANEL_KEYS), dropna=False, sort=False):
        extra = varying(panel, SETTING_COLUMNS)
        two_stage = panel[panel["schedule"] == "two_stage"]
        if "stage1_epochs" in panel and two_stage["stage1_epochs"].nunique() > 1:
            extra.append("stage1_epochs")
        text = panel["scheme"].astype(str) + ", " + panel["schedule"].astype(str).str.replace("_", "-")
        for column in extra:
            text = text + f", {column}=" + panel[column].astype(str)
        labels[panel.index] = text
    return labels


def time_to_accuracy_table(history: pd.DataFrame) -> pd.DataFrame:
    """For each pair of training curves (:func:`mean_curves`, seeds averaged per epoch) of the same model and data
    set: the time each needs to reach the lower of their two best accuracies (the paper's Fig. 9 marks), and how
    much less the faster one needs.

    The curve with the higher best reaches the other's best accuracy at ``time_a_min`` / ``time_b_min``; the other
    curve reaches it at its own best epoch. Times are cumulative training time (validation excluded) in minutes.
    Only the networks a schedule delivers count: a two-stage curve's stage-1 epochs, validated without partial-sum
    quantization, neither set its best nor reach the target, though their training time is part of the times.

    Columns: ``model``, ``dataset``, ``curve_a``, ``curve_b``, ``n_a``, ``n_b`` (seeds behind each curve),
    ``best_a``, ``best_b``, ``target_acc``, ``epoch_a``, ``epoch_b``, ``time_a_min``, ``time_b_min``, ``faster``,
    ``time_saved_pct`` (``100 * (1 - faster / slower)``). Empty with fewer than two curves.
    """
    columns = [
        *PANEL_KEYS,
        "curve_a",
        "curve_b",
        "n_a",
        "n_b",
        "best_a",
        "best_b",
        "target_acc",
        "epoch_a",
        "epoch_b",
        "time_a_min",
        "time_b_min",
        "faster",
        "time_saved_pct",
    ]
    curves_table = mean_curves(history)
    curves_table = curves_table[~curves_table["stage1"].astype(bool)]
    rows = []
    for panel_key, panel in curves_table.groupby(list(PANEL_KEYS), dropna=False, sort=False):
        curves = {label: curve.sort_values("epoch") for label, curve in panel.groupby("curve", sort=False)}
        for (label_a, a), (label_b, b) in itertools.combinations(curves.items(), 2):
            target = min(a["acc"].max(), b["acc"].max())
            (epoch_a, time_a), (epoch_b, time_b) = _first_reaching(a, target), _first_reaching(b, target)
            faster, saved = None, math.nan
            if time_a > 0 and time_b > 0:
                faster = label_a if time_a <= time_b else label_b
                saved = 100.0 * (1.0 - min(time_a, time_b) / max(time_a, time_b))
            rows.append(
                [
                    *panel_key,
                    label_a,
                    label_b,
                    int(a["acc_n"].max()),
                    int(b["acc_n"].max()),
                    a["acc"].max(),
                    b["acc"].max(),
                    target,
                    epoch_a,
                    epoch_b,
                    time_a / 60.0,
                    time_b / 60.0,
                    faster,
                    saved,
                ]
            )
    return pd.DataFrame(rows, columns=columns)


def _first_reaching(curve: pd.DataFrame, target: float) -> tuple[int, float]:
    """``(epoch, cum_train_time_s)`` of the first record of ``curve`` with ``acc >= target``."""
    first = curve[curve["acc"] >= target - 1e-9].iloc[0]
    return int(first["epoch"]), float(first["cum_train_time_s"])


def reference_table(sources: Sequence[str | Path]) -> pd.DataFrame:
    """Published accuracies to compare with: ``paper`` (:data:`PAPER_REFERENCE`) and/or CSV files with the
    :data:`REFERENCE_COLUMNS`, concatenated.

    Raises:
        FileNotFoundError: a source is neither ``paper`` nor an existing file.
        ValueError: a CSV lacks required columns (the message lists them).
    """
    tables = []
    for source in sources:
        if str(source) == "paper":
            tables.append(PAPER_REFERENCE)
            continue
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"--reference {str(source)!r}: no such file. Give `paper` (the numbers stated in Kim et al. 2025) "
                f"or a CSV with the columns {', '.join(REFERENCE_COLUMNS)}."
            )
        table = pd.read_csv(path)
        missing = [c for c in REFERENCE_COLUMNS if c not in table and c != "source"]
        if missing:
            raise ValueError(
                f"reference file {str(path)!r} lacks the columns {', '.join(missing)}; "
                f"needed: {', '.join(REFERENCE_COLUMNS)} (source optional)."
            )
        settings = [c for c in SETTING_COLUMNS if c in table]
        tables.append(table.assign(source=table.get("source", path.name))[[*REFERENCE_COLUMNS, *settings]])
    if not tables:
        return pd.DataFrame(columns=list(REFERENCE_COLUMNS))
    return pd.concat(tables, ignore_index=True)


def reference_settings(reference: pd.DataFrame) -> list[str]:
    """The CIM settings that some number of ``reference`` is tied to (see :data:`REFERENCE_COLUMNS`)."""
    return [c for c in SETTING_COLUMNS if c in reference and reference[c].notna().any()]


def reference_applies(reference: pd.DataFrame, settings: pd.DataFrame | dict[str, Any]) -> pd.Series:
    """Whether each reference number applies to runs with ``settings`` (row-aligned with ``reference``, or one
    dict for all): every setting the number gives is blank or equal to the runs'."""
    applies = pd.Series(True, index=reference.index)
    for column in reference_settings(reference):
        ours = settings.get(column)
        ours = ours.tolist() if isinstance(ours, pd.Series) else [ours] * len(reference)
        given = reference[column].tolist()
        same = [pd.isna(g) or (not pd.isna(o) and g == o) for g, o in zip(given, ours, strict=True)]
        applies &= pd.Series(same, index=reference.index, dtype=bool)
    return applies


def comparison_table(runs: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Our training accuracy over seeds next to each reference number with the same model, data set and granularities.

    One row per reference entry of a model and data set we have training runs of, and per group of our runs
    (schedule, calibration, length and settings, where they vary); ``acc`` (mean) with its ``_std``, ``_n`` and
    95% interval columns, empty where we have no run of that scheme. ``delta`` is our mean minus the reference, in
    percentage points.
    """
    keys = [*PANEL_KEYS, "weight_granularity", "psum_granularity"]
    train = train_runs(runs)
    if reference.empty or train.empty:
        return pd.DataFrame()
    quantized = train[train["weight_granularity"] != FLOAT]
    shown = varying(quantized, [*TRAINING_COLUMNS, *SETTING_COLUMNS])
    tied = reference_settings(reference)
    ours = summarize(train, [*keys, *dict.fromkeys([*shown, *tied])], ["acc"])
    reference = reference.merge(train[list(PANEL_KEYS)].drop_duplicates(), on=list(PANEL_KEYS))
    reference = reference.rename(columns={"acc": "reference_acc", **{c: f"reference_{c}" for c in tied}})
    table = reference.reset_index(names="_reference").merge(ours, on=keys, how="left")
    given = table[[f"reference_{c}" for c in tied]].set_axis(tied, axis=1)
    table = table[reference_applies(given, table) | table["acc"].isna()]
    # a number whose scheme ran only under other settings stays, with no runs beside it
    unmatched = reference.reset_index(names="_reference").loc[lambda r: ~r["_reference"].isin(table["_reference"])]
    table = pd.concat([table, unmatched], ignore_index=True).sort_values("_reference", kind="stable")
    hidden = ["_reference", *(f"reference_{c}" for c in tied), *(c for c in tied if c not in shown)]
    table = table.drop(columns=hidden).reset_index(drop=True).astype({"acc_n": "Int64"})
    table["delta"] = table["acc"] - table["reference_acc"]
    order = [c for c in table.columns if c not in ("reference_acc", "source")] + ["reference_acc", "source"]
    return table[order]


def to_markdown(table: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table; floats with ``digits`` decimals, empty cells for missing values.

    A mean column ``X`` with its :data:`ESTIMATE_SUFFIXES` companions becomes one cell ``mean ± std (n=k) [low,
    high]`` (95% interval), or ``mean (n=1)``; a ``difference`` is signed.
    """
    if table.empty:
        return "_(no rows)_\n"
    shown = _estimates_as_text(table, digits)

    def cell(value: object) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value).replace("|", "\\|")

    header = [str(c) for c in shown.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _estimates_as_text(table: pd.DataFrame, digits: int) -> pd.DataFrame:
    """``table`` with each complete set of estimate columns replaced by one text column."""
    names = [
        c
        for c in table.columns
        if isinstance(c, str) and all(f"{c}{suffix}" in table.columns for suffix in ESTIMATE_SUFFIXES)
    ]
    if not names:
        return table
    shown = table.copy()
    for name in names:
        columns = estimate_columns(name)
        shown[name] = [
            stats.format_estimate(*row, digits=digits, signed=name == "difference", label_ci=False)
            for row in table[columns].itertuples(index=False)
        ]
        shown = shown.drop(columns=columns[1:])
    return shown


def _granularity_key(column: pd.Series) -> pd.Series:
    if column.name == "kind":
        return column.map({"train": 0, "evaluate": 1})
    if column.name in ("weight_granularity", "psum_granularity"):
        return column.map(granularity_rank)
    if column.name == "scheme":
        return column.map(_scheme_rank)
    return column


def _scheme_rank(scheme: str) -> int:
    """Sort rank of a scheme label like ``layer/column`` or ``column w/o PSQ``."""
    if scheme == FLOAT:
        return granularity_rank(FLOAT) * 10
    weight, _, psum = scheme.replace(" w/o PSQ", f"/{NO_PSQ}").partition("/")
    return granularity_rank(weight) * 10 + granularity_rank(psum)
