"""The fault-injection soak (tests/soak.py) as a slow test: 20 SIGKILLs of a 6-job sweep, bit-identical results."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import soak  # noqa: E402


@pytest.mark.slow  # ~10 min on 2 cores: the sweep twice and 20 relaunches
def test_a_sweep_killed_20_times_ends_as_the_uninterrupted_one(tmp_path: Path) -> None:
    summary = soak.soak(tmp_path, kills=20, seed=0, min_wait=2.0, max_wait=30.0)
    assert summary["jobs"] == 6
    assert summary["kills"] == 20, summary  # the sweep outlasts 20 kills at these waits
    assert summary["differences"] == [], summary
