"""The report's figures, in the paper's terms (Fig. 7 to 10, and ADC energy).

They are drawn with matplotlib's object API (``matplotlib.figure.Figure``, no pyplot): the Agg renderer draws them
without a display and without global state, and a notebook shows a returned figure inline. Each ``*_figure``
function returns ``None`` when the table lacks the data it needs. Colours follow the weight granularity, markers
and hatches the partial-sum granularity, in every figure.

Every point is a mean over the independent replicates of its configuration (seeds; for evaluations under
variation, training seeds with their chip instances averaged, or the chip instances of one training seed), drawn
with ±1 sample standard deviation (error bars or a band) and the number of replicates in the legend title; the
budget figure's points are paired differences, drawn with their 95% confidence intervals. One
legend below the panels, laid out to fit the figure: fewer columns when it is wide, and the figure grows by the
legend's height, so nothing is cut off at any size.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from cimexp.report.collect import (
    FLOAT,
    GRANULARITIES,
    NO_PSQ,
    SETTING_COLUMNS,
    TRAINING_COLUMNS,
    granularity_rank,
)
from cimexp.report.curves import mean_curves
from cimexp.report.reference import reference_applies
from cimexp.report.stats import scheme_stats
from cimexp.report.tables import PANEL_KEYS, adc_energy_table, clip_rate_table, train_runs, variation_table, varying

ACC_LABEL = "Top-1 accuracy (%)"
SPREAD = "±1 std"
"""What the error bars and bands show: one sample standard deviation over the replicates, each side."""
REFERENCE_LABEL = "published (--reference)"
"""Legend entry of the reference stars."""
LEGEND_COLUMNS = 4
"""The most legend columns; fewer where the legend would be wider than the figure."""
TITLE_CHARACTERS = 48
"""Panel titles wrap at this many characters (10-point text over a panel of 4.8 inches)."""
WEIGHT_COLORS = {"layer": "#4C72B0", "array": "#DD8452", "column": "#55A868"}
PSUM_MARKERS = {"layer": "o", "array": "s", "column": "D", NO_PSQ: "X"}
PSUM_HATCHES = {"layer": "", "array": "///", "column": "xxx"}
FORMATS = ("png", "svg")


def save_figure(figure: Figure, stem: str | Path) -> list[Path]:
    """Write ``figure`` as ``<stem>.png`` (150 dpi) and ``<stem>.svg``; returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    engine = figure.get_layout_engine()
    paths = []
    try:
        for fmt in FORMATS:
            path = stem.with_name(f"{stem.name}.{fmt}")
            figure.savefig(path, dpi=150, metadata={"Date": None} if fmt == "svg" else None)
            paths.append(path)
            figure.set_layout_engine("none")  # the first format placed the panels; the others reuse that layout
    finally:
        figure.set_layout_engine(engine)
    return paths


