"""Tables as text: a report's tables as GitHub-flavoured Markdown (:func:`to_markdown`, each mean with its spread in
one cell), and paired differences as one line each (:func:`paired_lines`), for ``report.md``, the command's summary
and notebooks."""

from __future__ import annotations

import math

import pandas as pd

from cimexp.report.stats import ESTIMATE_SUFFIXES, estimate_columns, format_estimate
from cimexp.report.tables import PANEL_KEYS, varying


def to_markdown(table: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table; floats with ``digits`` decimals, empty cells for missing values.

    A mean column ``X`` with its :data:`~cimexp.report.stats.ESTIMATE_SUFFIXES` companions becomes one cell
    ``mean ± std (n=k) [low, high]`` (95% interval), or ``mean (n=1)``; a ``difference`` is signed.
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
            format_estimate(*row, digits=digits, signed=name == "difference", label_ci=False)
            for row in table[columns].itertuples(index=False)
        ]
        shown = shown.drop(columns=columns[1:])
    return shown


def paired_lines(table: pd.DataFrame, digits: int = 2) -> list[str]:
    """The rows of :func:`~cimexp.report.tables.paired_table` as text, e.g. ``resnet20 / cifar10, adc_bits=3:
    column/column - layer/column: +0.85 ± 0.31 (n=3), 95% CI [0.08, 1.62]`` (naming the settings that vary among the
    rows of its kind)."""
    lines = []
    keys = [c for c in table.columns if c not in ("kind", "reference", "scheme", *estimate_columns("difference"))]
    for _, row in table.iterrows():
        shown = varying(table[table["kind"] == row["kind"]], [k for k in keys if k not in PANEL_KEYS])
        where = ", ".join(
            [" / ".join(str(row[k]) for k in PANEL_KEYS)] + [f"{k}={_plain_value(row[k])}" for k in shown]
        )
        numbers = [row[c] for c in estimate_columns("difference")]
        text = format_estimate(*numbers, digits=digits, signed=True)
        lines.append(f"{where}: {row['reference']} - {row['scheme']}: {text}")
    return lines


def _plain_value(value: object) -> str:
    """``4`` rather than ``4.0`` for whole numbers."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
