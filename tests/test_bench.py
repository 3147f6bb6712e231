"""The benchmarks (``python -m cimexp.bench``) run and report what they claim; their speed is not tested here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cimexp.bench import main
from cimexp.models import resnet20
from cimexp.run.speed import NET_MODELS, bench_net, format_net_table


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # With two OpenMP threads on a 2-core machine that runs anything else, threads spin at barriers waiting for a
    # descheduled partner: a batch-2 benchmark then takes 20-50 s instead of 2 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_bench_net_times_every_model_against_float() -> None:
    rows = bench_net(batch=2, device="cpu", rounds=1, repeats=1, warmup=1)

    assert [r["model"] for r in rows] == ["float", "column/column", "layer/column", "layer/layer"] == list(NET_MODELS)
    assert all(r["step_s"] > 0 and r["warmup_s"] > 0 and r["calibrate_s"] > 0 for r in rows)
    assert all(len(r["step_times_s"]) == 1 and len(r["warmup_steps_s"]) == 1 for r in rows)
    assert rows[0]["step_vs_float"] == 1.0 and rows[0]["memory_vs_float"] == 1.0
    assert all(r["step_vs_float"] == r["step_s"] / rows[0]["step_s"] for r in rows)
    # Off CUDA the memory is the saved-for-backward storages plus weights, gradients and momentum: at least
    # three copies of the float weights.
    assert all(r["cuda_peak_bytes"] is None and r["memory_bytes"] == r["saved_and_state_bytes"] for r in rows)
    assert rows[0]["memory_bytes"] >= 3 * _param_bytes(resnet20(num_classes=10))
    table = format_net_table(rows)
    assert table.startswith("| model | step (ms) | vs float | memory: saved for bwd")
    assert all(f"| {name} |" in table for name in NET_MODELS)
    float_line = next(line for line in table.splitlines() if line.startswith("| float |"))
    assert float_line.count("| 1.00x |") == 2


def test_bench_net_rejects_an_unknown_compile_mode() -> None:
    with pytest.raises(ValueError, match="compile_mode='fast'.*none, default, reduce-overhead, max-autotune"):
        bench_net(batch=2, compile_mode="fast")


def test_bench_net_command_prints_the_network_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bench.json"
    args = ["--net", "--device", "cpu", "--batch", "2", "--rounds", "1", "--repeats", "1", "--warmup", "1"]

    results = main([*args, "--kernels", "eager", "--json", str(path)])

    out = capsys.readouterr().out
    assert out.startswith("device=cpu (") and f"torch={torch.__version__}" in out and "batch=2" in out
    assert "kernels=eager" in out and results["kernels"] == "eager"
    assert "| column/column |" in out and "| shape |" not in out
    assert "layers" not in results and [r["model"] for r in results["net"]] == list(NET_MODELS)
    assert json.loads(path.read_text())["net"][0]["model"] == "float"