def granularity_grid_figure(runs: pd.DataFrame, reference: pd.DataFrame | None = None) -> Figure | None:
    """Accuracy of the training runs for each weight x partial-sum granularity pair (the paper's Fig. 7).

    Bars grouped by weight granularity (colour), one per partial-sum granularity (hatch): the mean over seeds, with
    ±1 std error bars and, inside the bar, its value and n; dashed lines in the weight granularity's colour: the
    same weights without partial-sum quantization; black dashed line: the float network; stars: published
    ``reference`` numbers. One panel per model and data set (and per setting or schedule that varies). ``None``
    without training runs that quantize partial sums.
    """
    train = train_runs(runs)
    cim = train[train["weight_granularity"] != FLOAT]
    psq = cim[cim["psum_quant"]]
    if psq.empty:
        return None
    panel_keys = [*PANEL_KEYS, *varying(psq, [*SETTING_COLUMNS, *TRAINING_COLUMNS])]
    no_psq_keys = [k for k in panel_keys if k not in ("adc_bits", "schedule")]
    bars = scheme_stats(psq, [*panel_keys, "weight_granularity", "psum_granularity"])
    no_psq = scheme_stats(cim[~cim["psum_quant"]], [*no_psq_keys, "weight_granularity"])
    floats = scheme_stats(train[train["weight_granularity"] == FLOAT], list(PANEL_KEYS))
    weights = sorted(set(bars["weight_granularity"]), key=granularity_rank)  # the same slots in every panel
    psums = [g for g in GRANULARITIES if g in set(bars["psum_granularity"])]
    width = 0.8 / len(psums)
    panels = list(bars.groupby(panel_keys, dropna=False, sort=False))
    figure, axes = _panels(len(panels))
    extra: dict[str, Any] = {
        f"{p} partial sums": Patch(facecolor="lightgray", edgecolor="white", hatch=PSUM_HATCHES[p]) for p in psums
    }
    for ax, (key, panel) in zip(axes, panels, strict=True):
        where = dict(zip(panel_keys, key, strict=True))
        settings = {c: where[c] if c in where else _constant(psq[c]) for c in SETTING_COLUMNS if c in psq}
        shown: list[float] = []
        for i, weight in enumerate(weights):
            for j, psum in enumerate(psums):
                point = panel[(panel["weight_granularity"] == weight) & (panel["psum_granularity"] == psum)]
                if point.empty:
                    continue
                x = i + (j - (len(psums) - 1) / 2) * width
                mean, std, n = float(point["mean"].iloc[0]), point["std"].iloc[0], int(point["n"].iloc[0])
                style = {"color": WEIGHT_COLORS.get(weight, "gray"), "hatch": PSUM_HATCHES[psum], "capsize": 2}
                yerr = std if pd.notna(std) else None
                ax.bar(x, mean, width * 0.92, yerr=yerr, **style, edgecolor="white", linewidth=0.5)
                # value and n inside the bar, at its foot: clear of error bars, baselines and stars above
                ax.text(
                    x,
                    0.015,
                    f"{mean:.2f}\nn={n}",
                    transform=ax.get_xaxis_transform(),
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=6.5,
                    linespacing=1.0,
                    bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.85},
                )
                shown += [mean] if pd.isna(std) else [mean - std, mean + std]
                ref = _reference_acc(reference, where, settings, weight, psum)
                if ref is not None:
                    ax.plot(x, ref, marker="*", color="black", markersize=9, linestyle="none", label=REFERENCE_LABEL)
                    shown.append(ref)
            baseline = _match(no_psq, where, no_psq_keys, weight_granularity=weight)
            if baseline is not None:
                ax.hlines(baseline, i - 0.45, i + 0.45, colors=WEIGHT_COLORS.get(weight, "gray"), linestyles="--")
                extra["w/o PSQ (same weights; dashed, in their colour)"] = Line2D([], [], color="gray", linestyle="--")
                shown.append(baseline)
        float_acc = _match(floats, where, PANEL_KEYS)
        if float_acc is not None:
            ax.axhline(float_acc, color="black", linestyle="--", linewidth=1, label="float network")
            shown.append(float_acc)
        ax.set_xticks(range(len(weights)), weights)
        ax.set_xlim(-0.5, len(weights) - 0.5)
        ax.set_xlabel("Weight granularity")
        ax.set_ylabel(ACC_LABEL)
        ax.set_title(_title(where), fontsize=10)
        _zoom(ax, shown, headroom=0.2)
    title = f"bars: mean over seeds (value and n inside), error bars: {SPREAD}"
    _legend(figure, axes, list(extra.values()), list(extra), title=title, extra_first=True)
    return figure


