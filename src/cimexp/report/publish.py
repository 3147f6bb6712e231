"""Assemble a report from the runs table (tables and figures; pure) and publish it: a directory of CSV, Markdown,
PNG and SVG files, read back with :func:`load_report`, and optionally a W&B run (offline by default)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cimexp.report.collect import HISTORY_KEY, QUANTIZER_READINGS, with_column_types
from cimexp.report.curves import curve_labels, history_table, time_to_accuracy_table
from cimexp.report.figures import (
    adc_energy_figure,
    budget_figure,
    clip_rate_figure,
    dequant_figure,
    granularity_grid_figure,
    qat_figure,
    save_figure,
    variation_figure,
)
from cimexp.report.markdown import paired_lines, to_markdown
from cimexp.report.reference import REFERENCE_COLUMNS
from cimexp.report.stats import CONFIDENCE
from cimexp.report.tables import (
    PAIRED_REFERENCE,
    adc_energy_table,
    adc_noise_table,
    clip_rate_table,
    comparison_table,
    grid_table,
    paired_tables,
    summary_table,
    variation_table,
)

STATISTICS = (
    f"Each number over seeds reads `mean ± std (n=k) [low, high]`: the mean over the k independent replicates of "
    f"a configuration (training seeds; for evaluations under cell variation, the training seeds, each the mean of "
    f"its chip instances, or the chip instances where the configuration has one training seed; the training seeds "
    f"alone without variation and noise), the sample standard deviation, and the {100 * CONFIDENCE:g}% Student-t "
    f"confidence interval of the mean; `mean (n=1)` is a single run, with no spread to give. The CSV files hold "
    f"the same numbers as `<column>`, `<column>_std`, `<column>_n`, `<column>_ci_low`, `<column>_ci_high`"
)
"""How report.md explains the statistics in its tables."""

TABLES = {
    "summary": "One row per configuration (every setting but the seed): top-1 accuracy (%) at the end, best during "
    "training, top-5, and training time (s), over seeds",
    "paired_differences": "Paired differences `reference - scheme` in top-1 accuracy (percentage points; positive: "
    "the reference is higher), over the seeds (and chip instances) both have, all other settings equal, with the "
    "paired Student-t interval (over training seeds, each the mean of its chips' differences, where there are two "
    "or more)",
    "granularity_grid": "Top-1 accuracy (%) over weight (rows) x partial-sum (columns) granularity, over seeds; "
    "`w/o PSQ`: no partial-sum quantization; `float`: the float network (paper Fig. 7)",
    "variation": "Top-1 accuracy (%) under log-normal cell variation per sigma, over training seeds (chip "
    "instances averaged within each), or over the chip instances of one training seed (paper Fig. 10)",
    "qat_time_to_accuracy": "For each pair of training curves (seeds averaged per epoch; n each): cumulative "
    "training time (min) each needs to reach the lower of their best accuracies, and the time saved by the faster "
    "(paper Fig. 9 marks); a two-stage curve's stage-1 epochs (no partial-sum quantization) do not count",
    "reference_comparison": "Our accuracy over seeds next to published numbers (`--reference`); delta: our mean "
    "minus theirs, in points",
    "adc_energy": "Accuracy (%) against ADC energy per image (nJ, cost.adc_model), absolute and relative to a "
    "reference configuration (column/column with 4-bit ADCs when present), with the Pareto-optimal configurations "
    "(by mean accuracy)",
    "adc_noise": "Top-1 accuracy (%) under Gaussian ADC noise (`adc.noise_lsb`, columns) of checkpoints trained "
    "without (`train_noise_lsb` 0) and with ADC noise (noise-aware training), no cell variation, over noise seeds",
    "clip_rate": "ADC clip rate (% of conversions saturating at the code range) per CIM layer, last validation "
    "epoch of each training run with partial-sum telemetry, over seeds (the mechanism behind paper Fig. 6)",
}
"""The aggregated tables (file stem: what it shows), written when they have rows."""

FIGURES = {
    "granularity_grid": "training runs with partial-sum quantization",
    "dequant": "training runs with partial-sum quantization and a cim_summary",
    "qat": "training runs with a per-epoch history",
    "variation": "evaluation runs at two or more variation sigmas (python -m cimexp.evaluate)",
    "adc_energy": "training runs whose cim_summary.total has adc_energy_pj",
    "clip_rate": "training runs with partial-sum telemetry (psum_telemetry in results.json)",
    "budget": "paired differences of training runs at two or more numbers of epochs",
}
"""The figures (file stem: what it needs to be drawn)."""

MARKDOWN_OMITS = ("run_name", "sweep_group", "git_commit", "ckpt", "cost_model", "layer_clip_rate")
"""Long columns left out of ``runs.md`` (they stay in ``runs.csv``)."""


@dataclass(frozen=True)
class Report:
    """Everything a report shows: the runs table, the files skipped, the training curves, the reference numbers,
    the aggregated tables (:data:`TABLES` with rows) and the figures (:data:`FIGURES` that had data)."""

    runs: pd.DataFrame
    skipped: pd.DataFrame
    history: pd.DataFrame
    reference: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    figures: dict[str, Figure]


def make_report(
    runs: pd.DataFrame,
    skipped: pd.DataFrame | None = None,
    history: pd.DataFrame | None = None,
    reference: pd.DataFrame | None = None,
    paired_reference: str | Sequence[str] = PAIRED_REFERENCE,
) -> Report:
    """Compute the tables and draw the figures of a runs table from :func:`cimexp.report.collect.collect`.

    Args:
        runs: the runs table.
        skipped: the files skipped by ``collect`` (``path``, ``reason``); none if omitted.
        history: training curves (:func:`history_table`); computed from ``runs`` if omitted.
        reference: published numbers (:func:`reference_table`) to compare with; none if omitted.
        paired_reference: the scheme, or schemes, the paired differences are taken against (``column/column``).
    """
    skipped = pd.DataFrame(columns=["path", "reason"]) if skipped is None else skipped
    history = history_table(runs) if history is None else history
    reference = pd.DataFrame(columns=list(REFERENCE_COLUMNS)) if reference is None else reference
    tables = {
        "summary": summary_table(runs),
        "paired_differences": paired_tables(runs, paired_reference),
        "granularity_grid": grid_table(runs).reset_index(),
        "variation": variation_table(runs),
        "qat_time_to_accuracy": time_to_accuracy_table(history),
        "reference_comparison": comparison_table(runs, reference),
        "adc_energy": adc_energy_table(runs),
        "adc_noise": adc_noise_table(runs),
        "clip_rate": clip_rate_table(runs),
    }
    figures = {
        "granularity_grid": granularity_grid_figure(runs, reference),
        "dequant": dequant_figure(runs),
        "qat": qat_figure(history),
        "variation": variation_figure(runs),
        "adc_energy": adc_energy_figure(runs),
        "clip_rate": clip_rate_figure(runs),
        "budget": budget_figure(tables["paired_differences"]),
    }
    return Report(
        runs=runs,
        skipped=skipped,
        history=history,
        reference=reference,
        tables={name: table for name, table in tables.items() if not table.empty},
        figures={name: figure for name, figure in figures.items() if figure is not None},
    )


def write_report(report: Report, out_dir: str | Path) -> list[Path]:
    """Write the report into ``out_dir`` and return the files written.

    Files: ``runs.csv`` (every column) and ``runs.md``; ``skipped.csv`` / ``.md`` (path, reason);
    ``history.csv`` (training curves); ``<table>.csv`` / ``.md`` for each of :data:`TABLES` with rows;
    ``reference.csv`` when reference numbers were given; ``<figure>.png`` / ``.svg`` for each figure drawn; and
    ``report.md``, which shows all of it. Report files of an earlier run in ``out_dir`` that this report does not
    have (a figure without data now) are removed, so the directory never mixes two reports.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = report.runs.drop(columns=[HISTORY_KEY], errors="ignore")
    written = [
        *_write_table(runs, out / "runs", markdown=runs.drop(columns=list(MARKDOWN_OMITS), errors="ignore")),
        *_write_table(report.skipped, out / "skipped"),
    ]
    report.history.to_csv(out / "history.csv", index=False)
    written.append(out / "history.csv")
    for name, table in report.tables.items():
        written += _write_table(table, out / name)
    if not report.reference.empty:
        report.reference.to_csv(out / "reference.csv", index=False)
        written.append(out / "reference.csv")
    for name, figure in report.figures.items():
        written += save_figure(figure, out / name)
    (out / "report.md").write_text(report_markdown(report))
    written.append(out / "report.md")
    for stale in _known_outputs(out) - set(written):
        stale.unlink(missing_ok=True)
    return written


