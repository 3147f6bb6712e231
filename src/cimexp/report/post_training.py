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
    "top1",
    "seconds",
)
"""Columns of points.csv. A point is identified by ``setting`` (:func:`setting`) and the grid coordinates ``adc_bits``,
the granularities and the methods; ``top1`` is a percentage, ``seconds`` the point's wall time. The row of the float
network has ``weight_granularity = psum_granularity = "float"`` and no ADC bits or methods."""

POINT_KEY = ("setting", "adc_bits", "weight_granularity", "psum_granularity", "weight_method", "psum_method")

LOCK_FILE = ".points.lock"
LEGACY_FILE = "cells.csv"
"""points.csv's name in 0.1 ("cell" meant a grid point): ``cimexp-post-training`` renames it on its next run."""
"""The lock file of a post-training folder (:func:`cimexp.files.exclusive`)."""


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
    """The rows of a points.csv (none when the file does not exist).

    Raises:
        ValueError: the file's header is not :data:`COLUMNS` (written by another version: move it away).
    """
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(
                f"{str(path)!r} has columns {reader.fieldnames}, expected {list(COLUMNS)}: it was written by another "
                "version of cimexp.post_training; move it away (or set out_dir=...) to start a new table"
            )
        return list(reader)


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


def render_table(rows: list[dict[str, str]]) -> str:
    """table.md: one section per setting in points.csv (in order of first appearance), each with the float
    network's top-1, one table per ADC resolution (methods x granularity pairs, the best method per pair in bold)
    and the best method per pair and ADC resolution."""
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
    points = [row for row in rows if row["weight_granularity"] != FLOAT]
    bn = (
        f"BatchNorm re-estimated on {first['bn_images']} images" if first["bn_images"] != "0" else "no BN re-estimation"
    )
    lines = [
        "",
        f"## Setting {first['setting']}",
        "",
        f"`{first['ckpt']}` on {first['data']}, {first['val_images']} evaluation images; W{first['w_bits']}A"
        f"{first['a_bits']}, {first['cell_bits']}-bit cells, {first['array_size']}x{first['array_size']} arrays; "
        f"steps calibrated on {first['calibration_images']} training images, activations `{first['act_method']}`, "
        f"percentile {first['percentile']}; {bn}. Float network: "
        f"{float_rows[0]['top1'] + '%' if float_rows else 'not measured'}.",
    ]
    best: dict[tuple[str, str], dict[str, str]] = {}
    schemes = sorted(
        {(r["weight_granularity"], r["psum_granularity"]) for r in points},
        key=lambda s: (GRANULARITIES.index(s[0]), GRANULARITIES.index(s[1])),
    )
    for adc_bits in sorted({r["adc_bits"] for r in points}, key=int, reverse=True):
        at_bits = [r for r in points if r["adc_bits"] == adc_bits]
        methods = sorted(
            {(r["weight_method"], r["psum_method"]) for r in at_bits},
            key=lambda m: (_METHODS.index(m[0]), _METHODS.index(m[1])),
        )
        table = {
            (r["weight_granularity"], r["psum_granularity"], r["weight_method"], r["psum_method"]): r for r in at_bits
        }
        top = {
            s: max((table[(*s, *m)] for m in methods if (*s, *m) in table), key=_top1, default=None) for s in schemes
        }
        best.update({(adc_bits, f"{s[0]}/{s[1]}"): row for s, row in top.items() if row is not None})
        lines += [
            "",
            f"### {adc_bits}-bit ADC",
            "",
            "| weight / psum method | " + " | ".join(f"{w}/{p}" for w, p in schemes) + " |",
            "|---|" + "---|" * len(schemes),
        ]
        for m in methods:
            entries = []
            for s in schemes:
                row = table.get((*s, *m))
                text = "" if row is None else row["top1"]
                entries.append(f"**{text}**" if row is not None and row is top[s] else text)
            lines.append(f"| {m[0]} / {m[1]} | " + " | ".join(entries) + " |")
    if best:
        bits = sorted({b for b, _ in best}, key=int, reverse=True)
        lines += [
            "",
            "### Best method per scheme",
            "",
            "| weight/psum | " + " | ".join(f"{b}-bit ADC" for b in bits) + " |",
            "|---|" + "---|" * len(bits),
        ]
        for w, p in schemes:
            entries = []
            for b in bits:
                row = best.get((b, f"{w}/{p}"))
                entries.append("" if row is None else f"{row['top1']} ({row['weight_method']} / {row['psum_method']})")
            lines.append(f"| {w}/{p} | " + " | ".join(entries) + " |")
    return lines


def _top1(row: dict[str, str]) -> float:
    return float(row["top1"])
