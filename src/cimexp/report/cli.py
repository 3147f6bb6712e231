"""``python -m cimexp.report DIR [DIR ...] [--out REPORT_DIR] [--reference paper|CSV] [--paired-reference SCHEME ...]
[--wandb]``: collect the ``results.json`` of training and evaluation runs below the given directories (or the
``runs.csv`` of earlier reports) and write the report (tables with mean ± std, n and 95% intervals, paired
differences between schemes, figures with error bars, skipped files) into one directory; optionally log it to W&B."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cimexp.report.collect import collect, with_column_types
from cimexp.report.curves import history_table
from cimexp.report.markdown import paired_lines, to_markdown
from cimexp.report.publish import FIGURES, Report, log_to_wandb, make_report, read_saved, write_report
from cimexp.report.reference import REFERENCE_COLUMNS, reference_table
from cimexp.report.tables import PAIRED_REFERENCE
from cimexp.results import RESULTS_FILE

RUNS_FILE = "runs.csv"
"""A report's runs table: given instead of a directory, the report is made again from it (and the skipped files and
training curves next to it), without the results.json files."""


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
        help=f"run or multirun directories, searched recursively for {RESULTS_FILE} (or such files themselves), "
        f"or the {RUNS_FILE} of an earlier report (to make it again, e.g. after a change of the report code)",
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
        "--paired-reference",
        action="append",
        metavar="SCHEME",
        help=f"a scheme paired differences are taken against (repeatable; default: {PAIRED_REFERENCE}), as the "
        "`scheme` column names it: layer/column, column w/o PSQ, float, ...",
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
        runs, skipped, history = gather(args.paths, include_debug=args.include_debug)
        reference = reference_table(args.reference)
    except (FileNotFoundError, ValueError) as error:
        cli.error(str(error))
    schemes = list(dict.fromkeys(runs["scheme"].dropna()))
    paired_references = args.paired_reference or [PAIRED_REFERENCE]
    for scheme in args.paired_reference or []:
        if scheme not in schemes:
            cli.error(f"--paired-reference {scheme!r} is not a scheme of these runs: {', '.join(schemes)}")
    first = Path(args.paths[0])
    out = args.out if args.out is not None else (first if first.is_dir() else first.parent) / "report"
    report = make_report(runs, skipped, history, reference=reference, paired_reference=paired_references)
    files = write_report(report, out)
    print(summary(report, out, len(files)), flush=True)
    if args.wandb:
        run_dir = log_to_wandb(report, project=args.wandb_project, mode=args.wandb_mode, save_dir=out)
        print(f"[cimexp.report] W&B run: {run_dir if run_dir is not None else 'disabled'}", flush=True)
    return 0 if len(runs) else 1


def gather(
    paths: Sequence[str], include_debug: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    """``(runs, skipped, history)`` of the given paths: results.json files collected below directories, and the
    saved tables of earlier reports given by their :data:`RUNS_FILE` (``None``: none to give). A file an earlier
    report skipped (a run then unfinished) is no longer listed once its run is among the runs.

    Raises:
        FileNotFoundError: a path is none of these.
    """
    saved_reports = [Path(p) for p in paths if Path(p).name == RUNS_FILE and Path(p).is_file()]
    results = [p for p in paths if Path(p) not in saved_reports]
    runs: list[pd.DataFrame] = []
    skipped: list[pd.DataFrame] = []
    history: list[pd.DataFrame] = []
    if results:
        collected, collect_skipped = collect(results, include_debug=include_debug)
        runs.append(collected)
        skipped.append(collect_skipped)
        history.append(history_table(collected))
    for path in saved_reports:
        saved = read_saved(path.parent)
        runs.append(saved.runs)
        skipped += [saved.skipped] if saved.skipped is not None else []
        history += [saved.history] if saved.history is not None else []
    all_runs = with_column_types(pd.concat(runs, ignore_index=True)) if len(runs) > 1 else runs[0]
    all_skipped = pd.concat(skipped, ignore_index=True) if skipped else None
    if all_skipped is not None:
        over = all_skipped["path"].map(lambda path: str(Path(path).parent)).isin(set(all_runs["run_dir"]))
        all_skipped = all_skipped[~over].reset_index(drop=True)
    return all_runs, all_skipped, pd.concat(history, ignore_index=True) if history else None


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
    if "paired_differences" in report.tables:
        paired = report.tables["paired_differences"]
        lines += ["", "Paired differences over the same seeds (percentage points; mean ± std (n), 95% CI):"]
        lines += [f"  {line}" for line in paired_lines(paired[paired["kind"] == "train"])]
        lines += ["  (evaluation runs: paired_differences.md)"] if (paired["kind"] == "evaluate").any() else []
    lines += ["", f"[cimexp.report] wrote {n_files} files to {out} (open {out / 'report.md'})"]
    for name, needs in FIGURES.items():
        lines.append(f"  figure {name}: " + ("drawn" if name in report.figures else f"not drawn, needs {needs}"))
    return "\n".join(lines)
