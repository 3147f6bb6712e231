"""The fault-injection soak (tests/soak.py) as a slow test: 20 SIGKILLs of a 6-job sweep, bit-identical results."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import soak  # noqa: E402


@pytest.mark.slow  # minutes on 2 cores: the reference sweep, then killed copies until 20 kills have landed
def test_a_sweep_killed_20_times_ends_as_the_uninterrupted_one(tmp_path: Path) -> None:
    summary = soak.soak(tmp_path, kills=20, seed=0, min_wait=2.0, max_wait=15.0)
    assert summary["jobs"] == 6
    assert summary["kills"] == 20, summary
    assert summary["differences"] == [], summary


def test_the_soaks_comparison_ignores_wall_times_and_finds_any_other_difference(tmp_path: Path) -> None:
    """The comparison the soak ends with: equal when only the wall-clock times differ; a changed weight, a layer's
    extra state (a dict of tensors) or a metric is a difference."""
    import json

    import torch

    def job(sweep: str, weight: float, extra: float, acc: float, seconds: float) -> None:
        folder = tmp_path / sweep / "job"
        (folder / "checkpoints").mkdir(parents=True)
        final = {"val/acc": acc, "time/epoch_s": seconds}
        (folder / "results.json").write_text(json.dumps({"status": "finished", "global_step": 4, "final": final}))
        state = {"w": torch.tensor([weight]), "layer._extra_state": {"step": torch.tensor([extra])}}
        torch.save({"state_dict": state}, folder / "checkpoints" / "last.ckpt")

    job("a", 1.0, 2.0, 0.5, 1.0)
    job("b", 1.0, 2.0, 0.5, 9.0)
    assert soak.compare(tmp_path / "a", tmp_path / "b") == []
    for name, changed in (("w", (1.5, 2.0, 0.5)), ("extra", (1.0, 2.5, 0.5)), ("acc", (1.0, 2.0, 0.25))):
        job(name, *changed, 1.0)
        assert soak.compare(tmp_path / "a", tmp_path / name) != [], name
