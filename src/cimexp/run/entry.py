"""How cimexp's Hydra entry points start (``cimexp-train``, ``cimexp-evaluate``, ``cimexp-post-training``).

:func:`hydra_entry` wraps an entry point's job function in ``@hydra.main`` and adds what Hydra lacks:

- **Checks before Hydra creates a run directory.** The command line is composed and validated first (every job of
  a multirun, see :func:`sweep_jobs`). A typo in a group option (``model=resnet21``), a key or a value
  (``granularity.weight=colum``, ``array.size=7``) stops with one line on stderr naming the bad value and the valid
  choices, exit code 2, no traceback, and nothing written to disk. ``HYDRA_FULL_ERROR=1`` shows the traceback.
- **``--help`` written for users**: what the default run is, the user-facing groups with their options, the
  sweeps, examples (:func:`help_text`). Hydra's own page stays at ``--hydra-help``.
- **Quiet dependencies**: Lightning's tips and ads and the deprecation warnings of dependencies are dropped
  (:func:`quiet_dependencies`); cimexp's own status lines go through :mod:`logging` to the console and the run's
  log file.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import shutil
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cimexp.data.base import DataError
from cimexp.files import CorruptFileError, RunLockedError
from cimexp.results import RENAMED_KEYS, StaleRunError
from cimexp.run.config import CONFIG_PATH, LAYER_SETTINGS, compose, group_options, register_resolvers, validate_once

USAGE_ERROR = 2
"""Exit code of a command line that names a bad group option, key or value (as argparse uses)."""

_DEPENDENCY_NOISE = ("💡 Tip:", "litlogger", "litmodels")
"""Fragments of messages that Lightning prints on every run and that say nothing about the run."""

HIDDEN_GROUPS = ("hydra", "paths", "callbacks", "cim", "sweep")
"""Config groups left out of ``--help``: Hydra's own, the directories (README, "Where files go"), the callback
wiring, the layer factory (``cim=none`` is the float network: ``granularity=float``), and the sweeps (listed on
their own)."""


class UsageError(Exception):
    """A command line that cannot run; the message is one line naming the bad value and the valid choices."""


RUN_ERRORS = (StaleRunError, RunLockedError, CorruptFileError, DataError, FileNotFoundError, ValueError)
"""Errors a user causes that show only once the job runs (a run directory of another config or in use, a corrupt
checkpoint, missing or wrong data, a refused file): one line on stderr and exit code 2, as a bad command line."""


def _remove_if_unused(run_dir: Path, job_name: str) -> None:
    """Delete ``run_dir`` if it holds only what a run writes before its first step (Hydra's ``.hydra/`` and
    ``<job>.log``, the resolved config, the git state, a logger's folder), and neither results nor checkpoints: a
    job refused before it trained leaves no run directory behind."""
    if not run_dir.is_dir():
        return
    before_training = {".hydra", f"{job_name}.log", "config_resolved.yaml", "git.json", "csv", "wandb"}
    if {entry.name for entry in run_dir.iterdir()} <= before_training:
        shutil.rmtree(run_dir, ignore_errors=True)


def renamed_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """``(overrides, notes)``: the command line's overrides with renamed config keys and groups under their current
    names (:data:`cimexp.results.RENAMED_KEYS`; ``scheduler=one_cycle`` -> ``lr_schedule=one_cycle``, also with
    ``+``/``~`` and dotted keys), and one deprecation note per old name used."""
    renamed, notes = [], []
    for override in overrides:
        match = re.match(r"([+~]{0,2})([\w]+)(.*)", override, re.DOTALL)
        new = RENAMED_KEYS.get(match.group(2)) if match and match.group(3)[:1] in ("", ".", "=", "@") else None
        if new is None:
            renamed.append(override)
            continue
        note = f"`{match.group(2)}` is now `{new}` (renamed in 0.2; the old name is read until 0.3)"
        notes += [] if note in notes else [note]
        renamed.append(match.group(1) + new + match.group(3))
    return renamed, notes


def command_line(argv: list[str]) -> argparse.Namespace:
    """The flags of a Hydra command line that decide whether it runs a job (``--help``, ``--cfg``, ``-m``, ...) and
    its overrides, read as ``@hydra.main`` reads them (which then parses the same ``argv`` itself)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--help", "-h", action="store_true")
    parser.add_argument("--hydra-help", action="store_true")
    parser.add_argument("--version", action="store_true")
    parser.add_argument("--cfg", "-c", choices=["job", "hydra", "all"])
    parser.add_argument("--resolve", action="store_true")
    parser.add_argument("--package", "-p")
    parser.add_argument("--run", "-r", action="store_true")
    parser.add_argument("--multirun", "-m", action="store_true")
    parser.add_argument("--shell-completion", "-sc", action="store_true")
    parser.add_argument("--config-path", "-cp")
    parser.add_argument("--config-name", "-cn")
    parser.add_argument("--config-dir", "-cd")
    parser.add_argument("--experimental-rerun")
    parser.add_argument("--info", "-i", nargs="?", const="all")
    return parser.parse_args(argv)


def hydra_entry(
    config_name: str, job: Callable[[DictConfig], Any], validate: Callable[[DictConfig], None], *, prog: str
) -> Callable[[], Any]:
    """The console-script ``main`` of a Hydra entry point: checks the command line (:func:`preflight`), answers
    ``--help`` (:func:`help_text`), then runs ``job`` under ``@hydra.main`` with the configs of the package.

    Args:
        config_name: the primary config (``train``, ``evaluate``, ``post_training``).
        job: the job function; define it in the entry point's module, whose name Hydra takes as the job name (the
            run's log file is ``<job name>.log``).
        validate: the settings check of ``job``'s config (raises ``ValueError``/``FileNotFoundError`` naming the
            bad value).
        prog: the command's name in messages (``cimexp-train``).
    """

    @functools.wraps(job)  # Hydra unwraps it: the job name (and <job name>.log) stays that of ``job``
    def quiet_job(cfg: DictConfig) -> Any:
        quiet_dependencies()  # again in the job: a parallel launcher runs it in a worker process of its own
        try:
            return job(cfg)
        except RUN_ERRORS as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            hydra_cfg = HydraConfig.get()
            if not isinstance(error, StaleRunError | RunLockedError):  # those directories hold another run's files
                _remove_if_unused(Path(hydra_cfg.runtime.output_dir), hydra_cfg.job.name)
            if hydra_cfg.mode == RunMode.MULTIRUN:  # the launcher reports it with the job's overrides
                logging.getLogger(f"cimexp.{config_name}").error(one_line(error))
                raise
            print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
            sys.exit(USAGE_ERROR)

    hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(quiet_job)

    def main() -> Any:
        args = command_line(sys.argv[1:])
        overrides, notes = renamed_overrides(args.overrides)
        for note in notes:
            print(f"{prog}: warning: {note}", file=sys.stderr)
        if notes:  # @hydra.main reads sys.argv itself
            current = dict(zip(args.overrides, overrides, strict=True))
            sys.argv[1:] = [current.get(arg, arg) for arg in sys.argv[1:]]
            args.overrides = overrides
        register_resolvers()
        quiet_dependencies()
        if args.help:
            print(help_text(config_name, prog))
            sys.exit(0)
        if not (args.cfg or args.info or args.hydra_help or args.shell_completion or args.resolve or args.version):
            try:
                preflight(config_name, args.overrides, validate, multirun=args.multirun, config_dir=args.config_dir)
            except UsageError as error:
                print(f"{prog}: error: {error}", file=sys.stderr)
                sys.exit(USAGE_ERROR)
        return hydra_main()

    main.__doc__ = f"Entry point of ``{prog}``: ``{config_name}.yaml`` composed with the command line, then the job."
    return main


def preflight(
    config_name: str,
    overrides: list[str],
    validate: Callable[[DictConfig], None],
    *,
    multirun: bool = False,
    config_dir: str | None = None,
) -> None:
    """Compose and validate the command line (each job of a multirun, :func:`sweep_jobs`) as the entry point
    would, without running anything or writing anything.

    Raises:
        UsageError: a bad group option, key, value or override syntax (``HYDRA_FULL_ERROR=1``: the original error).
    """
    job_overrides = overrides
    try:
        stray = stray_addition(config_name, overrides, config_dir)
        if stray is not None:
            raise UsageError(stray)
        for job_overrides in sweep_jobs(config_name, overrides, config_dir) if multirun else [overrides]:
            validate_once(validate, compose(config_name, job_overrides, config_dir=config_dir))
    except (HydraException, OmegaConfBaseException, ValueError, TypeError, FileNotFoundError) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        other = _other_entry_point_sweep(config_name, overrides, config_dir)
        if other is not None:
            raise UsageError(other) from error
        prefix = f"job [{' '.join(job_overrides)}]: " if multirun and job_overrides is not overrides else ""
        raise UsageError(prefix + (_unknown_key(config_name, error, config_dir) or one_line(error))) from error


_ABSENT = object()

RETIRED_ADDITIONS = {"scheme": "granularity"}
"""Keys that older commands added with ``+`` (``+scheme=layer_layer``), by the setting that took their place."""


def stray_addition(config_name: str, overrides: list[str], config_dir: str | None = None) -> str | None:
    """The message for an override that adds a key nothing reads (``+scheme=layer_layer``, a name from before the
    rename, or ``+granularity.weights=column``); ``None`` when there is none.

    Hydra composes such a key into the config without complaint, so the run would record a setting that never
    acted. An addition is read when it is a config group (``+experiment=quick``), lies under Hydra's own node, or
    goes to a constructor that checks its arguments: a node with a ``_target_`` (``+trainer.profiler=simple``,
    ``+callbacks.probe._target_=...``). Every other ``+key=`` / ``++key=`` of a key the config lacks is refused.
    """
    parsed = OverridesParser.create().parse_overrides(overrides)
    firsts = first_job(overrides)
    for index, override in enumerate(parsed):
        key = override.key_or_group
        parts = key.split(".")
        if not (override.is_add() or override.is_force_add()) or parts[0] == "hydra" or override.package:
            continue
        if parts[-1] == "_target_" or group_options(key.replace(".", "/"), config_dir):
            continue
        cfg = compose(config_name, firsts[:index] + firsts[index + 1 :], config_dir=config_dir)
        if OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT:
            continue
        nodes = [OmegaConf.select(cfg, ".".join(parts[:depth])) if depth else cfg for depth in range(len(parts))]
        if any(isinstance(node, DictConfig) and "_target_" in node for node in nodes[1:]):
            continue
        deepest = max(depth for depth, node in enumerate(nodes) if isinstance(node, DictConfig))
        parent = ".".join(parts[:deepest])
        keys = ", ".join(str(k) for k in nodes[deepest])
        value = override.get_value_element_as_str()
        hint = f"; did you mean {RETIRED_ADDITIONS[key]}={value}?" if key in RETIRED_ADDITIONS else ""
        return (
            f"{override.input_line} adds {key}, which nothing reads{hint} (renamed settings: docs/running.md); "
            f"the keys of {parent or 'the config'}: {keys}"
        )
    return None


_SWEEP_COMMANDS = {"train": "cimexp-train", "evaluate": "cimexp-evaluate"}

README_SECTIONS = ("Install and the two commands", "Options", "Where files go", "Stopping and resuming")
"""The README sections ``--help`` points to (a test holds them equal to headings of the README)."""


def _other_entry_point_sweep(config_name: str, overrides: list[str], config_dir: str | None) -> str | None:
    """For a sweep of the other entry point (``cimexp-train -m sweep=variation/quick``, an evaluation sweep): the
    message naming the command that runs it; ``None`` otherwise."""
    sweeps = [o for o in overrides if o.startswith("sweep=")]
    if config_name not in _SWEEP_COMMANDS or len(sweeps) != 1:
        return None
    for other, command in _SWEEP_COMMANDS.items():
        if other == config_name:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compose(other, sweeps, config_dir=config_dir)
        except (HydraException, OmegaConfBaseException, ValueError, TypeError):
            continue
        this = _SWEEP_COMMANDS[config_name]
        return f"{sweeps[0]} is a sweep of {command}, not of {this}: run {command} -m {sweeps[0]}"
    return None


def sweep_jobs(config_name: str, overrides: list[str], config_dir: str | None = None) -> list[list[str]]:
    """Enough jobs of a multirun to try every value of every swept key once: the sweep preset's
    ``hydra.sweeper.params`` and the command line's sweeps (``seed=0,1,2``), with job ``j`` taking value
    ``j mod n`` of each key of ``n`` values. Values that fail only in combination are caught when their job runs.
    """
    parser = OverridesParser.create()
    # the sweep preset's parameters are read from a config composed with each key's first value
    base = compose(config_name, first_job(overrides), config_dir=config_dir, hydra_config=True)
    node = base.hydra.sweeper.get("params")
    params = OmegaConf.to_container(node, resolve=False) if node else {}
    assert isinstance(params, dict)
    parsed = parser.parse_overrides([*(f"{k}={v}" for k, v in params.items()), *overrides])
    axes: dict[str, list[str]] = {}  # the command line wins over the preset, as in Hydra's basic sweeper
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            axes[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            axes[key] = [f"{key}={override.get_value_element_as_str()}"]
    n_jobs = max((len(values) for values in axes.values()), default=1)
    return [[values[j % len(values)] for values in axes.values()] for j in range(n_jobs)]


def first_job(overrides: list[str]) -> list[str]:
    """The command line of a multirun's first job: every swept key (``seed=0,1,2``) at its first value."""
    return [
        f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line
        for o in OverridesParser.create().parse_overrides(overrides)
    ]


def one_line(error: BaseException) -> str:
    """The user-facing part of a composition or validation error on one line."""
    if isinstance(error, MissingConfigException) and error.options is not None and error.missing_cfg_file:
        group, _, option = str(error.missing_cfg_file).rpartition("/")
        options = [o for o in error.options if not o.startswith("_")]  # building blocks (_common, _base)
        if group.startswith("sweep/"):  # a sweep is named sweep=<figure>/<preset>
            option, group = f"{group.removeprefix('sweep/')}/{option}", "sweep"
            options = [o for o in group_options("sweep") if not o.rpartition("/")[2].startswith("_")]
        return f"{group}={option}: no such option; valid choices: {', '.join(options)}"
    cause = error.__cause__ if isinstance(error, HydraException) and error.__cause__ is not None else None
    lines = [line.strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and not line.startswith(("full_key:", "object_type=", "reference_type="))]
    text = " ".join(lines)
    if cause is not None and str(cause).split("\n")[0] not in text:
        text += f" ({str(cause).splitlines()[0]})"
    return text


def _unknown_key(config_name: str, error: BaseException, config_dir: str | None) -> str | None:
    """For an override of a key that does not exist (``adc.bitz=3``): the message naming the keys that do."""
    match = re.match(r"Could not override '([^']+)'", str(error))
    if match is None or "not in struct" not in str(error.__cause__ or error):
        return None
    key = match.group(1)
    setting = LAYER_SETTINGS.get(key.removeprefix("cim.")) if key.startswith("cim.") else None
    if setting is not None:  # Hydra's hint repeats the override: "To append to your config use +cim.adc_bits=3"
        value = re.search(rf"\+{re.escape(key)}=(\S+)", str(error))
        return f"{key}: the setting's one key is {setting}; use {setting}={value.group(1) if value else '<value>'}"
    parts = key.split(".")
    cfg = compose(config_name, [], config_dir=config_dir)
    for depth in range(len(parts) - 1, -1, -1):  # the deepest node of the key that exists
        parent = ".".join(parts[:depth])
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig):
            keys = ", ".join(str(k) for k in node)
            return f"{key}: no such key; the keys of {parent or 'the config'}: {keys}"
    return None


def quiet_dependencies() -> None:
    """Drop what dependencies print on every run and that says nothing about it: Lightning's tips and ads, the
    deprecation warnings of dependencies (they concern their authors, not the run), and torch's note that a
    CPU-only machine has no CUDA runtime."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(lightning|torch|torchmetrics|wandb|hydra)")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(fragment in message for fragment in _DEPENDENCY_NOISE)


_ABOUT = {
    "train": (
        "Train a ResNet whose convolutions run on simulated compute-in-memory crossbars (Kim et al., DATE 2025):\n"
        "weights bit-sliced over memory cells, every column's partial sum through a low-resolution ADC."
    ),
    "evaluate": "Evaluate a training checkpoint, clean and under memory-cell variation or ADC errors.",
    "post_training": "Post-training table: every granularity pair x calibration method from a float checkpoint.",
}

_DEFAULT_RUN = {
    "train": (
        "The default run (no experiment=) is the paper's recipe: ResNet-20 on CIFAR-10, W4A4, 2-bit cells, 4-bit\n"
        "ADCs, 128x128 arrays, column/column, 200 epochs from scratch. It is a GPU recipe (hours on one GPU, days\n"
        "on a CPU; measured steps per device: experiments/results/bench/). On a laptop, start with\n"
        "  {prog} experiment=quick            fine-tunes the shipped float network for 100 steps (~8 min)\n"
        "  {prog} debug=fdr data=synthetic    one batch on generated data: checks an install in seconds"
    ),
    "evaluate": (
        "ckpt=<.ckpt file or training run directory> is required. Example:\n"
        "  {prog} ckpt=logs/train/runs/<run> variation.sigma=0.1 variation.seed=0"
    ),
    "post_training": "The default grid: 9 granularity pairs x methods at 4- and 3-bit ADCs (docs/calibration.md).",
}


_KEY_EXAMPLES = {
    "train": "granularity.weight=column adc.bits=3 array.size=256 seed=1 trainer.max_epochs=5",
    "evaluate": "variation.sigma=0.2 variation.seed=1 variation.level=cell adc.noise_lsb=0.5 data.val_subset=2000",
    "post_training": "grid.adc_bits=[4] grid.weight=[column] calibration.percentile=99.9 data.val_subset=2000",
}


def help_text(config_name: str, prog: str) -> str:
    """``--help``: what the command does and its default run, every user-facing config group with its default and
    options (building blocks named ``_*`` left out), the sweeps, and where to read more."""
    cfg = compose(config_name, [], hydra_config=True)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if k.split("/")[0] not in HIDDEN_GROUPS}
    lines = [f"usage: {prog} [-m] [group=option ...] [key=value ...]", "", _ABOUT[config_name], ""]
    lines += [_DEFAULT_RUN[config_name].format(prog=prog), "", "Config groups (group=option; default in []):"]
    for group in sorted(choices, key=_group_order):
        options = [o for o in group_options(group) if not o.startswith("_")]
        lines.append(f"  {group:<12} [{str(choices[group]).lower()}]  {', '.join(options)}")
    sweeps = [o for o in group_options("sweep") if not o.rpartition("/")[2].startswith("_")]
    lines += ["", "Sweeps (-m sweep=<name>; a relaunch skips finished jobs and resumes killed ones):"]
    lines += textwrap.wrap(", ".join(sweeps), width=110, initial_indent="  ", subsequent_indent="  ")
    lines += [
        "",
        "Every value is a key too, e.g. " + _KEY_EXAMPLES[config_name],
        f"Show the composed config: {prog} <overrides> --cfg job.  Your own config folder: --config-dir <dir>.",
        "Hydra's own options: --hydra-help.  More: README.md (" + ", ".join(README_SECTIONS) + ").",
    ]
    return "\n".join(lines)


def _group_order(group: str) -> tuple[int, str]:
    first = ("experiment", "model", "data", "quant", "cell", "adc", "array", "granularity", "schedule")
    return (first.index(group) if group in first else len(first), group)
