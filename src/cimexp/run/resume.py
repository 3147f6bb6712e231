"""Where a run resumes from, and under which settings it may: the checkpoint a ``ckpt_path`` names, the unfinished
checkpoint of a run directory, and the refusal of a checkpoint written under other settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cimexp.results import HASHED_CONFIG_KEY, hashed_config, refuse_changed_resume


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """Turn the ``ckpt_path`` config value into what ``Trainer.fit`` takes.

    ``None`` -> ``None`` (fresh run); ``last`` -> this run's ``checkpoints/last.ckpt`` (resume in place, with
    ``hydra.run.dir`` set to the old run directory); a run directory -> its ``checkpoints/last.ckpt``;
    a file -> itself.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
    """
    if ckpt_path is None:
        return None
    path = Path(output_dir) if str(ckpt_path) == "last" else Path(ckpt_path)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path!r}: no checkpoint at {str(path)!r}. Pass a .ckpt file, a run directory "
            "(holding checkpoints/last.ckpt), or `last` together with hydra.run.dir=<the old run directory>."
        )
    return str(path)


def unfinished_checkpoint(run_dir: str | Path) -> Path | None:
    """``run_dir/checkpoints/last.ckpt`` if it exists: a killed or stopped run resumes from it (it is written at the
    end of every epoch, inside long epochs, and when Ctrl-C or SIGTERM stops the run; ``RecoveryCheckpoint``).

    Callers check :func:`cimexp.results.reusable_results` first; a finished run also has a last.ckpt.
    """
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


CONTINUATION_KEYS = ("trainer.max_epochs", "trainer.max_steps")
"""What an explicit ``ckpt_path=last`` may change when it continues a run of this directory: its length."""


def check_resume(
    output_dir: Path, checkpoint: dict[str, Any], hashed: dict[str, Any], files: dict[str, Any], continued: bool
) -> None:
    """Refuse to resume a checkpoint of this run directory under other settings than the ones that wrote it
    (:func:`cimexp.results.refuse_changed_resume`); ``continued`` (an explicit ``ckpt_path``) may lengthen the
    run (:data:`CONTINUATION_KEYS`). A checkpoint written before checkpoints held their hashed config is compared by
    its resolved config (its files by path)."""
    old = checkpoint.get(HASHED_CONFIG_KEY)
    if old is None:
        stored = (checkpoint.get("hyper_parameters") or {}).get("config")
        if not isinstance(stored, dict):
            return  # not a checkpoint of cimexp's: nothing to compare with
        old = hashed_config(stored, {key: file for key, file in files.items() if key in hashed})
    new = dict(hashed)
    if continued:
        old = {key: value for key, value in old.items() if key not in CONTINUATION_KEYS}
        new = {key: value for key, value in new.items() if key not in CONTINUATION_KEYS}
    refuse_changed_resume(output_dir, old, new)
