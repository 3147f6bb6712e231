"""Post-training calibration table (no training): ``python -m cimexp.post_training``.

A float checkpoint (``model.init_from``) is converted to CIM layers, its step sizes are calibrated on training
batches (``cimexp.cim.calibrate``; ``calibration.*`` sets the activation method, the percentile, the batches and
the optional BatchNorm re-estimation) and its top-1 accuracy is measured on the evaluation split (the test split),
for every cell of ``grid``: weight granularity x partial-sum granularity x ADC bits x weight method x partial-sum
method (``conf/post_training.yaml``)::

    python -m cimexp.post_training                                    # shipped float checkpoint, all 10,000 images
    python -m cimexp.post_training model.init_from=<ckpt> data.val_subset=2000 calibration.bn_batches=4
    python -m cimexp.post_training grid.adc_bits=[3] grid.weight_methods=[max] grid.psum_methods=[percentile]

Every finished cell is appended to ``<out_dir>/cells.csv`` (:data:`COLUMNS`) and ``<out_dir>/table.md`` is
rewritten from it, so a stopped run loses at most the cell in progress. A relaunch skips the cells that cells.csv
already holds for the same setting: a hash of the checkpoint file's content and of every setting that can change a
number (:func:`setting`). A grown grid computes only its new cells; a changed setting adds a new section.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import fcntl
import hashlib
import io
import itertools
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from cimexp.cim import Calibration, Granularity, StepInit
from cimexp.cim.options import WEIGHT_STEP_INITS, check_bits
from cimexp.cim.quant import KERNEL_MODES
from cimexp.cim.vocabulary import GRANULARITIES
from cimexp.files import atomic_write
from cimexp.run.build import build_net
from cimexp.run.classifier import calibrate_network
from cimexp.run.config import calibration_settings, is_cim_factory, layer_factory, layer_settings
from cimexp.run.entry import hydra_entry

log = logging.getLogger("cimexp.post_training")

COLUMNS = (
    "setting",
    "ckpt",
    "data",
    "val_images",
    "w_bits",
    "a_bits",
    "cell_bits",
    "array_size",
    "act_method",
    "percentile",
    "calibration_images",
    "bn_images",
    "adc_bits",
    "weight_granularity",
    "psum_granularity",
    "weight_method",
    "psum_method",
    "top1",
    "seconds",
)
"""Columns of cells.csv. A cell is identified by ``setting`` (:func:`setting`) and the grid coordinates ``adc_bits``,
the granularities and the methods; ``top1`` is a percentage, ``seconds`` the cell's wall time. The row of the float
network has ``weight_granularity = psum_granularity = "float"`` and no ADC bits or methods."""

_KEY = ("setting", "adc_bits", "weight_granularity", "psum_granularity", "weight_method", "psum_method")
_GRID_CIM_KEYS = ("weight_granularity", "psum_granularity", "adc_bits")
"""Keys of the ``cim`` node that every cell sets from the grid."""
_SETTING_IGNORED_DATA_KEYS = ("data_dir", "eval_batch_size", "num_workers", "download")
"""Data settings that cannot change a number (CIM layers in eval mode are batch-independent)."""
_FLOAT = "float"


def validate_config(cfg: DictConfig) -> None:
    """Check every setting before any data is loaded or network built.

    Raises:
        ValueError: a bad value (the message names it and the valid choices), or a float ``cim`` factory.
        FileNotFoundError: ``model.init_from`` points nowhere.
    """
    grid = cfg.grid
    for key in ("weight", "psum"):
        values = _nonempty_list(grid, key)
        for value in values:
            Granularity.parse(value, f"grid.{key} entry")
    for bits in _nonempty_list(grid, "adc_bits"):
        check_bits("grid.adc_bits entry", bits)
    calibration_settings(cfg.calibration)
    for key, allowed in (("weight_methods", WEIGHT_STEP_INITS), ("psum_methods", tuple(StepInit))):
        for method in _nonempty_list(grid, key):
            if method not in [m.value for m in allowed]:
                choices = ", ".join(m.value for m in allowed)
                raise ValueError(f"invalid grid.{key} entry {method!r}; valid choices: {choices}")
    kernels = cfg.model.get("kernels", "auto")
    if kernels not in KERNEL_MODES:
        raise ValueError(f"invalid model.kernels={kernels!r}; valid choices: {', '.join(KERNEL_MODES)}")
    try:
        torch.device(cfg.device)
    except RuntimeError as error:
        raise ValueError(f"invalid device={cfg.device!r}; valid: cpu, cuda, cuda:<index>") from error
    if not is_cim_factory(cfg.cim):
        raise ValueError(
            f"the post-training table needs CIM layers; cim={cfg.cim.get('_target_')!r} builds none (use cim=default)"
        )
    for bits in grid.adc_bits:
        try:
            layer_factory(_cell_config(cfg, "column", "column", bits))(8, 8, 3, padding=1)
        except (ValueError, TypeError) as error:
            raise ValueError(f"invalid CIM layer settings (the `cim` config node, adc_bits={bits}): {error}") from error
    init_from = cfg.model.get("init_from")
    if init_from is None or not Path(init_from).is_file():
        raise FileNotFoundError(
            f"model.init_from={init_from!r} does not exist. Point it at a float checkpoint (a Lightning .ckpt of "
            "`python -m cimexp.train cim=none ...` or a state_dict), or set $CIMEXP_FLOAT_CKPT."
        )


def _nonempty_list(node: DictConfig, key: str) -> list[Any]:
    values = node.get(key)
    if not OmegaConf.is_list(values) or len(values) == 0:
        raise ValueError(f"invalid grid.{key}={values!r}; valid values: a non-empty list, e.g. grid.{key}=[...]")
    return list(values)


def setting(cfg: DictConfig) -> dict[str, Any]:
    """Everything of ``cfg`` that can change a cell's number, apart from the grid coordinates: the float
    checkpoint's content hash, the model (without how it runs), the CIM layer settings, the data (without
    paths, evaluation batch size and loader settings), the activation method, percentile and batches of
    ``calibration``, and the seed. Cells whose settings hash alike are the same measurement."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    cim = layer_settings(cfg)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    calibration = OmegaConf.to_container(cfg.calibration, resolve=True)
    return {
        "ckpt_sha256": _file_sha256(Path(model.pop("init_from"))),
        "model": {k: v for k, v in model.items() if k not in ("compile", "compile_mode", "kernels")},
        "cim": {k: v for k, v in cim.items() if k not in _GRID_CIM_KEYS},
        "data": {k: v for k, v in data.items() if k not in _SETTING_IGNORED_DATA_KEYS},
        "calibration": {k: v for k, v in calibration.items() if k not in ("weight", "psum")},
        "seed": cfg.seed,
    }


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _setting_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _cell_config(cfg: DictConfig, weight: str, psum: str, adc_bits: int) -> DictConfig:
    """A copy of ``cfg`` whose CIM layers have these granularities and ADC bits."""
    cell = copy.deepcopy(cfg)
    with open_dict(cell):
        cell.granularity.weight = weight
        cell.granularity.psum = psum
        cell.adc.bits = adc_bits
    return cell