def load_report(out_dir: str | Path, paired_reference: str | Sequence[str] = PAIRED_REFERENCE) -> Report:
    """Read a report directory written by :func:`write_report` back into a :class:`Report` (tables recomputed and
    figures redrawn from its runs, with the reference numbers it was written with)."""
    saved = read_saved(out_dir)
    return make_report(saved.runs, saved.skipped, saved.history, saved.reference, paired_reference=paired_reference)


@dataclass(frozen=True)
class Saved:
    """What a report directory holds besides what is computed from it: the runs, the files skipped when they were
    collected, the training curves and the reference numbers (``None`` where the file is missing)."""

    runs: pd.DataFrame
    skipped: pd.DataFrame | None
    history: pd.DataFrame | None
    reference: pd.DataFrame | None


def read_saved(out_dir: str | Path) -> Saved:
    """The :class:`Saved` tables of a report directory (``runs.csv``, ``skipped.csv``, ``history.csv``,
    ``reference.csv``), with the runs table's column types restored (and what tables written by earlier versions
    lack: ``status`` ``finished`` in a runs table, each run's ``stage1_epochs`` in a history).

    Raises:
        FileNotFoundError: the directory holds no ``runs.csv``.
    """
    out = Path(out_dir)
    if not (out / "runs.csv").is_file():
        raise FileNotFoundError(
            f"{str(out)!r} holds no runs.csv: not a report directory. Write one with "
            "`python -m cimexp.report <results dir> --out <report dir>`, or collect results with "
            "cimexp.report.collect(<results dir>)."
        )

    def read(name: str) -> pd.DataFrame:
        """A table of the directory (only empty cells are missing: ``none`` is a granularity)."""
        return with_column_types(pd.read_csv(out / name, keep_default_na=False, na_values=[""]))

    def read_if_there(name: str) -> pd.DataFrame | None:
        return read(name) if (out / name).is_file() else None

    runs, history = read("runs.csv"), read_if_there("history.csv")
    if "status" not in runs:  # written when a report held finished runs only
        runs.insert(1, "status", "finished")
    if "quantizer" not in runs:  # written before the quantizer had readings: every run had the first one
        at = list(runs.columns).index("calibration") + 1 if "calibration" in runs else len(runs.columns)
        runs.insert(at, "quantizer", next(iter(QUANTIZER_READINGS)))
    if history is not None and "stage1_epochs" not in history:  # written before the history table had it
        stage1_epochs = runs[runs["kind"] == "train"].drop_duplicates("run_dir")[["run_dir", "stage1_epochs"]]
        history = history.merge(stage1_epochs, on="run_dir", how="left")
    return Saved(runs, read_if_there("skipped.csv"), history, read_if_there("reference.csv"))


