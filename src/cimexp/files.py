"""Files: atomic writes (readers see the old file or the new one, never a partial one) and checkpoint reads that
cannot run code."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Callable
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


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load(path)`` onto the CPU with ``weights_only=True``: tensors and plain containers only, so a file
    carrying a code payload is refused before anything in it runs (cimexp's own checkpoints hold nothing else).

    Raises:
        ValueError: the file holds other Python objects; the message names the file and what was refused.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"refusing to load {str(path)!r}: it holds Python objects other than tensors and plain containers, "
            f"which could run code when unpickled ({reason}). cimexp checkpoints and state_dicts never do; if you "
            "trust the file, re-save its tensors with torch.save(state_dict) and load that."
        ) from None