def dequant_figure(runs: pd.DataFrame) -> Figure | None:
    """Accuracy versus dequantization operations per layer (log x), one marker per granularity pair (the paper's
    Fig. 8): colour = weight granularity, marker = partial-sum granularity, mean over seeds with ±1 std error bars;
    black dashed line: the float network. ``None`` without quantized training runs that have a cost summary."""
    train = train_runs(runs)
    psq = train[(train["weight_granularity"] != FLOAT) & train["psum_quant"] & train["dequant_ops_per_layer"].notna()]
    if psq.empty:
        return None
    panel_keys = [*PANEL_KEYS, *varying(psq, [*SETTING_COLUMNS, *TRAINING_COLUMNS])]
    points = scheme_stats(psq, [*panel_keys, "weight_granularity", "psum_granularity"], x="dequant_ops_per_layer")
    floats = scheme_stats(train[train["weight_granularity"] == FLOAT], list(PANEL_KEYS))
    panels = list(points.groupby(panel_keys, dropna=False, sort=False))
    figure, axes = _panels(len(panels))
    for ax, (key, panel) in zip(axes, panels, strict=True):
        where = dict(zip(panel_keys, key, strict=True))
        panel = panel.sort_values(["weight_granularity", "psum_granularity"], key=lambda c: c.map(granularity_rank))
        for _, point in panel.iterrows():
            weight, psum = point["weight_granularity"], point["psum_granularity"]
            style = {"marker": PSUM_MARKERS[psum], "color": WEIGHT_COLORS.get(weight, "gray"), "markersize": 8}
            yerr = point["std"] if pd.notna(point["std"]) else None
            ax.errorbar(
                point["x"], point["mean"], yerr=yerr, **style, linestyle="none", capsize=2, label=f"{weight}/{psum}"
            )
        float_acc = _match(floats, where, PANEL_KEYS)
        if float_acc is not None:
            ax.axhline(float_acc, color="black", linestyle="--", linewidth=1, label="float network")
        ax.set_xscale("log")
        ax.set_xlabel("Dequantization operations per layer")
        ax.set_ylabel(ACC_LABEL)
        ax.set_title(_title(where), fontsize=10)
        ax.grid(True, alpha=0.3)
    title = f"weight/partial-sum granularity; mean over seeds ({_replicates(points['n'])}), error bars: {SPREAD}"
    _legend(figure, axes, title=title)
    return figure


STAGE1_MARKER = {"marker": "o", "markersize": 7, "markerfacecolor": "white"}
"""How :func:`qat_figure` marks two-stage QAT's stage-1 epochs."""


def qat_figure(history: pd.DataFrame) -> Figure | None:
    """Training curves (the paper's Fig. 9): accuracy versus cumulative training time (validation excluded) and
    versus epoch, one line per configuration (mean over its seeds per epoch, a ±1 std band; dashed: two-stage QAT,
    hollow markers on its stage-1 epochs, validated without partial-sum quantization), a star at each line's best
    epoch of the network its schedule delivers (stage 2 for two-stage QAT). One row of two panels per model and data
    set. ``None`` without per-epoch history."""
    curves = mean_curves(history)
    if curves.empty:
        return None
    panels = list(curves.groupby(list(PANEL_KEYS), dropna=False, sort=False))
    figure = Figure(figsize=(11, 3.8 * len(panels)), layout="constrained")
    axes = figure.subplots(len(panels), 2, squeeze=False)
    for (ax_time, ax_epoch), (key, panel) in zip(axes, panels, strict=True):
        for index, (label, curve) in enumerate(panel.groupby("curve", sort=False)):
            curve = curve.sort_values("epoch")
            n = int(curve["acc_n"].max())
            style = {
                "color": f"C{index % 10}",
                "linestyle": "--" if curve["schedule"].iloc[0] == "two_stage" else "-",
                "label": f"{label} (n={n})",
            }
            delivered = curve[~curve["stage1"]]
            best = delivered.loc[delivered["acc"].idxmax()] if len(delivered) else None
            std = curve["acc_std"].fillna(0.0)
            for ax, x in ((ax_time, curve["cum_train_time_s"] / 60.0), (ax_epoch, curve["epoch"])):
                ax.plot(x, curve["acc"], marker=".", **style)
                ax.fill_between(x, curve["acc"] - std, curve["acc"] + std, color=style["color"], alpha=0.15)
                stage1 = curve["stage1"].to_numpy()
                ax.plot(x[stage1], curve["acc"][stage1], **STAGE1_MARKER, color=style["color"], linestyle="none")
                if best is not None:
                    best_x = best["cum_train_time_s"] / 60.0 if ax is ax_time else best["epoch"]
                    ax.plot(best_x, best["acc"], marker="*", markersize=10, color=style["color"], linestyle="none")
        title = _title(dict(zip(PANEL_KEYS, key, strict=True)))
        for ax, xlabel in ((ax_time, "Cumulative training time (min)"), (ax_epoch, "Epoch")):
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ACC_LABEL)
            ax.set_title(title, fontsize=10)
            ax.grid(True, alpha=0.3)
    best = Line2D([], [], marker="*", markersize=10, color="gray", linestyle="none")
    handles, labels = [best], ["best epoch"]
    if curves["stage1"].any():
        handles.append(Line2D([], [], **STAGE1_MARKER, color="gray", linestyle="none"))
        labels.append("stage 1 (no partial-sum quantization)")
    title = f"mean over seeds per epoch (n), band: {SPREAD}; dashed: two-stage QAT"
    _legend(figure, list(axes[:, 0]), handles, labels, title=title)
    return figure