def report_markdown(report: Report) -> str:
    """``report.md``: counts, the aggregated tables, the figures and the skipped files."""
    runs = report.runs
    kinds = runs["kind"].value_counts()
    lines = [
        "# cimexp report",
        "",
        f"{len(runs)} finished runs ({kinds.get('train', 0)} training, {kinds.get('evaluate', 0)} evaluation); "
        f"{len(report.skipped)} results files skipped. Accuracies are top-1 % on the validation (test) split. "
        "Every run is a row of [runs.csv](runs.csv) ([runs.md](runs.md)); training curves are in "
        "[history.csv](history.csv).",
        "",
        f"{STATISTICS}.",
        "",
    ]
    for name, description in TABLES.items():
        if name in report.tables:
            lines += [f"## {name}", "", f"{description}. [{name}.csv]({name}.csv)", ""]
            if name == "paired_differences":
                lines += [f"- {line}" for line in paired_lines(report.tables[name])] + [""]
            lines.append(to_markdown(report.tables[name]))
    for name, needs in FIGURES.items():
        if name in report.figures:
            lines += [f"## Figure: {name}", "", f"![{name}]({name}.png) ([SVG]({name}.svg))", ""]
        else:
            lines += [f"## Figure: {name}", "", f"Not drawn: needs {needs}.", ""]
    lines += ["## Skipped results files", ""]
    lines += [to_markdown(report.skipped) if not report.skipped.empty else "None.\n"]
    return "\n".join(lines)


