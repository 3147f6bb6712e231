"""Several jobs per GPU: the packing launcher preset and the GPU each job of a multirun takes."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from cimexp.run.config import compose, packed_jobs, register_resolvers
from cimexp.run.trainer import packed_devices


@pytest.mark.parametrize(
    ("accelerator", "devices", "job_num", "gpus", "expected"),
    [
        ("gpu", 1, 5, 4, [1]),  # job 5 of a sweep on 4 GPUs: GPU 1
        ("gpu", 1, 3, 4, [3]),
        ("cuda", 1, 0, 2, [0]),
        ("gpu", 1, None, 4, 1),  # a single run: Lightning's choice
        ("gpu", 1, 7, 1, 1),  # one GPU visible: nothing to spread
        ("gpu", 2, 7, 4, 2),  # several GPUs per job (DDP): as configured
        ("cpu", 1, 7, 4, 1),
    ],
)
def test_jobs_of_a_multirun_spread_over_the_gpus_round_robin(accelerator, devices, job_num, gpus, expected) -> None:
    trainer = OmegaConf.create({"accelerator": accelerator, "devices": devices})
    assert packed_devices(trainer, job_num, gpus) == expected


def test_the_packing_launcher_runs_jobs_per_gpu_at_once(monkeypatch) -> None:
    register_resolvers()
    cfg = compose("train", ["hydra/launcher=gpu_pack", "trainer=gpu"], hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    assert cfg.hydra.launcher.n_jobs == 8  # 2 per visible GPU
    assert packed_jobs(3) == 12
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    assert packed_jobs(3) == 3  # no GPU: the jobs still run, per_gpu at once
    with pytest.raises(ValueError, match="jobs per GPU 0"):
        packed_jobs(0)


def test_compiled_kernels_are_cached_for_the_runs_launched_after(monkeypatch, tmp_path) -> None:
    """``paths.compile_cache`` holds inductor's and Triton's caches unless the environment names them already."""
    import cimexp
    from cimexp.run.config import use_compile_cache

    monkeypatch.setitem(cimexp.COMPILE_CACHE_ENV, "TORCHINDUCTOR_CACHE_DIR", None)  # unset by the user
    monkeypatch.setitem(cimexp.COMPILE_CACHE_ENV, "TRITON_CACHE_DIR", "/elsewhere")  # set by the user
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_default")  # what inductor writes when asked
    monkeypatch.setenv("TRITON_CACHE_DIR", "/elsewhere")
    use_compile_cache(str(tmp_path))
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == "/elsewhere"
    assert compose("train", []).paths.compile_cache is None  # PyTorch's default folder, shared on this machine
