"""The post-training table's files: ``points.csv`` (one row per grid point, :data:`COLUMNS`), written under a lock so
that runs sharing a folder never lose each other's points, and ``table.md`` rendered from it. Torch-free: the
table can be read and rendered anywhere."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from cimexp.cim import StepInit
from cimexp.cim.vocabulary import FLOAT, GRANULARITIES
from cimexp.files import atomic_write, exclusive
from cimexp.report.stats import Estimate, estimate, paired_difference

COLUMNS = (
    "setting",
    "ckpt",
    "data",
    "val_images",
    "w_bits",
    "a_bits",
    "cell_bits",
    "array_size",
    "act_method",
    "percentile",
    "calibration_images",
    "bn_images",
    "adc_bits",
    "weight_granularity",
    "psum_granularity",
    "weight_method",
    "psum_method",
    "draw",
    "top1",
    "seconds",
)
"""Columns of points.csv. A point is identified by ``setting`` (:func:`setting`) and the grid coordinates ``adc_bits``,
the granularities, the methods and the calibration ``draw``; ``top1`` is a percentage, ``seconds`` the point's wall
time. The row of the float network has ``weight_granularity = psum_granularity = "float"`` and no ADC bits, methods
or draw (nothing of it is calibrated)."""

POINT_KEY = ("setting", "adc_bits", "weight_granularity", "psum_granularity", "weight_method", "psum_method", "draw")

COLUMNS_0_2 = tuple(c for c in COLUMNS if c != "draw")
"""points.csv's columns up to 0.2, which had one calibration draw, draw 0 (the same batches as draw 0 now):
:func:`read_points` reads such a file with that draw, and the next point written rewrites it with COLUMNS."""

LOCK_FILE = ".points.lock"
"""The lock file of a post-training folder (:func:`cimexp.files.exclusive`)."""
LEGACY_FILE = "cells.csv"
"""points.csv's name in 0.1 ("cell" meant a grid point): ``cimexp-post-training`` renames it on its next run."""


def point_keys(rows: list[dict[str, str]]) -> dict[tuple[str, ...], dict[str, str]]:
    return {tuple(row[k] for k in POINT_KEY): row for row in rows}


def append_point(out_dir: Path, row: dict[str, str]) -> None:
    """Add ``row`` to points.csv unless a concurrent run added its point meanwhile, and rewrite table.md."""
    with exclusive(out_dir / LOCK_FILE):
        rows = read_points(out_dir / "points.csv")
        if tuple(row[k] for k in POINT_KEY) not in point_keys(rows):
            rows.append(row)
            write_points(out_dir / "points.csv", rows)
        write_table(out_dir / "table.md", rows)


def read_points(path: Path) -> list[dict[str, str]]:
    """The rows of a points.csv (none when the file does not exist); a file of 0.2 (:data:`COLUMNS_0_2`) is read
    with its points' draw, 0.

    Raises:
        ValueError: the file's header is neither :data:`COLUMNS` nor that of 0.2 (written by another version: move it
            away).
    """
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = tuple(reader.fieldnames or ())
        if header not in (COLUMNS, COLUMNS_0_2):
            raise ValueError(
                f"{str(path)!r} has columns {reader.fieldnames}, expected {list(COLUMNS)}: it was written by another "
                "version of cimexp.post_training; move it away (or set out_dir=...) to start a new table"
            )
        rows = list(reader)
    if header == COLUMNS_0_2:
        rows = [{**row, "draw": "" if row["weight_granularity"] == FLOAT else "0"} for row in rows]
        rows = [{column: row[column] for column in COLUMNS} for row in rows]
    return rows


def write_points(path: Path, rows: list[dict[str, str]]) -> None:
    """Write points.csv atomically (readers see the old file or the new one)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def write_table(path: Path, rows: list[dict[str, str]]) -> None:
    text = render_table(rows)
    atomic_write(path, lambda f: f.write(text.encode()))


_METHODS = [m.value for m in StepInit]

Point = tuple[str, str, str, str, str]
"""A point's coordinates in a section, without its draw: ``(adc_bits, weight, psum, weight_method, psum_method)``."""


def render_table(rows: list[dict[str, str]]) -> str:
    """table.md: one section per setting in points.csv (in order of first appearance), each with the float
    network's top-1, one table per ADC resolution (methods x granularity pairs, the best method per pair in bold)
    and the best method per pair and ADC resolution. A point measured in several calibration draws shows the mean
    ± std over them, and the section adds each pair's estimate with its 95% interval and the paired difference of
    column-wise minus layer-wise weights (:func:`_draws_tables`)."""
    lines = [
        "# Post-training calibration: top-1 (%) without any training",
        "",
        "Written by `python -m cimexp.post_training` from `points.csv` (methods and command: docs/calibration.md). A "
        "float checkpoint converted to CIM layers; steps calibrated on training batches with the weight / partial-sum "
        "methods of each row; accuracy on the evaluation (test) split. Columns: weight / partial-sum granularity.",
    ]
    for settings_hash in dict.fromkeys(row["setting"] for row in rows):
        lines += _section([row for row in rows if row["setting"] == settings_hash])
    return "\n".join(lines) + "\n"


