"""Where a report's results files are, and how the runs table shows paths: every ``results.json`` below the run and
multirun directories given (:func:`find_results`), and paths relative to the sweep root (:func:`sweep_root`), the
deepest directory holding them all, so that committed tables hold no machine's absolute paths."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cimexp.results import RESULTS_FILE


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """Every ``results.json`` below the given run / multirun directories (or the files themselves), each once.

    Raises:
        FileNotFoundError: a path is neither a directory nor a ``results.json`` file.
    """
    found: dict[Path, None] = {}
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files = sorted(path.rglob(RESULTS_FILE))
        elif path.is_file() and path.name == RESULTS_FILE:
            files = [path]
        else:
            raise FileNotFoundError(
                f"{str(given)!r} is neither a directory nor a {RESULTS_FILE} file. Pass run or multirun "
                "directories (e.g. logs/train/multiruns/<date>) or results.json files."
            )
        found.update((file.resolve(), None) for file in files)
    return list(found)


def sweep_root(paths: Iterable[str | Path]) -> Path:
    """The directory the table's paths are relative to: the deepest directory holding every given path (a
    ``results.json`` file counts as its directory), resolved."""
    dirs = [Path(p).resolve() for p in paths]
    dirs = [d.parent if d.is_file() else d for d in dirs]
    if not dirs:
        return Path.cwd().resolve()
    return Path(os.path.commonpath(dirs))


def relative_path(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` (both resolved), with ``/`` separators; ``.`` for the root itself."""
    return Path(os.path.relpath(Path(path).resolve(), Path(root).resolve())).as_posix()


def table_path(path: Any, recorded_run_dir: Any, shown_dir: str, root: str | Path | None) -> str | None:
    """A path a record names (e.g. ``ckpt``) as the table shows it: relative to the sweep root. An absolute path is
    taken relative to the run directory the record names (``run_dir``, on the machine that wrote it) and joined to
    the run's directory in the table; without a recorded run directory, relative to ``root``."""
    if path is None:
        return None
    path = str(path)
    if not os.path.isabs(path):
        return Path(path).as_posix()
    if isinstance(recorded_run_dir, str) and os.path.isabs(recorded_run_dir):
        return Path(os.path.normpath(os.path.join(shown_dir, os.path.relpath(path, recorded_run_dir)))).as_posix()
    return relative_path(path, root) if root is not None else Path(path).as_posix()
