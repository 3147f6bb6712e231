"""``python -m cimexp.report DIR [DIR ...] [--out REPORT_DIR] [--reference paper|CSV] [--wandb]``: collect the
``results.json`` of training and evaluation runs below the given directories and write the report (tables,
figures, skipped files) into one directory; optionally log it to W&B."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cimexp.report.collect import RESULTS_FILE, collect
from cimexp.report.publish import FIGURES, Report, log_to_wandb, make_report, write_report
from cimexp.report.tables import REFERENCE_COLUMNS, reference_table, to_markdown


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m cimexp.report`` (also ``cimexp-report``)."""
    cli = argparse.ArgumentParser(
        prog="python -m cimexp.report",
        description="Tables and figures from the results.json files of cimexp training and evaluation runs.",
    )
    cli.add_argument(
        "paths",
        nargs="+",
        metavar="DIR",
        help=f"run or multirun directories, searched recursively for {RESULTS_FILE} (or such files themselves)",
    )
    cli.add_argument("--out", type=Path, help="report directory (default: report/ inside the first DIR)")
    cli.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="SOURCE",
        help="published accuracies to compare with (repeatable): `paper` for the numbers stated in Kim et al. 2025, "
        f"or a CSV with the columns {', '.join(REFERENCE_COLUMNS)}",
    )
    cli.add_argument(
        "--include-debug", action="store_true", help="also report smoke runs of a debug= profile (left out by default)"
    )
    cli.add_argument("--wandb", action="store_true", help="also log the tables and figures to a W&B run")
    cli.add_argument("--wandb-project", default="cimexp", help="W&B project (default: cimexp)")
    cli.add_argument(
        "--wandb-mode",
        choices=("offline", "online", "disabled"),
        help="W&B mode (default: $WANDB_MODE, else offline: stored in the report directory, `wandb sync` uploads)",
    )
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    """Run the report command; returns the exit status: 0, or 1 when no finished run was found."""
    cli = parser()
    args = cli.parse_args(argv)
    try:
        runs, skipped = collect(args.paths, include_debug=args.include_debug)
        reference = reference_table(args.reference)
    except (FileNotFoundError, ValueError) as error:
        cli.error(str(error))
    first = Path(args.paths[0])
    out = args.out if args.out is not None else (first if first.is_dir() else first.parent) / "report"
    report = make_report(runs, skipped, reference=reference)
    files = write_report(report, out)
    print(summary(report, out, len(files)), flush=True)
    if args.wandb:
        run_dir = log_to_wandb(report, project=args.wandb_project, mode=args.wandb_mode, save_dir=out)
        print(f"[cimexp.report] W&B run: {run_dir if run_dir is not None else 'disabled'}", flush=True)
    return 0 if len(runs) else 1


def summary(report: Report, out: Path, n_files: int) -> str:
    """What the command prints: counts, skipped files with reasons, the granularity grid, what was written."""
    runs = report.runs
    kinds = runs["kind"].value_counts()
    lines = [
        f"[cimexp.report] {len(runs)} finished runs ({kinds.get('train', 0)} training, "
        f"{kinds.get('evaluate', 0)} evaluation), {len(report.skipped)} results files skipped"
    ]
    lines += [f"  skipped {row.path}: {row.reason}" for row in report.skipped.itertuples()]
    if "granularity_grid" in report.tables:
        lines += ["", "Top-1 accuracy (%), weight (rows) x partial-sum (columns) granularity:"]
        lines += [to_markdown(report.tables["granularity_grid"]).rstrip()]
    lines += ["", f"[cimexp.report] wrote {n_files} files to {out} (open {out / 'report.md'})"]
    for name, needs in FIGURES.items():
        lines.append(f"  figure {name}: " + ("drawn" if name in report.figures else f"not drawn, needs {needs}"))
    return "\n".join(lines)