def post_training(cfg: DictConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Compute the missing cells of ``cfg.grid`` (see the module docstring); update cells.csv and table.md.

    Args:
        cfg: a config composed from ``conf/post_training.yaml``.

    Returns:
        ``(rows, info)``: this setting's rows of cells.csv in grid order (float first), and ``{"computed": cells
        computed by this call, "csv": path, "table": path}``.
    """
    validate_config(cfg)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    csv_path, table_path = out_dir / "cells.csv", out_dir / "table.md"
    read_cells(csv_path)  # a cells.csv of another version fails here, before any work
    settings_hash = _setting_hash(setting(cfg))
    methods = calibration_settings(cfg.calibration)
    calibration: Calibration = methods["calibration"]
    device = torch.device(cfg.device)

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    n_batches = max(methods["calibration_batches"], methods["bn_batches"])
    batches = [images.to(device) for images, _ in itertools.islice(datamodule.train_dataloader(), n_batches)]
    n_images = [sum(len(b) for b in batches[:n]) for n in (methods["calibration_batches"], methods["bn_batches"])]
    common = {
        "setting": settings_hash,
        "ckpt": Path(cfg.model.init_from).name,
        "data": getattr(datamodule, "name", type(datamodule).__name__),
        "val_images": str(len(datamodule.val_set)),
        "w_bits": str(cfg.quant.w_bits),
        "a_bits": str(cfg.quant.a_bits),
        "cell_bits": str(cfg.cell.bits),
        "array_size": str(cfg.array.size),
        "act_method": calibration.act.value,
        "percentile": f"{calibration.percentile:g}",
        "calibration_images": str(n_images[0]),
        "bn_images": str(n_images[1]),
    }

    computed = 0
    cells = list(_cells(cfg))
    for i, (adc_bits, weight, psum, weight_method, psum_method) in enumerate(cells):
        key = (settings_hash, adc_bits, weight, psum, weight_method, psum_method)
        if key in _keys(read_cells(csv_path)):  # computed before, or meanwhile by a concurrent run
            continue
        start = time.perf_counter()
        if weight == _FLOAT:
            net = _float_net(cfg, datamodule.num_classes).to(device)
        else:
            net = build_net(_cell_config(cfg, weight, psum, int(adc_bits)), datamodule.num_classes).to(device)
            method = Calibration(weight_method, calibration.act, psum_method, calibration.percentile)
            calibrate_network(net, batches, method, methods["calibration_batches"], methods["bn_batches"])
        top1 = top1_accuracy(net, datamodule.val_dataloader(), device)
        row = {
            **common,
            **dict(zip(_KEY[1:], key[1:], strict=True)),
            "top1": f"{100 * top1:.2f}",
            "seconds": f"{time.perf_counter() - start:.1f}",
        }
        _append_cell(out_dir, row)
        computed += 1
        scheme = "float" if weight == _FLOAT else f"adc {adc_bits} w:{weight}/p:{psum} {weight_method}/{psum_method}"
        log.info("post-training %s: top-1 %s%% (%s s) [%d/%d]", scheme, row["top1"], row["seconds"], i + 1, len(cells))
    with _locked(out_dir):
        rows = read_cells(csv_path)
        _write_table(table_path, rows)
    log.info("post-training: %d cells computed, %d found; %s", computed, len(cells) - computed, table_path)
    done = _keys(rows)
    info = {"computed": computed, "csv": csv_path, "table": table_path}
    return [done[(settings_hash, *cell)] for cell in cells], info


def _keys(rows: list[dict[str, str]]) -> dict[tuple[str, ...], dict[str, str]]:
    return {tuple(row[k] for k in _KEY): row for row in rows}


def _append_cell(out_dir: Path, row: dict[str, str]) -> None:
    """Add ``row`` to cells.csv unless a concurrent run added its cell meanwhile, and rewrite table.md."""
    with _locked(out_dir):
        rows = read_cells(out_dir / "cells.csv")
        if tuple(row[k] for k in _KEY) not in _keys(rows):
            rows.append(row)
            write_cells(out_dir / "cells.csv", rows)
        _write_table(out_dir / "table.md", rows)


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """An exclusive lock on ``out_dir`` (``.cells.lock``), so that runs sharing it never lose each other's cells."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / ".cells.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cells(cfg: DictConfig) -> Iterator[tuple[str, str, str, str, str]]:
    """Grid coordinates ``(adc_bits, weight, psum, weight_method, psum_method)`` as strings (as in cells.csv),
    float first, then ADC bits by ADC bits in the order of ``grid``."""
    grid = cfg.grid
    yield "", _FLOAT, _FLOAT, "", ""
    for adc_bits, weight, psum, weight_method, psum_method in itertools.product(
        grid.adc_bits, grid.weight, grid.psum, grid.weight_methods, grid.psum_methods
    ):
        yield (
            str(adc_bits),
            Granularity.parse(weight).name.lower(),
            Granularity.parse(psum).name.lower(),
            Calibration(weight=weight_method).weight.value,
            Calibration(psum=psum_method).psum.value,
        )


