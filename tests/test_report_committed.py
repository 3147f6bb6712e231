"""The committed reports, made again from their own runs tables as a user would (``cimexp-report <report>/runs.csv
... --out <dir>``): every table and Markdown file byte for byte as committed. A change of the report code that
changes what a finished study reports fails here; one that only moves code does not."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.figure import Figure

from cimexp.report import publish
from cimexp.report.cli import main
from cimexp.report.post_training import read_points, render_table
from cimexp.report.publish import FIGURES

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"
BOTH_PAIRS = ["--paired-reference", "column/column", "--paired-reference", "layer/column"]
COMMITTED = {
    "medium/report": ["--reference", "paper", *BOTH_PAIRS],
    "medium/report_readings": ["--reference", "paper", *BOTH_PAIRS],  # as `make medium-readings` makes it
}
"""The committed reports that the current code makes again byte for byte, with the options each was made with.
The others were made by earlier versions of the report: medium/report_fig9's runs table lacks the ``quantizer``
column that reading it back adds; quick/, quick/beyond/, quick/qat_schedules/ and medium/pilot_before_fixes/ also
predate today's wording of report.md (and quick/qat_schedules/ today's time-to-accuracy rule for two-stage QAT).
The post-training tables (``post_training/`` and each network's of ``networks/``) are rendered again from their
points.csv."""


@pytest.mark.parametrize("committed", list(COMMITTED))
def test_a_committed_report_is_made_again_byte_for_byte(
    committed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = RESULTS / committed
    # Figures are slow to draw and their SVGs carry random ids: report.md needs only which were drawn (their PNG).
    for name in FIGURES:
        drawn = (folder / f"{name}.png").is_file()
        monkeypatch.setattr(publish, f"{name}_figure", lambda *_, drawn=drawn, **__: Figure() if drawn else None)
    monkeypatch.setattr(publish, "save_figure", lambda figure, stem: [])
    assert main([str(folder / "runs.csv"), *COMMITTED[committed], "--out", str(tmp_path)]) == 0
    made = sorted(path.name for path in tmp_path.iterdir())
    assert made == sorted(path.name for path in folder.iterdir() if path.suffix in (".csv", ".md"))
    for name in made:
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes(), f"{committed}/{name}"


def test_the_committed_post_training_table_is_rendered_from_its_points() -> None:
    folder = RESULTS / "post_training"
    rows = read_points(folder / "points.csv")
    assert len(rows) > 300 and {row["draw"] for row in rows} == {"", "0"}
    assert render_table(rows) == (folder / "table.md").read_text()


NETWORKS = sorted(path.parent.name for path in (RESULTS / "networks").glob("*/points.csv"))


@pytest.mark.parametrize("network", NETWORKS)
def test_a_committed_network_table_is_rendered_from_its_points(network: str) -> None:
    folder = RESULTS / "networks" / network
    rows = read_points(folder / "points.csv")
    # The declared protocol: the float row and 9 granularity pairs x 2 ADC resolutions x 3 calibration draws.
    assert len(rows) == 1 + 9 * 2 * 3 and {row["draw"] for row in rows} == {"", "0", "1", "2"}
    assert {(row["adc_bits"], row["psum_method"]) for row in rows if row["draw"]} == {("4", "percentile"), ("3", "mse")}
    assert render_table(rows) == (folder / "table.md").read_text()


def test_the_finished_networks_are_committed() -> None:
    assert {"vit", "mobilenetv2"} <= set(NETWORKS)
