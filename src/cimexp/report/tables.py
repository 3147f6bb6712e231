"""Aggregated tables over the runs table of :func:`cimexp.report.collect.collect`: the granularity grid (Fig. 7),
accuracy under cell variation (Fig. 10), per-epoch training curves and time-to-accuracy (Fig. 9), and published
reference numbers. All are pure functions of DataFrames; accuracies are top-1 %.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cimexp.report.collect import (
    CONDITION_COLUMNS,
    FLOAT,
    GRANULARITIES,
    HISTORY_KEY,
    LAYER_CLIP_KEY,
    NO_PSQ,
    SETTING_COLUMNS,
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
full-precision network); ``source`` says where the number comes from."""

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
)
"""The numbers the paper states in its text and Table III (``--reference paper``); Fig. 7/8/9/10 give the rest
only as plots. The paper's settings are its Table II (W4A4, 2-bit cells, 4-bit ADCs; 128x128 arrays for
ResNet-20), trained for many more epochs than a CPU run."""


def varying(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The ``columns`` of ``frame`` that take more than one value among the rows that have one (a float network
    has no CIM settings: its empty ones do not make a setting vary)."""
    return [c for c in columns if c in frame and frame[c].nunique() > 1]


def train_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The training runs (``kind == "train"``) of a runs table."""
    return runs[runs["kind"] == "train"]


def scheme_stats(frame: pd.DataFrame, keys: Sequence[str], value: str = "acc", x: str | None = None) -> pd.DataFrame:
    """Mean, sample standard deviation and count of ``value`` over the runs of each ``keys`` group (seeds).

    Returns the group keys and ``mean``, ``std`` (empty for a single run), ``n`` and, if ``x`` names a column,
    its mean as ``x``; groups in order of first appearance.
    """
    aggregations = {"mean": (value, "mean"), "std": (value, "std"), "n": (value, "count")}
    if x is not None:
        aggregations["x"] = (x, "mean")
    if frame.empty:
        return pd.DataFrame(columns=[*keys, *aggregations])
    return frame.groupby(list(keys), dropna=False, sort=False).agg(**aggregations).reset_index()


def pareto_front(x: pd.Series, y: pd.Series) -> pd.Series:
    """Which points are Pareto-optimal for a lower ``x`` (cost) and a higher ``y`` (accuracy): no other point has
    an ``x`` as low or lower with a higher ``y``. Returns a boolean Series on the index of ``x``."""
    order = pd.DataFrame({"x": x, "y": y}).sort_values(["x", "y"], ascending=[True, False], kind="stable")
    best_so_far = order["y"].cummax().shift(fill_value=-math.inf)
    return (order["y"] > best_so_far).reindex(x.index)


def grid_table(runs: pd.DataFrame, value: str = "acc") -> pd.DataFrame:
    """Mean accuracy of the training runs over weight x partial-sum granularity (the paper's Fig. 7), seeds averaged.

    Rows: one per weight granularity, per model and data set (and per other setting or schedule that varies among
    the runs with partial-sum quantization). Columns: ``layer``, ``array``, ``column`` (partial-sum granularity),
    :data:`NO_PSQ_COLUMN` (the same weight granularity without partial-sum quantization, matched on the settings
    except ADC bits and schedule) and ``float`` (the float network of that model and data set). Empty when there
    is no quantized training run.
    """
    train = train_runs(runs)
    cim = train[train["weight_granularity"] != FLOAT]
    if cim.empty:
        return pd.DataFrame()
    psq = cim[cim["psum_quant"]]
    keys = [*PANEL_KEYS, *varying(psq, [*SETTING_COLUMNS, *CONDITION_COLUMNS])]
    if psq.empty:
        grid = pd.DataFrame(columns=[*keys, "weight_granularity"])
    else:
        grid = (
            scheme_stats(psq, [*keys, "weight_granularity", "psum_granularity"], value)
            .pivot(index=[*keys, "weight_granularity"], columns="psum_granularity", values="mean")
            .reindex(columns=[g for g in GRANULARITIES if g in set(psq["psum_granularity"])])
            .reset_index()
        )
        grid.columns.name = None
    no_psq_keys = [k for k in keys if k not in ("adc_bits", "schedule")] + ["weight_granularity"]
    no_psq = scheme_stats(cim[~cim["psum_quant"]], no_psq_keys, value)
    grid = grid.merge(no_psq[[*no_psq_keys, "mean"]].rename(columns={"mean": NO_PSQ_COLUMN}), how="outer")
    floats = scheme_stats(train[train["weight_granularity"] == FLOAT], list(PANEL_KEYS), value)
    grid = grid.merge(floats[[*PANEL_KEYS, "mean"]].rename(columns={"mean": FLOAT}), how="left")
    grid = grid.sort_values([*keys, "weight_granularity"], key=_granularity_key, kind="stable")
    return grid.set_index([*keys, "weight_granularity"])


def variation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Accuracy under log-normal cell variation (the paper's Fig. 10): mean and sample std over the evaluation
    runs (variation seeds, and training seeds when several) per model, data set, scheme and sigma.

    Columns: the group keys (``model``, ``dataset``, settings and ``schedule`` when they vary, ``scheme``,
    ``weight_granularity``, ``psum_granularity``, ``sigma``), ``acc_mean``, ``acc_std``, ``n``. Empty unless the
    evaluation runs cover more than one sigma (an ADC-noise sweep at sigma 0 alone is :func:`adc_noise_table`'s).
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
    table = scheme_stats(evaluated, keys).rename(columns={"mean": "acc_mean", "std": "acc_std"})
    table = table.sort_values(keys, key=_granularity_key, kind="stable")
    return table.reset_index(drop=True)


def adc_noise_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Accuracy under ADC noise, with and without noise-aware training: mean top-1 (%) of the evaluation runs without
    cell variation (``sigma == 0``) over their noise seeds, one row per model, data set, scheme and training noise
    (``train_noise_lsb``: 0 for plain training), one column ``noise=<n> LSB`` per evaluation noise ``noise_lsb``;
    ``n``: the fewest runs behind a cell. Empty unless these runs cover more than one noise level.
    """
    evaluated = runs[(runs["kind"] == "evaluate") & (runs["sigma"] == 0)]
    if evaluated["noise_lsb"].nunique() < 2:
        return pd.DataFrame()
    settings = varying(evaluated, [*SETTING_COLUMNS, "schedule", "train_sigma"])
    keys = [*PANEL_KEYS, *settings, "scheme", "weight_granularity", "psum_granularity", "train_noise_lsb"]
    stats = scheme_stats(evaluated, [*keys, "noise_lsb"])
    table = stats.pivot(index=keys, columns="noise_lsb", values="mean")
    table.columns = [f"noise={level:g} LSB" for level in table.columns]
    table["n"] = stats.groupby(keys, dropna=False)["n"].min()
    table = table.reset_index().sort_values(keys, key=_granularity_key, kind="stable")
    return table.reset_index(drop=True)


ENERGY_REFERENCE = {"weight_granularity": "column", "psum_granularity": "column", "adc_bits": 4}
"""The configuration ADC energy and accuracy are compared with: the paper's column/column with 4-bit ADCs."""


def adc_energy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Accuracy against ADC energy per image of the training runs that quantize partial sums (seeds averaged), absolute
    and relative to a reference configuration per panel (model, data set, and the training/evaluation conditions of
    :data:`CONDITION_COLUMNS` that vary: a noise-aware run is not compared with a plain one):
    :data:`ENERGY_REFERENCE` when it is in the panel, else the panel's costliest configuration.

    Columns: the group keys (``model``, ``dataset``, settings and conditions that vary, ``adc_bits``, ``scheme``,
    ``weight_granularity``, ``psum_granularity``), ``acc`` (mean top-1 %), ``n``, ``adc_energy_nj``,
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
    panel_keys = [*PANEL_KEYS, *varying(costed, CONDITION_COLUMNS)]
    settings = [c for c in varying(costed, SETTING_COLUMNS) if c != "adc_bits"]
    keys = [*panel_keys, *settings, "adc_bits", "scheme", "weight_granularity", "psum_granularity"]
    points = scheme_stats(costed, keys, x="adc_energy_nj").rename(columns={"mean": "acc", "x": "adc_energy_nj"})
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
        panels.append(panel.drop(columns=["std"]))
    table = pd.concat(panels).sort_values([*panel_keys, "adc_energy_nj"], kind="stable")
    return table.reset_index(drop=True)


def clip_rate_table(runs: pd.DataFrame) -> pd.DataFrame:
    """ADC clip rate (% of conversions that saturate at ``adc_min`` / ``adc_max``) per CIM layer, from the last
    validation epoch of each training run that recorded partial-sum telemetry; seeds averaged. The mechanism behind
    the paper's Fig. 6: one coarse ADC step must cover columns of very different partial-sum ranges.

    Long form: ``model``, ``dataset``, the settings and conditions that vary, ``scheme``, ``weight_granularity``,
    ``psum_granularity``, ``layer_index`` (network order), ``layer``, ``clip_rate_pct``. Empty without telemetry.
    """
    if LAYER_CLIP_KEY not in runs:
        return pd.DataFrame()
    train = train_runs(runs)
    train = train[train[LAYER_CLIP_KEY].notna() & train["psum_quant"].astype(bool)]
    if train.empty:
        return pd.DataFrame()
    keys = [*PANEL_KEYS, *varying(train, [*SETTING_COLUMNS, *CONDITION_COLUMNS]), "scheme"]
    keys += ["weight_granularity", "psum_granularity"]
    rows = [
        {**{k: run[k] for k in keys}, "layer_index": i, "layer": layer, "clip_rate_pct": 100.0 * rate}
        for _, run in train.iterrows()
        for i, (layer, rate) in enumerate(json.loads(run[LAYER_CLIP_KEY]).items())
    ]
    long = pd.DataFrame(rows)
    table = long.groupby([*keys, "layer_index", "layer"], dropna=False, sort=False)["clip_rate_pct"].mean()
    table = table.reset_index().sort_values([*keys, "layer_index"], key=_granularity_key, kind="stable")
    return table.reset_index(drop=True)


def history_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Training curves in long form: one row per training run and validated epoch.

    Columns: ``run_dir``, ``model``, ``dataset``, ``scheme``, ``weight_granularity``, ``psum_granularity``,
    ``schedule``, the settings, ``seed``, then ``epoch``, ``cum_train_time_s`` (training time so far, validation
    excluded) and ``acc`` (top-1 %). Needs the runs table as :func:`collect` returns it (with its history column).
    """
    run_columns = [
        "run_dir",
        *PANEL_KEYS,
        "scheme",
        "weight_granularity",
        "psum_granularity",
        "schedule",
        *SETTING_COLUMNS,
        "seed",
    ]
    train = train_runs(runs)
    if HISTORY_KEY not in train:
        return pd.DataFrame(columns=[*run_columns, *HISTORY_COLUMNS])
    points = [
        {**{c: run[c] for c in run_columns}, **point}
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


def time_to_accuracy_table(history: pd.DataFrame) -> pd.DataFrame:
    """For each pair of training curves of the same model and data set: the time each needs to reach the lower of
    their two best accuracies (the paper's Fig. 9 marks), and how much less the faster one needs.

    The curve with the higher best reaches the other's best accuracy at ``time_a_min`` / ``time_b_min``; the other
    curve reaches it at its own best epoch. Times are cumulative training time (validation excluded) in minutes.

    Columns: ``model``, ``dataset``, ``curve_a``, ``curve_b``, ``best_a``, ``best_b``, ``target_acc``,
    ``epoch_a``, ``epoch_b``, ``time_a_min``, ``time_b_min``, ``faster``, ``time_saved_pct``
    (``100 * (1 - faster / slower)``). Empty with fewer than two curves.
    """
    columns = [
        *PANEL_KEYS,
        "curve_a",
        "curve_b",
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
    if history.empty:
        return pd.DataFrame(columns=columns)
    labels = curve_labels(history)
    rows = []
    for panel_key, panel in history.groupby(list(PANEL_KEYS), dropna=False, sort=False):
        curves = {run_dir: curve.sort_values("epoch") for run_dir, curve in panel.groupby("run_dir", sort=False)}
        for (dir_a, a), (dir_b, b) in itertools.combinations(curves.items(), 2):
            target = min(a["acc"].max(), b["acc"].max())
            (epoch_a, time_a), (epoch_b, time_b) = _first_reaching(a, target), _first_reaching(b, target)
            faster, saved = None, math.nan
            if time_a > 0 and time_b > 0:
                faster = labels[dir_a] if time_a <= time_b else labels[dir_b]
                saved = 100.0 * (1.0 - min(time_a, time_b) / max(time_a, time_b))
            rows.append(
                [
                    *panel_key,
                    labels[dir_a],
                    labels[dir_b],
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
        tables.append(table.assign(source=table.get("source", path.name)).reindex(columns=list(REFERENCE_COLUMNS)))
    if not tables:
        return pd.DataFrame(columns=list(REFERENCE_COLUMNS))
    return pd.concat(tables, ignore_index=True)


def comparison_table(runs: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Our mean training accuracy next to each reference number with the same model, data set and granularities.

    One row per reference entry of a model and data set we have training runs of, and per group of our runs
    (schedule and settings, where they vary); ``acc`` and ``n`` are empty where we have no run of that scheme.
    ``delta`` is ours minus the reference, in percentage points.
    """
    keys = [*PANEL_KEYS, "weight_granularity", "psum_granularity"]
    train = train_runs(runs)
    if reference.empty or train.empty:
        return pd.DataFrame()
    quantized = train[train["weight_granularity"] != FLOAT]
    ours = scheme_stats(train, [*keys, *varying(quantized, ["schedule", *SETTING_COLUMNS])])
    reference = reference.merge(train[list(PANEL_KEYS)].drop_duplicates(), on=list(PANEL_KEYS))
    table = reference.rename(columns={"acc": "reference_acc"}).merge(ours.drop(columns="std"), on=keys, how="left")
    table = table.rename(columns={"mean": "acc"}).astype({"n": "Int64"})
    table["delta"] = table["acc"] - table["reference_acc"]
    order = [c for c in table.columns if c not in ("reference_acc", "source")] + ["reference_acc", "source"]
    return table[order]


def to_markdown(table: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table; floats with ``digits`` decimals, empty cells for missing values."""
    if table.empty:
        return "_(no rows)_\n"

    def cell(value: object) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value).replace("|", "\\|")

    header = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _granularity_key(column: pd.Series) -> pd.Series:
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