def _float_net(cfg: DictConfig, num_classes: int) -> nn.Module:
    """The float network of the checkpoint (plain ``nn.Conv2d`` layers), the reference row."""
    float_cfg = copy.deepcopy(cfg)
    with open_dict(float_cfg):
        float_cfg.cim = OmegaConf.create({"_target_": "torch.nn.Conv2d", "_partial_": True})
    return build_net(float_cfg, num_classes)


@torch.no_grad()
def top1_accuracy(net: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device) -> float:
    """Top-1 accuracy (a fraction) of ``net`` in eval mode over ``loader``'s ``(images, labels)`` batches."""
    net.eval()
    correct = total = 0
    for images, labels in loader:
        logits = net(images.to(device))
        correct += int((logits.argmax(1) == labels.to(device)).sum())
        total += len(labels)
    return correct / total


def read_cells(path: Path) -> list[dict[str, str]]:
    """The rows of a cells.csv (none when the file does not exist).

    Raises:
        ValueError: the file's header is not :data:`COLUMNS` (written by another version: move it away).
    """
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(
                f"{str(path)!r} has columns {reader.fieldnames}, expected {list(COLUMNS)}: it was written by another "
                "version of cimexp.post_training; move it away (or set out_dir=...) to start a new table"
            )
        return list(reader)


