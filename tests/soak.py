"""Fault-injection soak: a 6-job synthetic sweep killed with SIGKILL at random moments, relaunched after each kill,
must end with every job's weights and metrics equal to those of the same sweep run without interruption.

    python tests/soak.py --kills 20 --seed 0 --out /tmp/soak      # make soak

The kill moments are drawn with ``--seed`` (uniform between ``--min-wait`` and ``--max-wait`` seconds after each
launch, so that kills land during start-up, training, checkpoint writes and validation alike). Every launch is the
same command; finished jobs are skipped and unfinished ones resume from ``last.ckpt`` (a stale ``run.lock`` of the
killed process is replaced). A copy of the sweep that finishes before all kills have landed is compared, and the
next kills go to a new copy. Prints a JSON summary (kills, launches, copies, jobs, seconds) and exits 1 on any
difference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

SWEEP = [
    "data=synthetic",
    "data.image_size=8",
    "data.train_size=48",
    "data.val_size=16",
    "data.batch_size=8",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=csv",
    "checkpoint.every_n_steps=1",  # a checkpoint after every step: kills inside epochs resume inside them
    "granularity=layer_column,column_column",
    "seed=0,1,2",
    "hydra.sweep.subdir=${hydra.job.override_dirname}",
]
"""6 jobs (2 schemes x 3 seeds), 12 steps each, in job directories named after their overrides."""


def launch(sweep_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "cimexp.train", "-m", *SWEEP, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def run_to_end(sweep_dir: Path, timeout: float = 1800) -> None:
    process = launch(sweep_dir)
    if process.wait(timeout=timeout) != 0:
        raise RuntimeError(f"the sweep into {sweep_dir} exited with {process.returncode}")


def soak(out: Path, kills: int, seed: int, min_wait: float, max_wait: float) -> dict:
    """Run the reference sweep, then killed copies of it until ``kills`` kills have landed; compare each copy with
    the reference. Returns the summary.

    A copy is one sweep folder, relaunched after each kill until a launch finishes it (then once more, which must
    find nothing left to do); when a copy finishes before all kills have landed, the next copy starts in a new
    folder, so that a fast machine meets as many kills as a slow one.
    """
    rng = random.Random(seed)
    started = time.monotonic()
    run_to_end(out / "reference")
    reference_s = time.monotonic() - started
    killed, launches, copies, differences, soak_started = 0, 0, 0, [], time.monotonic()
    while killed < kills:
        copy = out / f"soak-{copies}"
        copies += 1
        while True:
            process = launch(copy)
            launches += 1
            try:  # once every kill has landed, this copy runs to its end
                process.wait(timeout=rng.uniform(min_wait, max_wait) if killed < kills else None)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                killed += 1
                continue
            if process.returncode != 0:
                raise RuntimeError(f"a relaunch into {copy} exited with {process.returncode}")
            break
        run_to_end(copy)
        launches += 1
        differences += [f"{copy.name}: {difference}" for difference in compare(out / "reference", copy)]
    return {
        "kills": killed,
        "launches": launches,
        "copies": copies,
        "jobs": len(job_dirs(out / "reference")),
        "reference_s": round(reference_s, 1),
        "soak_s": round(time.monotonic() - soak_started, 1),
        "seed": seed,
        "differences": differences,
    }


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.glob("*/results.json"))


def compare(reference: Path, soaked: Path) -> list[str]:
    """What differs between the two sweeps: job directories, final metrics, weights of the final checkpoints."""
    names = [p.name for p in job_dirs(reference)]
    differences = [] if names == [p.name for p in job_dirs(soaked)] else [f"jobs: {names} vs {job_dirs(soaked)}"]
    for name in names:
        a, b = (json.loads((d / name / "results.json").read_text()) for d in (reference, soaked))
        for key in ("status", "epochs", "global_step", "final", "config_hash"):
            if _untimed(a.get(key)) != _untimed(b.get(key)):
                differences.append(f"{name}: {key} {a.get(key)} vs {b.get(key)}")
        sa, sb = (
            torch.load(d / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
            for d in (reference, soaked)
        )
        keys = sorted(sa.keys() | sb.keys())
        differences += [f"{name}: weights {key}" for key in keys if not _same(sa.get(key), sb.get(key))]
    return differences


def _untimed(value: object) -> object:
    """A metrics dict without the wall-clock times (``time/*``), which no two runs share."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if not str(k).startswith("time/")}
    return value


def _same(a: object, b: object) -> bool:
    """Equal tensors (bit for bit), or equal containers of them (a layer's extra state is a dict)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-wait", type=float, default=2.0)
    parser.add_argument("--max-wait", type=float, default=15.0)
    parser.add_argument("--out", type=Path, required=True, help="an empty or new folder")
    args = parser.parse_args(argv)
    summary = soak(args.out.resolve(), args.kills, args.seed, args.min_wait, args.max_wait)
    print(json.dumps(summary, indent=2))
    return 1 if summary["differences"] else 0


if __name__ == "__main__":
    sys.exit(main())