def log_to_wandb(
    report: Report,
    project: str = "cimexp",
    name: str = "report",
    mode: str | None = None,
    save_dir: str | Path | None = None,
) -> Path | None:
    """Log the report to one W&B run (``job_type="report"``): every table as a ``wandb.Table``, every figure as a
    ``wandb.Image``, and native line plots of the training curves and of accuracy under variation.

    Args:
        project: the W&B project.
        name: the run name.
        mode: ``offline`` (stored under ``save_dir``, upload later with ``wandb sync``), ``online`` or
            ``disabled``; default ``$WANDB_MODE``, else ``offline``.
        save_dir: where W&B writes its files (``<save_dir>/wandb/``); default the working directory.

    Returns:
        The run's local directory (None when disabled).
    """
    import wandb

    mode = mode or os.environ.get("WANDB_MODE") or "offline"
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=project,
        name=name,
        job_type="report",
        mode=mode,
        dir=str(save_dir) if save_dir is not None else None,
        config={"runs": len(report.runs), "skipped": len(report.skipped)},
        settings=wandb.Settings(silent=True),
    )
    try:
        tables = {
            "runs": report.runs.drop(columns=[HISTORY_KEY], errors="ignore"),
            "skipped": report.skipped,
            **report.tables,
        }
        run.log({f"table/{key}": wandb.Table(dataframe=_plain(table)) for key, table in tables.items()})
        run.log({f"figure/{key}": wandb.Image(_pixels(figure), caption=key) for key, figure in report.figures.items()})
        if not report.history.empty:
            curves = report.history.assign(
                curve=report.history["run_dir"].map(curve_labels(report.history)),
                cum_train_time_min=report.history["cum_train_time_s"] / 60.0,
            )[["curve", "epoch", "cum_train_time_min", "acc"]]
            curve_table = wandb.Table(dataframe=_plain(curves))
            run.log(
                {
                    "plot/qat_time": wandb.plot.line(curve_table, "cum_train_time_min", "acc", stroke="curve"),
                    "plot/qat_epoch": wandb.plot.line(curve_table, "epoch", "acc", stroke="curve"),
                }
            )
        if "variation" in report.tables:
            variation = report.tables["variation"][["scheme", "sigma", "acc"]]
            plot = wandb.plot.line(wandb.Table(dataframe=_plain(variation)), "sigma", "acc", stroke="scheme")
            run.log({"plot/variation": plot})
        return Path(run.dir).parent if mode != "disabled" else None
    finally:
        run.finish()


def _write_table(table: pd.DataFrame, stem: Path, markdown: pd.DataFrame | None = None) -> list[Path]:
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    table.to_csv(csv, index=False)
    md.write_text(to_markdown(table if markdown is None else markdown))
    return [csv, md]


def _known_outputs(out: Path) -> set[Path]:
    """Every file name :func:`write_report` may write into ``out``."""
    names = {"runs.csv", "runs.md", "skipped.csv", "skipped.md", "history.csv", "reference.csv", "report.md"}
    names |= {f"{table}.{ext}" for table in TABLES for ext in ("csv", "md")}
    names |= {f"{figure}.{ext}" for figure in FIGURES for ext in ("png", "svg")}
    return {out / name for name in names}


def _plain(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with Python objects and ``None`` for missing values (what wandb.Table serialises)."""
    plain = table.astype(object)
    return plain.where(table.notna(), None)


def _pixels(figure: Figure) -> np.ndarray[Any, Any]:
    """The figure rendered by Agg as an RGB array ``[H, W, 3]``."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