def variation_figure(runs: pd.DataFrame) -> Figure | None:
    """Accuracy under log-normal cell variation (the paper's Fig. 10): mean over the replicates (training seeds, or
    the chip instances of one, :func:`~cimexp.report.stats.replicate_units`) versus sigma, a band of ±1 std, one
    line per scheme. One panel per model and data set. ``None`` unless evaluation runs cover more than one sigma."""
    table = variation_table(runs)
    if table.empty:
        return None
    line_keys = [c for c in table.columns if c not in (*PANEL_KEYS, "sigma") and not c.startswith("acc")]
    panels = list(table.groupby(list(PANEL_KEYS), dropna=False, sort=False))
    figure, axes = _panels(len(panels), width=5.5)
    for ax, (key, panel) in zip(axes, panels, strict=True):
        label_keys = [k for k in line_keys if k not in ("scheme", "weight_granularity", "psum_granularity")]
        for index, (line_key, line) in enumerate(panel.groupby(line_keys, dropna=False, sort=False)):
            line = line.sort_values("sigma")
            values = dict(zip(line_keys, line_key, strict=True))
            label = ", ".join([str(values["scheme"]), *(f"{k}={values[k]}" for k in label_keys)])
            std = line["acc_std"].fillna(0.0)
            color = f"C{index % 10}"
            ax.plot(line["sigma"], line["acc"], marker="o", color=color, label=label)
            ax.fill_between(line["sigma"], line["acc"] - std, line["acc"] + std, color=color, alpha=0.2)
        ax.set_xlabel("Log-normal variation σ")
        ax.set_ylabel(ACC_LABEL)
        ax.set_title(_title(dict(zip(PANEL_KEYS, key, strict=True))), fontsize=10)
        ax.grid(True, alpha=0.3)
    replicates = _replicates(table["acc_n"])
    title = f"mean over training seeds, or one seed's chips ({replicates}; at σ=0 the training seeds), band: {SPREAD}"
    _legend(figure, axes, title=title)
    return figure


