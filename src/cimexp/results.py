"""The ``results.json`` of a run: its one definition, used by both writers (``cimexp.train``, ``cimexp.evaluate``
and the :class:`~cimexp.run.callbacks.ResultsWriter` callback), the report's reader (``cimexp.report.collect``) and the
tests.

A record is a JSON object. Every record starts with the header (:data:`HEADER`): ``schema_version``, ``kind``
(``train`` | ``evaluate``), ``status``, ``config_hash``, ``config`` (the hashed part of the resolved config, flat
dotted keys) and ``versions`` (python, torch, lightning, cimexp). The fields that follow depend on the kind:
:data:`TRAIN_FIELDS`, :data:`EVALUATE_FIELDS`. Metrics have one name each (:data:`METRICS`); files written before
this schema (``schema_version`` absent: version 1) are read through :func:`upgrade`, which renames the old names.

No stale reuse: a run directory that holds a finished record is reused (a re-launched sweep skips its finished
jobs) only when the record's ``config`` equals the new run's, compared without the keys that cannot change results
(:data:`HASH_EXCLUDED_KEYS`); otherwise :func:`reusable_results` refuses with :class:`StaleRunError`, naming the keys
that differ.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import platform
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 2
"""Version of the format below. Files without ``schema_version`` are version 1 (before this module): no header
beyond ``kind``/``status``, ``val/acc_top5`` in evaluation records."""

KINDS = ("train", "evaluate")
STATUSES = ("running", "finished", "diverged", "interrupted")
"""``running``: written after each epoch while training; ``finished``; ``diverged``: ran to the end with a
non-finite loss or accuracy; ``interrupted``: stopped early (Ctrl-C, SIGTERM)."""
DONE_STATUSES = ("finished", "diverged")
"""Statuses of a run that is over: launched again into its directory, it is not run again."""

METRICS = {
    "val/acc": "top-1 accuracy on the evaluation (test) split, a fraction in [0, 1]",
    "val/acc5": "top-5 accuracy, a fraction in [0, 1]",
    "val/loss": "mean cross-entropy (never label-smoothed)",
}
"""The validation metrics every record reports under these names (training: ``final``, ``history``; evaluation:
``clean``, ``final``). Training records also hold the run's other logged metrics (``train/loss``, ``val/acc_best``,
``lr``, ...) in ``final``."""
RENAMED_METRICS = {"val/acc_top5": "val/acc5"}
"""Old metric name -> its name now; :func:`upgrade` renames them in files of earlier versions."""

HEADER = {
    "schema_version": f"format version ({SCHEMA_VERSION}; absent: 1)",
    "kind": "train | evaluate",
    "status": " | ".join(STATUSES),
    "config_hash": "16 hex digits of the SHA-256 of `config`",
    "config": "the resolved config without HASH_EXCLUDED_KEYS, flat dotted keys; files named in it by content",
    "versions": "python, torch, lightning, cimexp",
}
"""The fields every finished record starts with."""

_COMMON_FIELDS = {
    "run_name": "the job's command-line overrides, comma-joined (`default` without any)",
    "sweep_group": "the sweep directory's name in a multirun, else null",
    "run_dir": "the run directory (absolute, on the machine that ran it)",
    "overrides": "the command-line overrides",
    "model": "the model (group choice, e.g. resnet20)",
    "data": "the data set (group choice, e.g. cifar10)",
    "cim": "the CIM layer settings, null for a float network",
    "schedule": "QAT schedule: name, stage1_epochs, stage2_started_epoch",
    "adc_errors": "ADC non-idealities of the accuracy measurement",
    "variation": "training: {train_sigma, level}; evaluation: {sigma, seed, level} of the chip instance "
    "(level: weight = paper eq. 5, one factor per weight; cell = one per cell)",
    "seed": "the training seed",
    "final": "metrics at the end (METRICS names)",
    "cim_summary": "per-layer and total CIM cost (arrays, dequantization ops, ADC conversions, energy, area)",
    "wall_time_s": "seconds the run took",
}
TRAIN_FIELDS = {
    **_COMMON_FIELDS,
    "choices": "Hydra group choices",
    "git": "commit and dirty flag of the code that ran",
    "epochs": "epochs completed",
    "global_step": "optimizer steps",
    "train_time_s": "cumulative training time without validation",
    "best": "best val/acc with its epoch and cum_train_time_s",
    "checkpoints": "paths of best.ckpt and last.ckpt",
    "compile": "the torch.compile mode the network trained under (model.compile resolved on the run's device; "
    "absent before 2026-12-07), null: eager",
    "psum_telemetry": "per-layer ADC clip rate and code utilisation of the last validation epoch",
    "history": "one record per validated epoch: epoch, step, cum_train_time_s, val/* metrics",
}
"""The fields of a ``train`` record after the header."""
EVALUATE_FIELDS = {
    **_COMMON_FIELDS,
    "ckpt": "the checkpoint evaluated (absolute path)",
    "clean": "metrics without variation and ADC errors (METRICS names)",
    "train_results": "the training run's record without history, or null",
}
"""The fields of an ``evaluate`` record after the header."""
FIELDS = {"train": TRAIN_FIELDS, "evaluate": EVALUATE_FIELDS}

HASH_EXCLUDED_KEYS = (
    "hydra",  # Hydra's own node: run and sweep directories, job logging (never in the resolved config anyway)
    "paths",  # where data, logs and this run's files go
    "logger",  # what records the run, not what it computes
    "task_name",  # names the log directory
    "tags",  # W&B tags
    "ckpt_path",  # where training resumes from; a continued run is told apart by trainer.max_epochs
    "optimized_metric",  # what the Hydra main returns to a sweeper
    "clean_cache_dir",  # evaluation: where clean accuracies are cached (the cache checks its own key)
    "data.data_dir",  # where the data set is read from (moving it changes nothing)
    "data.download",  # whether a missing data set may be downloaded
    "trainer.default_root_dir",  # a path
    "trainer.enable_*",  # progress bar, model summary, checkpointing: output, not arithmetic
    "trainer.log_every_n_steps",  # logging cadence
    "trainer.profiler",  # timing report
    "checkpoint",  # how often the recovery checkpoint is written (a resumed run ends as the uninterrupted one)
    "callbacks.recovery_checkpoint.every_*",  # the same, where the callback reads it
    "callbacks.*.dirpath",  # checkpoint directory
    "callbacks.*.path",  # results.json's path
)
"""Config keys (dotted, ``*`` wildcards; a key covers the keys below it) left out of ``config`` and
``config_hash`` because they cannot change what a run computes. Everything else counts, including settings that
change only floating-point rounding (``model.kernels``, ``model.compile``, ``trainer.accelerator``,
``trainer.precision``, ``data.num_workers``, which draws augmentation per worker, ``data.eval_batch_size``) and
those that change only what results.json holds (``telemetry``, ``cost``)."""


HASHED_CONFIG_KEY = "hashed_config"
"""Checkpoint entry holding the hashed config of the run that wrote it (:func:`hashed_config`)."""


class StaleRunError(FileExistsError):
    """A run directory holds a finished run of another config; nothing was run."""


def refuse_changed_resume(run_dir: str | Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Refuse to resume the unfinished run of ``run_dir``, whose checkpoint was written under the hashed config
    ``old``, under ``new``: it would record settings that never ran for the part already trained.

    Raises:
        StaleRunError: the configs differ; one line naming the keys (old -> new) and how to start a new run.
    """
    differences = config_differences(old, new)
    if differences:
        shown = "; ".join(differences[:10]) + (f"; ... ({len(differences) - 10} more)" if len(differences) > 10 else "")
        raise StaleRunError(
            f"{Path(run_dir)} holds an unfinished run of another config ({len(differences)} keys differ, old -> new: "
            f"{shown}); resuming it would record settings that never ran, so nothing ran. Relaunch with its settings "
            f"to resume it, or launch into a new run directory (hydra.run.dir=<new dir>), or delete {Path(run_dir)}."
        )