def _section(rows: list[dict[str, str]]) -> list[str]:
    first = rows[0]
    float_rows = [row for row in rows if row["weight_granularity"] == FLOAT]
    measured: dict[Point, dict[str, float]] = {}
    for r in rows:
        if r["weight_granularity"] != FLOAT:
            point = tuple(r[k] for k in POINT_KEY[1:-1])
            measured.setdefault(point, {})[r["draw"]] = float(r["top1"])
    estimates = {point: estimate(top1.values()) for point, top1 in measured.items()}
    draws = sorted({draw for top1 in measured.values() for draw in top1}, key=int)
    bn = (
        f"BatchNorm re-estimated on {first['bn_images']} images" if first["bn_images"] != "0" else "no BN re-estimation"
    )
    over_draws = f" Calibration draws {', '.join(draws)}: a cell is the mean ± std over them." if len(draws) > 1 else ""
    lines = [
        "",
        f"## Setting {first['setting']}",
        "",
        f"`{first['ckpt']}` on {first['data']}, {first['val_images']} evaluation images; W{first['w_bits']}A"
        f"{first['a_bits']}, {first['cell_bits']}-bit cells, {first['array_size']}x{first['array_size']} arrays; "
        f"steps calibrated on {first['calibration_images']} training images, activations `{first['act_method']}`, "
        f"percentile {first['percentile']}; {bn}. Float network: "
        f"{float_rows[0]['top1'] + '%' if float_rows else 'not measured'}.{over_draws}",
    ]
    schemes = sorted(
        {(w, p) for _, w, p, _, _ in measured}, key=lambda s: (GRANULARITIES.index(s[0]), GRANULARITIES.index(s[1]))
    )
    bits = sorted({b for b, *_ in measured}, key=int, reverse=True)
    methods = {
        b: sorted(
            {(wm, pm) for b2, _, _, wm, pm in measured if b2 == b},
            key=lambda m: (_METHODS.index(m[0]), _METHODS.index(m[1])),
        )
        for b in bits
    }
    best: dict[tuple[str, str, str], Point] = {}
    for b in bits:
        for s in schemes:
            candidates = [(b, *s, *m) for m in methods[b] if (b, *s, *m) in estimates]
            if candidates:
                best[(b, *s)] = max(candidates, key=lambda point: estimates[point].mean)
        lines += [
            "",
            f"### {b}-bit ADC",
            "",
            "| weight / psum method | " + " | ".join(f"{w}/{p}" for w, p in schemes) + " |",
            "|---|" + "---|" * len(schemes),
        ]
        for m in methods[b]:
            entries = []
            for s in schemes:
                point = (b, *s, *m)
                text = _mean_text(estimates[point]) if point in estimates else ""
                entries.append(f"**{text}**" if point in estimates and best[(b, *s)] == point else text)
            lines.append(f"| {m[0]} / {m[1]} | " + " | ".join(entries) + " |")
    if best:
        lines += [
            "",
            "### Best method per scheme",
            "",
            "| weight/psum | " + " | ".join(f"{b}-bit ADC" for b in bits) + " |",
            "|---|" + "---|" * len(bits),
        ]
        for s in schemes:
            entries = []
            for b in bits:
                point = best.get((b, *s))
                entries.append("" if point is None else f"{_mean_text(estimates[point])} ({point[3]} / {point[4]})")
            lines.append(f"| {s[0]}/{s[1]} | " + " | ".join(entries) + " |")
    if len(draws) > 1:
        lines += _draws_tables(measured, estimates, schemes, [(b, m) for b in bits for m in methods[b]])
    return lines


def _draws_tables(
    measured: dict[Point, dict[str, float]],
    estimates: dict[Point, Estimate],
    schemes: list[tuple[str, str]],
    columns: list[tuple[str, tuple[str, str]]],
) -> list[str]:
    """Over the calibration draws: every pair's mean ± std (n) [95% CI], and the paired difference of column-wise
    minus layer-wise weights at each partial-sum granularity (the same draw calibrates both on the same images)."""
    header = "| {} | " + " | ".join(f"{b}-bit ADC, {wm} / {pm}" for b, (wm, pm) in columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    lines = [
        "",
        "### Over the calibration draws: mean ± std (n) [95% CI]",
        "",
        header.format("weight/psum"),
        rule,
    ]
    for s in schemes:
        cells = [estimates[(b, *s, *m)].format(label_ci=False) if (b, *s, *m) in estimates else "" for b, m in columns]
        lines.append(f"| {s[0]}/{s[1]} | " + " | ".join(cells) + " |")
    psums = [p for w, p in schemes if w == "column" and ("layer", p) in schemes]
    if psums:
        lines += [
            "",
            "### Column-wise weights: column/psum - layer/psum, paired over the draws, mean ± std (n) [95% CI]",
            "",
            header.format("psum"),
            rule,
        ]
        for p in psums:
            cells = []
            for b, m in columns:
                column, layer = measured.get((b, "column", p, *m)), measured.get((b, "layer", p, *m))
                difference = paired_difference(column, layer) if column and layer else None
                cells.append("" if difference is None else difference.format(signed=True, label_ci=False))
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return lines


def _mean_text(value: Estimate) -> str:
    return f"{value.mean:.2f}" if value.n < 2 else f"{value.mean:.2f} ± {value.std:.2f}"
