"""Published accuracies to compare our runs with (``--reference``): the numbers Kim et al. (DATE 2025) state, shipped
as data (:data:`PAPER_FILE`), and CSV files of the user's, in one table (:func:`reference_table`).

The paper states some numbers in its text (Sec. IV-B, ResNet-20 on CIFAR) and the rest in its Table III (ResNet-18 on
ImageNet); Fig. 7/8/9/10 give the others only as plots. Its quantized numbers were measured under its Table II
settings (W4A4, 2-bit cells, 4-bit ADCs; 128x128 arrays for ResNet-20), trained for many more epochs than a CPU run:
the file gives them the first four as ``w_bits``, ``a_bits``, ``cell_bits``, ``adc_bits``, so that they are compared
only with runs under them (:func:`reference_applies`); its float numbers give none.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from cimexp.report.collect import SETTING_COLUMNS, with_column_types

REFERENCE_COLUMNS = ("model", "dataset", "weight_granularity", "psum_granularity", "acc", "source")
"""Columns of a reference CSV (``--reference path.csv``): accuracy in top-1 %, granularities as in the runs table
(``layer``/``array``/``column``; ``psum_granularity=none`` for no partial-sum quantization; both ``float`` for the
full-precision network); ``source`` says where the number comes from. Optional: any of the runs table's CIM
settings (``SETTING_COLUMNS``, e.g. ``adc_bits``): a number that gives one is compared only with runs of that setting
(a 4-bit-ADC result is not set beside 3-bit runs); left out or blank, with runs of any."""

PAPER_FILE = "published/kim2025.csv"
"""The paper's numbers (``--reference paper``), a reference CSV shipped in the package ``cimexp.report``."""


def paper_reference() -> pd.DataFrame:
    """The numbers Kim et al. 2025 state (:data:`PAPER_FILE`): the :data:`REFERENCE_COLUMNS`, then the settings
    its quantized numbers were measured under (integers; empty for the float networks)."""
    with resources.files("cimexp.report").joinpath(PAPER_FILE).open() as file:
        # only empty cells are missing: ``none`` is a granularity
        return with_column_types(pd.read_csv(file, keep_default_na=False, na_values=[""]))


def reference_table(sources: Sequence[str | Path]) -> pd.DataFrame:
    """Published accuracies to compare with: ``paper`` (:func:`paper_reference`) and/or CSV files with the
    :data:`REFERENCE_COLUMNS`, concatenated.

    Raises:
        FileNotFoundError: a source is neither ``paper`` nor an existing file.
        ValueError: a CSV lacks required columns (the message lists them).
    """
    tables = []
    for source in sources:
        if str(source) == "paper":
            tables.append(paper_reference())
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