def adc_energy_figure(runs: pd.DataFrame) -> Figure | None:
    """Accuracy versus ADC energy per image, the points and Pareto fronts of :func:`adc_energy_table` (training runs
    that quantize partial sums; mean over seeds with ±1 std error bars): one panel per model, data set and varying
    training/evaluation condition. Points are labelled with their DAC and ADC bits where those vary (a
    ``dac_bits`` x ``adc_bits`` sweep). ``None`` when no such run has an ADC energy."""
    table = adc_energy_table(runs)
    if table.empty:
        return None
    panel_keys = [key for key in (*PANEL_KEYS, *TRAINING_COLUMNS) if key in table]
    annotate = varying(table, ["dac_bits", "adc_bits"])
    panels = list(table.groupby(panel_keys, dropna=False, sort=False))
    figure, axes = _panels(len(panels), width=5.5)
    for ax, (key, panel) in zip(axes, panels, strict=True):
        labelled: dict[tuple[float, str], float] = {}  # the highest point of each energy and bit widths
        for _, point in panel.iterrows():
            weight, psum = point["weight_granularity"], point["psum_granularity"]
            xy = (point["adc_energy_nj"], point["acc"])
            marker, color = PSUM_MARKERS.get(psum, "o"), WEIGHT_COLORS.get(weight, "gray")
            std = point["acc_std"] if pd.notna(point["acc_std"]) else None
            style = {"marker": marker, "color": color, "markersize": 7, "linestyle": "none", "capsize": 2}
            ax.errorbar(*xy, yerr=std, **style, label=f"{weight}/{psum}")
            if annotate:
                text = ", ".join(f"{'DAC' if name == 'dac_bits' else 'ADC'} {point[name]:g}b" for name in annotate)
                labelled[(xy[0], text)] = max(labelled.get((xy[0], text), -math.inf), xy[1])
        for (energy_nj, text), acc in labelled.items():  # schemes at one cost share its label, once, above them
            ax.annotate(text, (energy_nj, acc), xytext=(4, 4), textcoords="offset points", fontsize=7)
        energy = panel["adc_energy_nj"]
        front = panel[panel["pareto"]].sort_values("adc_energy_nj")
        style = {"color": "black", "linewidth": 1, "drawstyle": "steps-post"}
        ax.plot(front["adc_energy_nj"], front["acc"], **style, label="Pareto front (means)")
        if energy.max() > 10 * energy.min() > 0:
            ax.set_xscale("log")
        ax.set_xlabel("ADC energy per image (nJ)")
        ax.set_ylabel(ACC_LABEL)
        ax.set_title(_title(dict(zip(panel_keys, key, strict=True))), fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.12)  # room for the point labels at the right end
    title = f"weight/partial-sum granularity; mean over seeds ({_replicates(table['acc_n'])}), error bars: {SPREAD}"
    _legend(figure, axes, title=title)
    return figure


def budget_figure(paired: pd.DataFrame) -> Figure | None:
    """Paired differences ``reference - scheme`` (:func:`~cimexp.report.tables.paired_tables`) against the training
    budget in epochs, with their 95% confidence intervals as error bars: one line per pair of schemes and setting
    measured at two or more budgets (a pair and its mirror drawn once), one panel per model and data set. ``None``
    when no pair was trained for more than one number of epochs."""
    if paired.empty or "epochs" not in paired:
        return None
    table = paired[paired["kind"] == "train"].dropna(subset=["epochs"])
    keys = [c for c in table.columns if c not in ("kind", "epochs") and not c.startswith("difference")]
    table = table[table.groupby(keys, dropna=False)["epochs"].transform("nunique") > 1]
    table = table[table["reference"] < table["scheme"]]  # reference - scheme and scheme - reference: one of the two
    if table.empty:
        return None
    panels = list(table.groupby(list(PANEL_KEYS), dropna=False, sort=False))
    figure, axes = _panels(len(panels), width=5.5)
    for ax, (key, panel) in zip(axes, panels, strict=True):
        label_keys = [k for k in keys if k not in (*PANEL_KEYS, "reference", "scheme") and panel[k].nunique() > 1]
        for index, (line_key, line) in enumerate(panel.groupby(keys, dropna=False, sort=False)):
            values, line = dict(zip(keys, line_key, strict=True)), line.sort_values("epochs")
            label = ", ".join(
                [f"{values['reference']} − {values['scheme']}", *(f"{k}={values[k]}" for k in label_keys)]
            )
            errors = [line["difference"] - line["difference_ci_low"], line["difference_ci_high"] - line["difference"]]
            style = {"marker": "o", "capsize": 3, "color": f"C{index % 10}", "label": label}
            ax.errorbar(line["epochs"], line["difference"], yerr=[e.fillna(0.0) for e in errors], **style)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(sorted(panel["epochs"].unique()))
        ax.set_xlabel("Training budget (epochs)")
        ax.set_ylabel("Paired difference (top-1 points)")
        ax.set_title(_title(dict(zip(PANEL_KEYS, key, strict=True))), fontsize=10)
        ax.grid(True, alpha=0.3)
    _legend(figure, axes, title=f"mean paired difference ({_replicates(table['difference_n'])}), error bars: 95% CI")
    return figure


