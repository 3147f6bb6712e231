"""Print the per-layer and total ADC and dequantization costs of a configuration, without training:
``python -m cimexp.cost [group=option ...] [key=value ...]`` (or ``cimexp-cost``), with the overrides of
``python -m cimexp.train``, e.g. ``python -m cimexp.cost adc=5bit granularity=layer_layer cost.adc_model=isaac``.

The network is built from the same composed config as training (:func:`cimexp.run.build.build_net`, float weights not
loaded); no data are read: the input size is the data module's ``image_size``. The numbers are those of
results.json's ``cim_summary`` (:func:`cimexp.cim.cost.cim_summary`).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from omegaconf.errors import OmegaConfBaseException

from cimexp.cim import cim_layers, cim_summary
from cimexp.cim.cost import CostModel
from cimexp.run.build import build_net, example_input
from cimexp.run.config import compose, layer_settings
from cimexp.run.entry import USAGE_ERROR, one_line

USAGE = __doc__.split("\n\n")[0]


def cost_summary(cfg: DictConfig) -> dict[str, Any] | None:
    """:func:`~cimexp.cim.cost.cim_summary` of the configured network for one input image, plus ``model``,
    ``data`` and ``input_size``; ``None`` without CIM layers (``cim=none``)."""
    cost = CostModel.from_config(cfg.cost, (layer_settings(cfg) or {}).get("adc_bits"))
    datamodule = instantiate(cfg.data)  # reads no files before setup()
    net_cfg = copy.deepcopy(cfg)
    with open_dict(net_cfg):
        net_cfg.model.init_from = None  # costs do not depend on the weights
    net = build_net(net_cfg, datamodule.num_classes)
    if not any(True for _ in cim_layers(net)):
        return None
    summary = cim_summary(net, example_input(datamodule, net), cost)
    return {
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "data": datamodule.name,
        "input_size": datamodule.image_size,
        **summary,
    }


_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], Any], str], ...] = (  # header, value of a row, format
    ("layer", lambda r: r["name"], "{}"),
    ("conv", lambda r: f"{r['in_channels']}->{r['out_channels']} {'x'.join(map(str, r['kernel_size']))}", "{}"),
    ("out", lambda r: "x".join(map(str, r["out_hw"])), "{}"),
    ("T", lambda r: r["row_tiles"], "{}"),
    ("S", lambda r: r["n_splits"], "{}"),
    ("P", lambda r: r["n_polarities"], "{}"),
    ("K", lambda r: r["input_cycles"], "{}"),
    ("arrays", lambda r: r["arrays"], "{:,}"),
    ("ADCs", lambda r: r["n_adcs"], "{:,}"),
    ("conversions", lambda r: r["adc_conversions"], "{:,}"),
    ("energy pJ", lambda r: r["adc_energy_pj"], "{:,.1f}"),
    ("area um^2", lambda r: r["adc_area_um2"], "{:,.0f}"),
    ("dequant/img", lambda r: r["dequant_ops_per_image"], "{:,}"),
    ("scales", lambda r: r["weight_scales"] + r["psum_scales"], "{:,}"),
)
_LEFT, _GEOMETRY = 3, 7
"""The first ``_LEFT`` columns are left-aligned, the rest right-aligned; the total row leaves the first
``_GEOMETRY`` (a layer's shape and mapping) empty."""


def format_table(summary: dict[str, Any]) -> str:
    """The per-layer rows, the total and the cost model of a :func:`cost_summary` as aligned text."""
    total = summary["total"]
    rows = [[fmt.format(value(row)) for _, value, fmt in _COLUMNS] for row in summary["layers"]]
    rows.append(
        ["total"] + [""] * (_GEOMETRY - 1) + [fmt.format(value(total)) for _, value, fmt in _COLUMNS[_GEOMETRY:]]
    )
    headers = [header for header, _, _ in _COLUMNS]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        aligned = (c.ljust(w) if i < _LEFT else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(aligned)

    table = [line(headers), *map(line, rows[:-1]), "-" * len(line(headers)), line(rows[-1])]
    first, model = summary["layers"][0], total["cost_model"]
    formulas = ("name", "energy_formula", "area_formula", "source")
    constants = ", ".join(f"{k}={v}" for k, v in model.items() if k not in formulas)
    return "\n".join(
        [
            f"{summary['model']} on {summary['data']} ({summary['input_size']}x{summary['input_size']} input), "
            f"{total['cim_layers']} CIM layers (float layers not counted): W{first['w_bits']}A{first['a_bits']} "
            f"cell{first['cell_bits']} adc{first['adc_bits']} array{first['array_size']} "
            f"w:{first['weight_granularity']}/p:{first['psum_granularity']}; energy and conversions per image",
            "",
            *table,
            "",
            f"ADC model {model['name']}: E = {model['energy_formula']}, A = {model['area_formula']}",
            f"  {constants}",
            f"  source: {model['source']}",
            f"  at {first['adc_bits']} bits: {first['adc_energy_per_conversion_pj']:.4g} pJ per conversion, "
            f"{first['adc_area_per_adc_um2']:.4g} um^2 per ADC",
            f"total: {total['adc_conversions']:,} ADC conversions, {total['adc_energy_pj'] / 1e6:.4g} uJ per image, "
            f"{total['n_adcs']:,} ADCs, {total['adc_area_um2'] / 1e6:.4g} mm^2 of ADC area",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m cimexp.cost`` / ``cimexp-cost``; returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    try:
        summary = cost_summary(compose("train", args))
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        print(f"cimexp-cost: error: {one_line(error)}", file=sys.stderr)
        return USAGE_ERROR
    if summary is None:
        print("no CIM layers in this configuration (cim=none): no ADCs to cost")
        return 0
    print(format_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
