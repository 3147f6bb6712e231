"""Reports over many runs: ``python -m cimexp.report <dirs>`` collects the ``results.json`` of training and
evaluation runs into one tidy table and writes aggregated tables and the paper's figures.

Modules, in the order data flows:

- :mod:`~cimexp.report.collect`: ``results.json`` files -> the runs table (one row per finished run) and the
  list of files skipped (unfinished, unreadable, malformed); its columns and the granularity vocabulary.
- :mod:`~cimexp.report.paths`: where results files are found, and paths in the table relative to the sweep root.
- :mod:`~cimexp.report.stats`: mean, std, n and Student-t confidence intervals of repeated runs, paired
  differences over the same seeds, which runs of a runs table are independent replicates, and per-configuration
  statistics in the report's column convention (``X``, ``X_std``, ``X_n``, ``X_ci_low``, ``X_ci_high``).
- :mod:`~cimexp.report.reference`: published accuracies to compare with (the paper's, shipped as
  ``published/kim2025.csv``, or the user's CSV).
- :mod:`~cimexp.report.tables`: runs table -> one row per configuration over its seeds, paired differences between
  schemes, granularity grid (Fig. 7), variation (Fig. 10), ADC noise, ADC energy, clip rates, comparison with
  published numbers.
- :mod:`~cimexp.report.curves`: training curves over seeds and time-to-accuracy (Fig. 9).
- :mod:`~cimexp.report.markdown`: tables as Markdown, paired differences as lines of text.
- :mod:`~cimexp.report.figures`: the figures (granularity grid, dequantization ops, QAT curves, variation, ADC
  energy), as matplotlib figures.
- :mod:`~cimexp.report.publish`: all of it as a :class:`Report`, written to a directory (CSV, Markdown, PNG,
  SVG), read back, or logged to W&B.
- :mod:`~cimexp.report.cli`: the command line.

In a notebook::

    from cimexp.report import collect, make_report
    runs, skipped = collect(["logs/train/multiruns"])
    report = make_report(runs, skipped)
    report.tables["granularity_grid"], report.tables["paired_differences"], report.figures["granularity_grid"]
"""

from cimexp.report.collect import collect, parse_results
from cimexp.report.curves import history_table, mean_curves, time_to_accuracy_table
from cimexp.report.figures import (
    adc_energy_figure,
    dequant_figure,
    granularity_grid_figure,
    qat_figure,
    save_figure,
    variation_figure,
)
from cimexp.report.paths import find_results
from cimexp.report.publish import Report, load_report, log_to_wandb, make_report, write_report
from cimexp.report.reference import reference_table
from cimexp.report.tables import (
    comparison_table,
    grid_table,
    paired_table,
    paired_tables,
    summary_table,
    variation_table,
)

__all__ = [
    "Report",
    "adc_energy_figure",
    "collect",
    "comparison_table",
    "dequant_figure",
    "find_results",
    "granularity_grid_figure",
    "grid_table",
    "history_table",
    "load_report",
    "log_to_wandb",
    "make_report",
    "mean_curves",
    "paired_table",
    "paired_tables",
    "parse_results",
    "qat_figure",
    "reference_table",
    "save_figure",
    "summary_table",
    "time_to_accuracy_table",
    "variation_figure",
    "variation_table",
    "write_report",
]