def versions() -> dict[str, str]:
    """``{"python", "torch", "lightning", "cimexp"}`` versions of this process."""
    import lightning
    import torch

    import cimexp

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "cimexp": cimexp.__version__,
    }


DATA_DIGEST_PREFIX = "data.sha256."
"""Keys of a hashed config that identify the data by content: ``data.sha256.<file name>``."""


def hashed_config(
    config: Mapping[str, Any],
    files: Mapping[str, str | Path | None] | None = None,
    data_files: Iterable[str | Path] = (),
) -> dict[str, Any]:
    """The part of a resolved config that decides a run's results: flat ``{dotted key: value}`` without
    :data:`HASH_EXCLUDED_KEYS`, as it reads back from JSON.

    Args:
        config: the resolved config as a plain dict (``cimexp.run.provenance.resolved_config``).
        files: dotted key -> the file it names (e.g. ``{"model.init_from": ...}``; evaluation: ``{"ckpt": <the
            .ckpt file>}``). Such a key's value becomes ``"<file name> sha256:<16 hex>"``, so a file replaced in
            place counts as a change and the same file under another path does not. A ``None`` or missing file
            keeps the value.
        data_files: the data set's files (``ImageDataModule.data_files``); each adds ``data.sha256.<name>``, so
            the same path holding other data (relabelled, another copy) counts as a change.
    """
    flat = {key: value for key, value in _flatten(config).items() if not _excluded(key)}
    for key, file in (files or {}).items():
        if key in flat and file is not None and Path(file).is_file():
            flat[key] = f"{Path(file).name} sha256:{_file_digest(str(Path(file).resolve()))}"
    for file in data_files:
        flat[f"{DATA_DIGEST_PREFIX}{Path(file).name}"] = _file_digest(str(Path(file).resolve()))
    return json.loads(json.dumps(flat, sort_keys=True, default=str))


