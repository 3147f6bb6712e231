"""`make gpu-check`: everything that needs a GPU, in one run, ending with one summary table.

1. two epochs of the paper recipe (``experiment=paper_resnet20_cifar10``) on synthetic CIFAR-sized data
   (``data=synthetic data.train_size=50000 data.val_size=10000``): column/column on the default path
   (``model.compile=auto``: CUDA graphs on one GPU), then the packing table (paper runs per GPU-hour with 1, 2, 4, 8
   such jobs on the GPU at once), then column/column eager (``model.compile=false``), float, column/column with the
   fused Triton kernel (``model.kernels=triton``, eager) and the default path again (it loads its kernels from
   PyTorch's compile cache). Epoch 2 is the steady state; epoch 1 minus epoch 2 is what warm-up (kernel selection,
   compilation) costs once per run. These come first, so the budget never skips them;
2. the ``cuda``-marked tests (tests/test_cuda.py: the layer against the literal simulator on CUDA, ``trainer=gpu``
   and ``bf16-mixed`` fits, TF32);
3. ``python -m cimexp.bench --device cuda --all`` (layer and ResNet-20 tables, eager), ``--net --kernels triton``
   and ``--net --compile reduce-overhead`` (CUDA graphs).

Every step runs as a subprocess with its own time limit; the whole check stops starting new steps once
``--budget`` seconds are spent, so a slow step cannot lose the summary. Logs and JSON land in ``--out`` (default
``$OUT`` where set, else ``logs/gpu_check``). ``--small`` shrinks every size for a dry run on a CPU. Run again on the
same machine, the check continues where its budget stopped it: the epoch and packing runs keep their directories
(``/tmp/gpu_check_runs``), so a finished run is read back, not trained again, and an unfinished one resumes from
its last checkpoint where it wrote one (its epoch 1 then holds the first attempt's warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class Check:
    def __init__(self, out: Path, budget_s: float) -> None:
        self.out = out
        self.deadline = time.monotonic() + budget_s
        self.rows: list[tuple[str, str, str]] = []

    def run(self, name: str, cmd: list[str], limit_s: float, env: dict[str, str] | None = None) -> str | None:
        """Run ``cmd`` (output to ``<out>/<name>.log`` and echoed); ``None`` if skipped, failed or timed out."""
        left = self.deadline - time.monotonic()
        if left < 30:
            self.rows.append((name, "skipped", "out of time budget"))
            return None
        limit = min(limit_s, left)
        print(f"\n=== {name}: {' '.join(cmd)} (limit {limit:.0f} s)", flush=True)
        start = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit, env={**os.environ, **(env or {})}
            )
            output, code = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as error:
            parts = [p.decode(errors="replace") if isinstance(p, bytes) else p for p in (error.stdout, error.stderr)]
            output, code = "".join(p or "" for p in parts) + f"\nTIMEOUT after {limit:.0f} s", -1
        took = time.monotonic() - start
        (self.out / f"{name}.log").write_text(output)
        print(output[-4000:], flush=True)
        if code != 0:
            self.rows.append((name, f"FAILED (exit {code})", f"{took:.0f} s, see {name}.log"))
            return None
        self.rows.append((name, "ok", f"{took:.0f} s"))
        return output


def _epoch_times(run_dir: Path) -> tuple[float, float, str] | None:
    """``(epoch 1, epoch 2, what ran)`` from a run's results.json: training seconds of its first two epochs and
    its ``compile`` (``eager`` for null)."""
    results = json.loads((run_dir / "results.json").read_text())
    cum = [r["cum_train_time_s"] for r in results.get("history", []) if "cum_train_time_s" in r]
    if len(cum) < 2:
        return None
    return cum[0], cum[1] - cum[0], results.get("compile") or "eager"


PAPER_STEPS = 200 * 391
"""Optimizer steps of one paper run: 200 epochs of 391 batches of 128 CIFAR-10 images."""
PACKING = (1, 2, 4, 8)
"""Concurrent column/column jobs on one GPU whose throughput the check measures."""


def _packing(check: Check, py: str, recipe: list[str], small: bool, env: dict[str, str]) -> dict[int, float]:
    """Paper runs per GPU-hour with ``n`` column/column jobs at once on the GPU, for ``n`` in :data:`PACKING`:
    ``n`` processes each train 2 epochs of 100 steps (``data.train_size=12800``); their steady epochs (the
    second) give the summed steps per second, divided into :data:`PAPER_STEPS`."""
    sizes = ["data.train_size=512", "data.val_size=128", "data.batch_size=64"] if small else []
    sizes = sizes or ["data.train_size=12800", "data.val_size=1280"]
    replaced = {override.split("=")[0] for override in sizes}
    jobs = [*(o for o in recipe if o.split("=")[0] not in replaced), *sizes]
    table: dict[int, float] = {}
    for n in PACKING:
        dirs = [Path("/tmp/gpu_check_runs") / f"pack{n}_{i}" for i in range(n)]
        script = " & ".join(
            " ".join([py, "-m", "cimexp.train", *jobs, f"hydra.run.dir={d}", f"seed={i}"]) for i, d in enumerate(dirs)
        )
        if check.run(f"packing_{n}", ["bash", "-c", f"{script} & wait"], 120 + 40 * n, env) is None:
            break
        try:  # `wait` exits 0 whatever the jobs did: a job without results failed
            epochs = [_epoch_times(d) for d in dirs]
        except (OSError, ValueError) as error:
            check.rows.append((f"packing_{n}", "FAILED", f"a job wrote no results ({error})"))
            break
        if any(e is None for e in epochs):
            break
        steps = 100 if not small else 8
        steps_per_s = sum(steps / second for _, second, _ in epochs)
        table[n] = 3600 * steps_per_s / PAPER_STEPS
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "logs" / "gpu_check")))
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole check")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes: a dry run of the script on a CPU")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out, args.budget)
    py = sys.executable
    env = {"PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}

    import torch  # after argparse: --help stays fast

    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    print(f"card: {card}; torch {torch.__version__}", flush=True)

    results: dict[str, Any] = {"card": card, "torch": torch.__version__, "tables": {}, "epochs": {}}

    def report() -> None:  # after every step: a run stopped by its time limit still leaves the summary so far
        text = _summary(check.rows, results)
        (args.out / "summary.md").write_text(text + "\n")

    size = ["data.train_size=512", "data.val_size=128", "data.batch_size=64"] if args.small else []
    recipe = [
        "experiment=paper_resnet20_cifar10",
        "data=synthetic",
        "data.train_size=50000",
        "data.val_size=10000",
        "data.num_workers=4",
        *size,
        "trainer.max_epochs=2",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "telemetry.every_n_steps=0",
        "telemetry.validation=false",
        *(["trainer=cpu"] if args.device == "cpu" else []),
    ]
    # First what the README's paper-run time and the packing table come from, so the budget never skips them.
    for name, extra in {
        "column/column (default: model.compile=auto, CUDA graphs)": [],
        "column/column eager (model.compile=false)": ["model.compile=false"],
        "float (default)": ["cim=none"],
        "column/column fused kernel (model.kernels=triton, eager)": ["model.kernels=triton", "model.compile=false"],
        # the default again: its epoch 1 is the warm-up of a run whose kernels are in the compile cache
        "column/column (default), cached": [],
    }.items():
        slug = re.sub(r"\W+", "_", name).strip("_")
        run_dir = Path("/tmp/gpu_check_runs") / slug
        cmd = [py, "-m", "cimexp.train", *recipe, *extra, f"hydra.run.dir={run_dir}"]
        # compiled runs compile up to four graphs in epoch 1 (training and validation, full and last partial batch)
        limit = 240 if "model.compile=false" in extra or "cim=none" in extra else 420
        if check.run(f"epoch_{slug}", cmd, limit, env) is not None:
            results["epochs"][name] = _epoch_times(run_dir)
        report()
        if name.startswith("column/column (default: "):
            results["packing"] = _packing(check, py, recipe, args.small, env)
            report()

    tests = check.run("cuda_tests", [py, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-rs"], 150, env)
    results["tests"] = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|error).*?)\s*=*$", tests or "", re.M)
    report()

    batch = ["--batch", "16", "--rounds", "1"] if args.small else []
    bench = [py, "-m", "cimexp.bench", "--device", args.device, *batch]
    output = check.run("bench", [*bench, "--all", "--json", str(args.out / "bench.json")], 100, env)
    results["tables"]["bench (eager)"] = output
    report()
    fused = ["--net", "--kernels", "triton", "--models", "float,column/column,layer/column", "--warmup", "3"]
    output = check.run("bench_triton", [*bench, *fused, "--json", str(args.out / "bench_triton.json")], 150, env)
    results["tables"]["bench --net --kernels triton (fused kernel)"] = output
    report()
    compiled = ["--net", "--compile", "reduce-overhead", "--models", "float,column/column", "--warmup", "3"]
    output = check.run("bench_compiled", [*bench, *compiled, "--json", str(args.out / "bench_compiled.json")], 200, env)
    results["tables"]["bench --net --compile reduce-overhead"] = output
    report()
    print("\n" + _summary(check.rows, results), flush=True)


def _summary(rows: list[tuple[str, str, str]], results: dict[str, Any]) -> str:
    lines = [f"# gpu-check on {results['card']} (torch {results['torch']})", "", "| step | result | time |"]
    lines += ["|---|---|---|", *(f"| {name} | {result} | {took} |" for name, result, took in rows), ""]
    lines += [f"cuda tests: {'; '.join(results.get('tests', [])) or 'no summary line'}", ""]
    for name, output in results["tables"].items():
        table = [line for line in (output or "").splitlines() if line.startswith(("|", "device=", "network:"))]
        lines += [f"{name}:", *table, ""]
    lines += [
        "| paper recipe (391 steps of 128 per epoch) | ran (results.json `compile`) | epoch 1 (s, incl. warm-up) "
        "| epoch 2 (s) |",
        "|---|---|---|---|",
    ]
    for name, times in results["epochs"].items():
        first, second, ran = times if times else (float("nan"), float("nan"), "-")
        lines.append(f"| {name} | {ran} | {first:.1f} | {second:.1f} |")
    lines += ["", "Paper run (200 epochs) estimated from epoch 2 plus epoch 1's warm-up, training only:"]
    for name, times in results["epochs"].items():
        if times:
            lines.append(f"- {name}: {(times[0] + 199 * times[1]) / 60:.1f} min")
    if results.get("packing"):
        lines += ["", "| column/column jobs at once on one GPU | paper runs per GPU-hour |", "|---|---|"]
        lines += [f"| {n} | {rate:.2f} |" for n, rate in results["packing"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