def clip_rate_figure(runs: pd.DataFrame) -> Figure | None:
    """ADC clip rate per CIM layer (network order) of the training runs with partial-sum telemetry, one line per
    scheme (mean over seeds, ±1 std error bars), for the schemes whose weight and partial-sum granularities are
    layer or column (layer vs column granularity; all schemes when none of those is there). ``None`` without
    telemetry."""
    table = clip_rate_table(runs)
    if table.empty:
        return None
    focus = table["weight_granularity"].isin(["layer", "column"]) & table["psum_granularity"].isin(["layer", "column"])
    table = table[focus] if focus.any() else table
    panel_keys = [*PANEL_KEYS, *varying(table, [*SETTING_COLUMNS, *TRAINING_COLUMNS])]
    panels = list(table.groupby(panel_keys, dropna=False, sort=False))
    figure, axes = _panels(len(panels), width=6.0)
    for ax, (key, panel) in zip(axes, panels, strict=True):
        for (weight, psum), line in panel.groupby(["weight_granularity", "psum_granularity"], sort=False):
            ax.errorbar(
                line["layer_index"],
                line["clip_rate_pct"],
                yerr=line["clip_rate_pct_std"] if line["clip_rate_pct_std"].notna().any() else None,
                marker=PSUM_MARKERS.get(psum, "o"),
                color=WEIGHT_COLORS.get(weight, "gray"),
                linestyle="-" if psum == "column" else "--",
                capsize=2,
                label=f"{weight}/{psum}",
            )
        ax.set_xlabel("CIM layer (network order)")
        ax.set_ylabel("ADC clip rate (% of conversions)")
        ax.set_title(_title(dict(zip(panel_keys, key if isinstance(key, tuple) else (key,), strict=True))), fontsize=10)
        ax.grid(True, alpha=0.3)
    n = _replicates(table["clip_rate_pct_n"])
    title = f"weight/partial-sum granularity; mean over seeds ({n}), error bars: {SPREAD}"
    _legend(figure, axes, title=title)
    return figure