def config_hash(hashed: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of a :func:`hashed_config`."""
    return hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()[:16]


MOVED_TARGETS = {"cimexp.callbacks.": "cimexp.run.callbacks."}
"""Where the ``_target_`` of a config written by an earlier version now lives (old prefix -> new): the callbacks
moved into :mod:`cimexp.run.callbacks`. A run recorded under the old name is the same run."""


RETIRED_COPIES = tuple(
    f"cim.{name}"
    for name in (
        "w_bits", "a_bits", "cell_bits", "adc_bits", "array_size", "weight_granularity", "psum_granularity",
        "psum_quant", "weight_grad_scale", "act_grad_scale", "psum_grad_scale", "weight_splits", "slice_gradient",
    )
)  # fmt: skip
"""Keys that configs written by an earlier version held as copies of a setting's one key (``cim.adc_bits`` of
``adc.bits``, always equal to it): a config without them is the same run."""


RENAMED_KEYS = {"scheduler": "lr_schedule"}
"""Config keys renamed since an earlier version (old first component -> new): the learning-rate schedule's group
was ``scheduler`` in 0.1. A run recorded under the old name is the same run; the command line still reads the old
name in 0.2, with a warning (:func:`cimexp.run.entry.renamed_overrides`)."""


def _same_on_a_cpu(key: str, old: Any, new: Mapping[str, Any]) -> bool:
    """Whether ``old`` (a value of an earlier version's config) ran what ``new`` runs: ``model.compile`` was
    ``false`` by default until ``auto`` replaced it (2026-12-07), and ``auto`` runs eagerly on a CPU."""
    return (
        key == "model.compile" and old is False and new.get(key) == "auto" and new.get("trainer.accelerator") == "cpu"
    )


def current_key(key: str) -> str:
    """A flat config key under its current name (:data:`RENAMED_KEYS`): ``scheduler.T_max`` -> ``lr_schedule.T_max``."""
    head, dot, rest = key.partition(".")
    return RENAMED_KEYS.get(head, head) + dot + rest


def _current_target(value: Any) -> Any:
    for old, new in MOVED_TARGETS.items():
        if isinstance(value, str) and value.startswith(old):
            return new + value[len(old) :]
    return value


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``["optimizer.lr: 0.1 -> 0.5", ...]`` for every key of two flat configs whose value differs (sorted;
    ``<absent>`` where one lacks the key). Keys of :data:`HASH_EXCLUDED_KEYS` are ignored; ``old`` is read with its
    keys and targets under their current names (:data:`RENAMED_KEYS`, :data:`MOVED_TARGETS`) and without the
    copies it may hold (:data:`RETIRED_COPIES`); the data digests are ignored when ``old`` has none (written before
    they were recorded: it is compared by the data's settings); ``model.compile: false`` before ``auto`` became the
    default is ``auto`` on a CPU."""
    missing = object()
    old = {
        current_key(key): _current_target(value)
        for key, value in old.items()
        if key not in RETIRED_COPIES or key in new
    }
    if not any(key.startswith(DATA_DIGEST_PREFIX) for key in old):
        new = {key: value for key, value in new.items() if not key.startswith(DATA_DIGEST_PREFIX)}

    def text(value: Any) -> str:
        return "<absent>" if value is missing else json.dumps(value)

    keys = sorted(k for k in old.keys() | new.keys() if not _excluded(k))
    return [
        f"{key}: {text(old.get(key, missing))} -> {text(new.get(key, missing))}"
        for key in keys
        if text(old.get(key, missing)) != text(new.get(key, missing)) and not _same_on_a_cpu(key, old.get(key), new)
    ]


def make_record(kind: str, status: str, hashed: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """A results.json record: the header, then ``fields`` in the order of the kind's field list.

    Raises:
        ValueError: an unknown kind or status, or ``fields`` other than the kind's (:data:`FIELDS`): a writer that
            adds a field declares it here first.
    """
    if kind not in KINDS:
        raise ValueError(f"invalid results kind={kind!r}; valid choices: {', '.join(KINDS)}")
    if status not in STATUSES:
        raise ValueError(f"invalid results status={status!r}; valid choices: {', '.join(STATUSES)}")
    declared = FIELDS[kind]
    if fields.keys() != declared.keys():
        unknown, missing = sorted(fields.keys() - declared.keys()), sorted(declared.keys() - fields.keys())
        raise ValueError(
            f"a {kind} record of results.json with undeclared fields {unknown} and without {missing}: declare its "
            f"fields in cimexp.results.{kind.upper()}_FIELDS"
        )
    header = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "status": status,
        "config_hash": config_hash(hashed),
        "config": dict(hashed),
        "versions": versions(),
    }
    return {**header, **{name: fields[name] for name in declared}}


def running_record(history: list[dict[str, Any]]) -> dict[str, Any]:
    """What a training run writes after each validated epoch, before its final record: status ``running`` and the
    per-epoch ``history`` so far."""
    return {"schema_version": SCHEMA_VERSION, "kind": "train", "status": "running", "history": history}


def upgrade(record: Any) -> dict[str, Any]:
    """A parsed results.json in the current schema's names: ``kind`` defaults to ``train`` (version 1), old metric
    names (:data:`RENAMED_METRICS`) are renamed in ``final``, ``clean``, ``best`` and ``history`` (and in an
    evaluation's ``train_results``). Returns a new dict; the fields themselves are not checked.

    Raises:
        TypeError: not a JSON object.
        ValueError: a ``schema_version`` newer than this code reads, or an unknown ``kind``.
    """
    if not isinstance(record, dict):
        raise TypeError(f"the file holds a JSON {type(record).__name__}, not an object")
    record = dict(record)
    version = record.setdefault("schema_version", 1)
    if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise ValueError(
            f"schema_version={version!r}: this cimexp reads results.json versions 1 to {SCHEMA_VERSION}; "
            "update cimexp to read it"
        )
    kind = record.setdefault("kind", "train")
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
    for part in ("final", "clean", "best"):
        if isinstance(record.get(part), dict):
            record[part] = _renamed(record[part])
    if isinstance(record.get("history"), list):
        record["history"] = [_renamed(r) if isinstance(r, dict) else r for r in record["history"]]
    if isinstance(record.get("train_results"), dict):
        record["train_results"] = upgrade(record["train_results"])
    return record


def read_results(path: str | Path) -> dict[str, Any]:
    """Read a results.json through :func:`upgrade`.

    Raises:
        OSError: unreadable. ValueError: not JSON (``json.JSONDecodeError``) or see :func:`upgrade`.
        TypeError: not a JSON object.
    """
    return upgrade(json.loads(Path(path).read_text()))


def finished_results(run_dir: str | Path, kind: str) -> dict[str, Any] | None:
    """The results.json of ``run_dir`` (upgraded) if it records a run of ``kind`` that is over (:data:`DONE_STATUSES`:
    a run that ran to its end with a non-finite loss counts); ``None`` when the file is missing, unreadable, of
    another kind, or ``running`` / ``interrupted``."""
    try:
        record = read_results(Path(run_dir) / RESULTS_FILE)
    except (OSError, ValueError, TypeError):
        return None
    if record.get("status") not in DONE_STATUSES or record["kind"] != kind:
        return None
    return record


def reusable_results(
    run_dir: str | Path,
    kind: str,
    config: Mapping[str, Any],
    files: Mapping[str, str | Path | None] | None = None,
    data_files: Iterable[str | Path] = (),
) -> dict[str, Any] | None:
    """The finished record of ``run_dir`` if it was produced by the same config; ``None`` if there is none.

    The record's ``config`` is compared with :func:`hashed_config` of ``config`` and ``files`` (both without
    :data:`HASH_EXCLUDED_KEYS`). A record of schema version 1 has no ``config``: the run directory's
    ``config_resolved.yaml`` stands in for it (file keys compared by path where the path is the same).

    Raises:
        StaleRunError: the run directory holds a finished run of another config, or one whose config is unknown;
            the message names the keys that differ (old -> new) and how to proceed.
    """
    record = finished_results(run_dir, kind)
    if record is None:
        return None
    new = hashed_config(config, files, data_files)
    stored = record.get("config")
    old = stored if isinstance(stored, dict) else _legacy_config(Path(run_dir), config, files)
    differences = config_differences(old, new) if old is not None else ["(no recorded config to compare with)"]
    if not differences:
        return record
    shown = "; ".join(differences[:10]) + (f"; ... ({len(differences) - 10} more)" if len(differences) > 10 else "")
    more = (
        " To continue this run on purpose, add ckpt_path=last (e.g. with trainer.max_epochs=<more>)."
        if kind == "train"
        else ""
    )
    raise StaleRunError(
        f"{Path(run_dir)} holds a finished {kind} run of another config ({len(differences)} keys differ, old -> new: "
        f"{shown}). Its results were not reused and nothing ran. Launch into a new run directory "
        f"(hydra.run.dir=<new dir>, or hydra.sweep.dir=<new dir> for a sweep), or delete {Path(run_dir)} to run it "
        f"there again.{more}"
    )


def _legacy_config(
    run_dir: Path, config: Mapping[str, Any], files: Mapping[str, str | Path | None] | None
) -> dict[str, Any] | None:
    """The hashed config of a version-1 run from its ``config_resolved.yaml``; a file key with the same path as now
    is taken to name the same file. ``None`` when the file is missing or unreadable."""
    try:
        old = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(old, dict):
        return None
    old_flat, new_flat = _flatten(old), _flatten(config)
    same = {key: file for key, file in (files or {}).items() if old_flat.get(key) == new_flat.get(key)}
    return hashed_config(old, same)


def _flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; an empty mapping stays a value, lists are values."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = dict(value) if isinstance(value, Mapping) else value
    return flat


def _excluded(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, p) or fnmatch.fnmatchcase(key, f"{p}.*") for p in HASH_EXCLUDED_KEYS)


def _renamed(metrics: dict[str, Any]) -> dict[str, Any]:
    return {RENAMED_METRICS.get(key, key): value for key, value in metrics.items()}


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's content (hex), read in 1 MiB blocks: the one hash of files that cimexp records."""
    stat = Path(path).stat()
    return _file_sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _file_sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_digest(path: str) -> str:
    """16 hex digits of a file's SHA-256 (cached per path, size and modification time)."""
    return file_sha256(path)[:16]


def run_status(interrupted: bool, metrics: dict[str, float]) -> str:
    """``"interrupted"`` (stopped early), ``"diverged"`` (ran to the end, but a final loss or accuracy is not
    finite, e.g. NaN), else ``"finished"``. A diverged run counts as done (a re-launched sweep does not retrain
    it), and reports list it with the skipped runs."""
    if interrupted:
        return "interrupted"
    watched = [v for k, v in metrics.items() if k.endswith(("loss", "loss_epoch", "acc"))]
    return "diverged" if any(not math.isfinite(v) for v in watched) else "finished"