def write_cells(path: Path, rows: list[dict[str, str]]) -> None:
    """Write cells.csv atomically (readers see the old file or the new one)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def _write_table(path: Path, rows: list[dict[str, str]]) -> None:
    text = render_table(rows)
    atomic_write(path, lambda f: f.write(text.encode()))


_METHODS = [m.value for m in StepInit]


def render_table(rows: list[dict[str, str]]) -> str:
    """table.md: one section per setting in cells.csv (in order of first appearance), each with the float
    network's top-1, one table per ADC resolution (methods x granularity pairs, the best method per pair in bold)
    and the best method per pair and ADC resolution."""
    lines = [
        "# Post-training calibration: top-1 (%) without any training",
        "",
        "Written by `python -m cimexp.post_training` from `cells.csv` (methods and command: docs/calibration.md). A "
        "float checkpoint converted to CIM layers; steps calibrated on training batches with the weight / partial-sum "
        "methods of each row; accuracy on the evaluation (test) split. Columns: weight / partial-sum granularity.",
    ]
    for settings_hash in dict.fromkeys(row["setting"] for row in rows):
        lines += _section([row for row in rows if row["setting"] == settings_hash])
    return "\n".join(lines) + "\n"


def _section(rows: list[dict[str, str]]) -> list[str]:
    first = rows[0]
    float_rows = [row for row in rows if row["weight_granularity"] == _FLOAT]
    cells = [row for row in rows if row["weight_granularity"] != _FLOAT]
    bn = (
        f"BatchNorm re-estimated on {first['bn_images']} images" if first["bn_images"] != "0" else "no BN re-estimation"
    )
    lines = [
        "",
        f"## Setting {first['setting']}",
        "",
        f"`{first['ckpt']}` on {first['data']}, {first['val_images']} evaluation images; W{first['w_bits']}A"
        f"{first['a_bits']}, {first['cell_bits']}-bit cells, {first['array_size']}x{first['array_size']} arrays; "
        f"steps calibrated on {first['calibration_images']} training images, activations `{first['act_method']}`, "
        f"percentile {first['percentile']}; {bn}. Float network: "
        f"{float_rows[0]['top1'] + '%' if float_rows else 'not measured'}.",
    ]
    best: dict[tuple[str, str], dict[str, str]] = {}
    schemes = sorted(
        {(r["weight_granularity"], r["psum_granularity"]) for r in cells},
        key=lambda s: (GRANULARITIES.index(s[0]), GRANULARITIES.index(s[1])),
    )
    for adc_bits in sorted({r["adc_bits"] for r in cells}, key=int, reverse=True):
        at_bits = [r for r in cells if r["adc_bits"] == adc_bits]
        methods = sorted(
            {(r["weight_method"], r["psum_method"]) for r in at_bits},
            key=lambda m: (_METHODS.index(m[0]), _METHODS.index(m[1])),
        )
        table = {
            (r["weight_granularity"], r["psum_granularity"], r["weight_method"], r["psum_method"]): r for r in at_bits
        }
        top = {
            s: max((table[(*s, *m)] for m in methods if (*s, *m) in table), key=_top1, default=None) for s in schemes
        }
        best.update({(adc_bits, f"{s[0]}/{s[1]}"): row for s, row in top.items() if row is not None})
        lines += [
            "",
            f"### {adc_bits}-bit ADC",
            "",
            "| weight / psum method | " + " | ".join(f"{w}/{p}" for w, p in schemes) + " |",
            "|---|" + "---|" * len(schemes),
        ]
        for m in methods:
            cells_text = []
            for s in schemes:
                row = table.get((*s, *m))
                text = "" if row is None else row["top1"]
                cells_text.append(f"**{text}**" if row is not None and row is top[s] else text)
            lines.append(f"| {m[0]} / {m[1]} | " + " | ".join(cells_text) + " |")
    if best:
        bits = sorted({b for b, _ in best}, key=int, reverse=True)
        lines += [
            "",
            "### Best method per scheme",
            "",
            "| weight/psum | " + " | ".join(f"{b}-bit ADC" for b in bits) + " |",
            "|---|" + "---|" * len(bits),
        ]
        for w, p in schemes:
            entries = []
            for b in bits:
                row = best.get((b, f"{w}/{p}"))
                entries.append("" if row is None else f"{row['top1']} ({row['weight_method']} / {row['psum_method']})")
            lines.append(f"| {w}/{p} | " + " | ".join(entries) + " |")
    return lines


def _top1(row: dict[str, str]) -> float:
    return float(row["top1"])


def job(cfg: DictConfig) -> None:
    """The Hydra job: fill in the post-training table."""
    post_training(cfg)


main = hydra_entry("post_training", job, validate_config, prog="cimexp-post-training")

if __name__ == "__main__":
    main()