def _panels(count: int, width: float = 4.8, height: float = 3.8, max_columns: int = 3) -> tuple[Figure, list[Axes]]:
    """A figure with ``count`` panels, at most ``max_columns`` per row."""
    columns = min(count, max_columns)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = list(figure.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes[count:]:
        figure.delaxes(ax)
    return figure, axes[:count]


def _legend(
    figure: Figure,
    axes: Sequence[Axes],
    extra_handles: Sequence[Any] = (),
    extra_labels: Sequence[str] = (),
    title: str | None = None,
    extra_first: bool = False,
) -> Legend | None:
    """One legend below all panels with each label once (the extra entries after the panels' own, or before them
    with ``extra_first``), fitted to the figure (:func:`_fit_legend`)."""
    entries: dict[str, Any] = {}
    own = [(h, label) for ax in axes for h, label in zip(*ax.get_legend_handles_labels(), strict=True)]
    extra = list(zip(extra_handles, extra_labels, strict=True))
    for handle, label in [*extra, *own] if extra_first else [*own, *extra]:
        entries.setdefault(label, handle)
    if not entries:
        return None
    columns = math.ceil(len(entries) / math.ceil(len(entries) / LEGEND_COLUMNS))  # rows as full as they can be
    legend = figure.legend(
        list(entries.values()),
        list(entries),
        loc="outside lower center",
        ncols=columns,
        fontsize=8,
        title=title,
        title_fontsize=8,
    )
    _fit_legend(figure, legend, columns)
    return legend


def _fit_legend(figure: Figure, legend: Legend, columns: int) -> None:
    """Fewer legend columns until the legend fits the figure's width (the figure widens only if one column is
    still too wide), then the figure taller by the legend's height, so the panels keep their size."""
    margin = 0.2  # inches
    while True:
        figure.draw_without_rendering()
        box = legend.get_window_extent()
        width = box.width / figure.dpi
        if width + margin <= figure.get_figwidth() or columns == 1:
            break
        columns -= 1
        legend.set_ncols(columns)
    if width + margin > figure.get_figwidth():
        figure.set_figwidth(width + margin)
    figure.set_figheight(figure.get_figheight() + box.height / figure.dpi)


def _replicates(n: pd.Series) -> str:
    """``n=3`` or ``n=1-3``: how many replicates are behind the points."""
    counts = pd.to_numeric(n, errors="coerce").dropna().astype(int)
    if counts.empty:
        return "n=0"
    low, high = counts.min(), counts.max()
    return f"n={low}" if low == high else f"n={low}-{high}"


def _title(where: dict[str, Any], width: int = TITLE_CHARACTERS) -> str:
    """``resnet20 / cifar10`` plus ``key=value`` for the other panel keys, on lines of at most ``width``
    characters (so that the titles of neighbouring panels neither meet nor leave the figure)."""
    head = " / ".join(str(where[k]) for k in PANEL_KEYS if k in where)
    rest = [f"{k}={v}" for k, v in where.items() if k not in PANEL_KEYS]
    return "\n".join(textwrap.wrap(", ".join([head, *rest]), width, break_long_words=False, break_on_hyphens=False))


def _match(stats: pd.DataFrame, where: dict[str, Any], keys: Sequence[str], **fixed: Any) -> float | None:
    """The ``mean`` of the ``stats`` row whose ``keys`` equal those in ``where`` and ``fixed``; None if none."""
    mask = pd.Series(True, index=stats.index)
    for key, value in [*((k, where[k]) for k in keys), *fixed.items()]:
        mask &= stats[key].isna() if pd.isna(value) else stats[key] == value
    rows = stats[mask]
    return None if rows.empty else float(rows["mean"].iloc[0])


def _constant(values: pd.Series) -> Any:
    """The one value of a column that does not vary (blanks aside), else ``None``."""
    distinct = values.dropna().unique()
    return distinct[0] if len(distinct) == 1 else None


def _reference_acc(
    reference: pd.DataFrame | None, where: dict[str, Any], settings: dict[str, Any], weight: str, psum: str
) -> float | None:
    """The published number for this panel's model, data set and CIM settings and this scheme, if there is one."""
    if reference is None or reference.empty:
        return None
    match = reference[
        (reference["model"] == where["model"])
        & (reference["dataset"] == where["dataset"])
        & (reference["weight_granularity"] == weight)
        & (reference["psum_granularity"] == psum)
        & reference_applies(reference, settings)
    ]
    return None if match.empty else float(match["acc"].iloc[0])


def _zoom(ax: Axes, values: Sequence[float], headroom: float) -> None:
    """Y limits around ``values`` (bars start below, as in the paper), with room above for the value labels."""
    values = [v for v in values if pd.notna(v)]
    if not values:
        return
    low, high = min(values), max(values)
    span = max(high - low, 0.1 * abs(high), 1.0)
    ax.set_ylim(max(0.0, low - 0.5 * span), high + headroom * span)
