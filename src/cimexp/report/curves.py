"""Training curves (the paper's Fig. 9): the per-epoch accuracy of every training run (:func:`history_table`), the
curves of each configuration over its seeds (:func:`mean_curves`), and how long each of two curves takes to reach
the same accuracy (:func:`time_to_accuracy_table`). Accuracies are top-1 %, times cumulative training time with
validation excluded."""

from __future__ import annotations

import itertools
import math

import pandas as pd

from cimexp.report.collect import HISTORY_KEY, SETTING_COLUMNS
from cimexp.report.stats import estimate_columns, summarize
from cimexp.report.tables import PANEL_KEYS, train_runs, varying

HISTORY_COLUMNS = ("epoch", "cum_train_time_s", "acc")
"""The per-epoch columns of :func:`history_table` (after those of the run)."""


def history_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Training curves in long form: one row per training run and validated epoch.

    Columns: ``run_dir``, ``model``, ``dataset``, ``scheme``, ``weight_granularity``, ``psum_granularity``,
    ``schedule``, ``stage1_epochs``, the settings, ``seed``, then ``epoch``, ``cum_train_time_s`` (training time so
    far, validation excluded) and ``acc`` (top-1 %). Needs the runs table as
    :func:`~cimexp.report.collect.collect` returns it (with its history column).
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
