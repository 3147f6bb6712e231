"""Files: atomic writes (readers see the old file or the new one, never a partial one), checkpoint reads that
cannot run code and fall back to the previous checkpoint when the latest is corrupt, and the lock of a run
directory."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(binary file)`` on a temporary file in ``path``'s directory, then move it onto ``path``
    (``os.replace``). The file gets the mode a plain ``open()`` would give it (0644 under the usual umask 022;
    ``mkstemp`` alone makes it 0600, unreadable for colleagues)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON with :func:`atomic_write` (numpy/torch scalars and arrays, paths and other
    objects become numbers, lists and strings)."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


class CorruptFileError(ValueError):
    """A file that cannot be read as what it should be (truncated, overwritten, another kind of file)."""


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load(path)`` onto the CPU with ``weights_only=True``: tensors and plain containers only, so a file
    carrying a code payload is refused before anything in it runs (cimexp's own checkpoints hold nothing else).

    Raises:
        ValueError: the file holds other Python objects; the message names the file and what was refused.
        CorruptFileError: the file is not a complete checkpoint (truncated, random bytes, another format): any
            failure to read it other than a refused global or a missing or unreadable file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "GLOBAL" in line or "global" in line), lines[0] if lines else "")
        reason = reason or type(error).__name__
        if not _refused_global(str(error)):  # "Unsupported operand", truncated pickles: not a checkpoint at all
            torch_advice = ("weights_only", "Weights only", "Please file", "Check the documentation", "Unpickler error")
            facts = [line for line in lines if not any(text in line for text in torch_advice)]
            reason = facts[0] if facts else "its bytes are not a pickled checkpoint"
            raise CorruptFileError(f"{path}: not a readable checkpoint, the file is corrupt ({reason})") from None
        raise ValueError(
            f"refusing to load {str(path)!r}: it holds Python objects other than tensors and plain containers, "
            f"which could run code when unpickled ({reason}). cimexp checkpoints and state_dicts never do; if you "
            "trust the file, re-save its tensors with torch.save(state_dict) and load that."
        ) from None
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise  # not the file's bytes: the caller's path or rights
    except Exception as error:  # random bytes fail anywhere in the unpickler: IndexError, KeyError, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CorruptFileError(f"{path}: not a readable checkpoint, the file is corrupt ({reason})") from None


def _refused_global(message: str) -> bool:
    """Whether torch's ``weights_only`` unpickler refused a global (code) rather than failed to read the bytes."""
    return "GLOBAL" in message or "Unsupported global" in message


KEEP_PREVIOUS = ("last.ckpt",)
"""Checkpoints whose previous version is kept: the resume checkpoint (``best.ckpt`` is only ever replaced by a
better one, and evaluated, never resumed)."""
PREVIOUS_SUFFIX = ".prev"
"""``last.ckpt`` -> ``last.ckpt.prev``: the checkpoint before the latest one, kept until the latest is complete."""


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` made safe against a kill in the middle of a write: the checkpoint goes to a temporary file in
    the same folder and replaces the old one only once complete (``os.replace``), and the file it replaces is kept
    as ``<name>.prev`` if it is a resume checkpoint (:data:`KEEP_PREVIOUS`; :func:`readable_checkpoint` falls back to
    it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # same file system: os.replace is atomic
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        if path.is_file() and path.name in KEEP_PREVIOUS:
            os.replace(path, f"{path}{PREVIOUS_SUFFIX}")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def readable_checkpoint(path: str | Path) -> tuple[Path, Any]:
    """``(path, content)`` of the checkpoint at ``path``, or, when it is corrupt (a kill in the middle of an older
    writer's save, a truncated copy), of the one before it, ``<path>.prev``, with a warning naming both.

    Raises:
        CorruptFileError: neither is readable. ValueError: see :func:`read_checkpoint`.
    """
    path = Path(path)
    try:
        return path, read_checkpoint(path)
    except CorruptFileError as error:
        previous = Path(f"{path}{PREVIOUS_SUFFIX}")
        if not previous.is_file():
            raise CorruptFileError(
                f"{error}; there is no previous checkpoint ({previous.name}) to fall back to"
            ) from None
        warnings.warn(f"{error}; resuming from the checkpoint before it, {previous}", RuntimeWarning, stacklevel=2)
        return previous, read_checkpoint(previous)


class RunLockedError(RuntimeError):
    """Another process trains in the run directory; nothing was run."""


LOCK_FILE = "run.lock"


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``<run_dir>/run.lock`` (JSON: host, pid, start time) while the block runs; removed at its end.

    A lock whose process is gone (same host, no such pid) is stale: it is replaced, with a warning naming it.

    Raises:
        RunLockedError: a live process holds the lock, or one on another host (which cannot be checked from here);
            the message names it and what to do.
    """
    path = Path(run_dir) / LOCK_FILE
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is None or not _alive(holder):
                warnings.warn(f"{path}: removed a stale lock ({_describe(holder)}: no such process)", stacklevel=3)
                path.unlink(missing_ok=True)
                continue
            raise RunLockedError(
                f"{path.parent} is in use: {_describe(holder)} trains in it. Wait for it to end, or launch into "
                f"another run directory; if that process is gone, delete {path}."
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise RunLockedError(f"{path}: could not take the lock (another process keeps taking it)")
    try:
        yield path
    finally:
        if _lock_holder(path) == me:
            path.unlink(missing_ok=True)
        if created and not any(path.parent.iterdir()):  # the lock made the directory and nothing else was written
            path.parent.rmdir()


def _lock_holder(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable or half-written: a writer that died between creating and filling it
    return holder if isinstance(holder, dict) else None


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the lock's process may still run: on another host we cannot tell, so yes."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "an unreadable lock"
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')})"


@contextlib.contextmanager
def exclusive(lock_file: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if missing), waiting for other holders: for files that
    several processes update in turn (the post-training table's cells). Unlike :func:`run_lock`, which refuses a
    second run, this makes the second one wait."""
    Path(lock_file).parent.mkdir(parents=True, exist_ok=True)
    with Path(lock_file).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
