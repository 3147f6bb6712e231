"""Aggregated tables over the runs table of :func:`cimexp.report.collect.collect`: one row per configuration with
the statistics of its seeds, paired differences between schemes over the same seeds, the granularity grid (Fig. 7),
accuracy under cell variation (Fig. 10) and ADC noise, accuracy against ADC energy, ADC clip rates, and our accuracy
beside published numbers. All are pure functions of DataFrames; accuracies are top-1 %.

Every aggregated number comes with its spread, in the column convention of :mod:`cimexp.report.stats`: a metric
``X`` (the mean over the independent replicates of a configuration) followed by ``X_std``, ``X_n``, ``X_ci_low`` and
``X_ci_high``. Training curves and time-to-accuracy (Fig. 9) are :mod:`cimexp.report.curves`'; Markdown is
:mod:`cimexp.report.markdown`'s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from cimexp.report import stats
from cimexp.report.collect import (
    CONDITION_COLUMNS,
    FLOAT,
    GRANULARITIES,
    LAYER_CLIP_KEY,
    NO_PSQ,
    QUANT_SCHEME_COLUMNS,
    SETTING_COLUMNS,
    TRAINED_NETWORK_COLUMNS,
    TRAINING_COLUMNS,
    granularity_rank,
)
from cimexp.report.reference import reference_applies, reference_settings

PANEL_KEYS = ("model", "dataset")
"""Every figure draws one panel per model and data set (and per other setting that varies, where it must)."""
NO_PSQ_COLUMN = "w/o PSQ"
"""Grid column: the same weight granularity without partial-sum quantization (the paper's dashed lines)."""


def varying(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The ``columns`` of ``frame`` that take more than one value among the rows that have one (a float network
    has no CIM settings: its empty ones do not make a setting vary)."""
    return [c for c in columns if c in frame and frame[c].nunique() > 1]


def train_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The training runs (``kind == "train"``) of a runs table."""
    return runs[runs["kind"] == "train"]


CONFIGURATION_COLUMNS = (
    *TRAINED_NETWORK_COLUMNS,
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

TRAIN_METRICS = ("acc", "acc_best", "acc_top5", "train_time_s")
"""Metrics :func:`summary_table` gives per training configuration."""
EVALUATE_METRICS = ("acc",)
"""Metrics :func:`summary_table` gives per evaluation configuration (``acc_clean`` is one number per checkpoint)."""

PAIRED_REFERENCE = "column/column"
"""The scheme paired differences are taken against by default (the paper's proposal)."""


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
            summary = stats.summarize(frame, configuration_keys(frame), [m for m in metrics if m in frame])
            parts.append(summary.assign(kind=kind))
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    shown = ["kind", *PANEL_KEYS, "scheme"]
    shown += varying(table, [c for c in CONFIGURATION_COLUMNS if c not in (*shown, *QUANT_SCHEME_COLUMNS)])
    metrics = [
        c for metric in dict.fromkeys((*TRAIN_METRICS, *EVALUATE_METRICS)) for c in stats.estimate_columns(metric)
    ]
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
    shown += varying(
        table, [c for c in CONFIGURATION_COLUMNS if c not in (*shown, *QUANT_SCHEME_COLUMNS) and c in table]
    )
    return table[[*shown, "reference", "scheme", *stats.estimate_columns("difference")]].reset_index(drop=True)


def paired_table(
    runs: pd.DataFrame, reference: str = PAIRED_REFERENCE, value: str = "acc", all_columns: bool = False
) -> pd.DataFrame:
    """Paired differences ``reference - scheme`` of ``value`` between the ``reference`` scheme and every other
    scheme, over the replicates both have (the same seeds; for evaluations the same training seed and chip
    instance, :func:`~cimexp.report.stats.replicate_units` with ``pairing``: a variation seed draws the same cell
    factors for every scheme) with all other settings equal: mean, std, n and the 95% paired Student-t interval of
    the difference.
    Where the pairs under cell variation span two or more training seeds, the differences of the chip instances of
    one training seed are averaged first and the statistics are over the training seeds (n = number of training
    seeds); over one training seed, over its chip instances. Pairing removes what a seed does to both schemes (data
    order, initial draw, evaluation subset), so it resolves smaller differences than two separate intervals would.

    Columns: ``kind``, ``model``, ``dataset``, the configuration columns that vary (``all_columns``: all of them,
    for :func:`paired_tables` to combine tables of several references), ``reference``, ``scheme``,
    then ``difference`` with its :data:`~cimexp.report.stats.ESTIMATE_SUFFIXES` columns (percentage points;
    positive: the reference is higher). One row per scheme that shares at least one replicate with the reference;
    empty without any.
    """
    rows = []
    for kind in ("train", "evaluate"):
        frame = runs[(runs["kind"] == kind) & runs[value].notna()]
        if frame.empty or reference not in set(frame["scheme"]):
            continue
        keys = [c for c in configuration_keys(frame) if c not in QUANT_SCHEME_COLUMNS]
        frame = frame.assign(_unit=stats.replicate_units(frame, pairing=True), _seed=stats.chip_seeds(frame))
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
                replicates = stats.over_training_seeds(pairs, ["scheme"], ["difference"])
                difference = stats.estimate(replicates["difference"])
                rows.append(
                    {
                        "kind": kind,
                        **dict(zip(keys, group, strict=True)),
                        "reference": reference,
                        "scheme": scheme,
                        **dict(zip(stats.estimate_columns("difference"), _numbers(difference), strict=True)),
                    }
                )
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    shown = ["kind", *PANEL_KEYS]
    others = [c for c in CONFIGURATION_COLUMNS if c not in (*shown, *QUANT_SCHEME_COLUMNS) and c in table]
    shown += others if all_columns else varying(table, others)
    table = table[[*shown, "reference", "scheme", *stats.estimate_columns("difference")]]
    return table.sort_values([*shown, "scheme"], key=_granularity_key, kind="stable").reset_index(drop=True)


def _numbers(estimate: stats.Estimate) -> tuple[float, float, int, float, float]:
    return estimate.mean, estimate.std, estimate.n, estimate.ci_low, estimate.ci_high


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
    seeds followed by its ``_std``, ``_n`` and 95% interval columns
    (:data:`~cimexp.report.stats.ESTIMATE_SUFFIXES`). Empty when there is no quantized training run.
    """
    train = train_runs(runs)
    cim = train[train["weight_granularity"] != FLOAT]
    if cim.empty:
        return pd.DataFrame()
    psq = cim[cim["psum_quant"]]
    keys = [*PANEL_KEYS, *varying(psq, [*SETTING_COLUMNS, *TRAINING_COLUMNS])]
    row_keys = [*keys, "weight_granularity"]
    psums = [g for g in GRANULARITIES if g in set(psq["psum_granularity"])]
    grid = _side_by_side(
        stats.summarize(psq, [*row_keys, "psum_granularity"], [value]), row_keys, "psum_granularity", value
    )
    grid = grid.reindex(columns=[*row_keys, *(c for psum in psums for c in stats.estimate_columns(psum))])
    no_psq_keys = [k for k in keys if k not in ("adc_bits", "schedule")] + ["weight_granularity"]
    no_psq = _renamed(stats.summarize(cim[~cim["psum_quant"]], no_psq_keys, [value]), value, NO_PSQ_COLUMN)
    grid = grid.merge(no_psq, how="outer", on=no_psq_keys)
    floats = _renamed(
        stats.summarize(train[train["weight_granularity"] == FLOAT], list(PANEL_KEYS), [value]), value, FLOAT
    )
    grid = grid.merge(floats, how="left", on=list(PANEL_KEYS))
    for column in grid.columns:
        if column.endswith("_n"):
            grid[column] = grid[column].astype("Int64")
    grid = grid.sort_values(row_keys, key=_granularity_key, kind="stable")
    return grid.set_index(row_keys)


def _renamed(table: pd.DataFrame, value: str, name: str) -> pd.DataFrame:
    """``table`` with the estimate columns of ``value`` named after ``name``."""
    return table.rename(columns=dict(zip(stats.estimate_columns(value), stats.estimate_columns(name), strict=True)))


def _side_by_side(
    table: pd.DataFrame, keys: Sequence[str], column: str, value: str, name: Callable[[Any], str] = str
) -> pd.DataFrame:
    """A wide table from a :func:`~cimexp.report.stats.summarize` table: one row per ``keys``, the estimate columns
    of ``value`` for each level of ``column`` side by side (in order of appearance), named ``name(level)``."""
    wide: pd.DataFrame | None = None
    for level in table[column].drop_duplicates():
        part = _renamed(table[table[column] == level].drop(columns=column), value, name(level))
        wide = part if wide is None else wide.merge(part, how="outer", on=list(keys))
    return wide if wide is not None else pd.DataFrame(columns=list(keys))


def variation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Accuracy under log-normal cell variation (the paper's Fig. 10): statistics over the replicates (training seeds,
    each the mean of its chip instances, or the chip instances of a single training seed; at sigma 0 the training
    seeds alone, :func:`~cimexp.report.stats.replicate_units`) per model, data set, scheme and sigma.

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
    table = stats.summarize(evaluated, keys, ["acc"]).sort_values(keys, key=_granularity_key, kind="stable")
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
    summary = stats.summarize(evaluated, [*keys, "noise_lsb"], ["acc"]).sort_values("noise_lsb", kind="stable")
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
    points = stats.summarize(costed, keys, ["acc", "adc_energy_nj"]).drop(
        columns=stats.estimate_columns("adc_energy_nj")[1:]
    )
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
    table = stats.summarize(long, [*keys, "layer_index", "layer"], ["clip_rate_pct"])
    table = table.sort_values([*keys, "layer_index"], key=_granularity_key, kind="stable")
    return table.reset_index(drop=True)


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
    ours = stats.summarize(train, [*keys, *dict.fromkeys([*shown, *tied])], ["acc"])
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
