"""``quantizer=authors`` against the authors' own quantizer (github.com/jiyoonkm/ColumnQuant).

Skipped unless ``CIMEXP_AUTHORS_CODE`` names a checkout of that repository (it has no license, so it is not shipped
or copied here). Their per-split module ``Conv4Pim_group_split`` (the "simpler version" of
``SplitConv4Pim_group.py``; not ``_v3``, which HEAD instantiates last and which ignores the split index) is built
once per split, as ``SplitConv4Pim_group`` builds it, on a layer that fits one array (8 input channels of 3x3 =
72 rows), without activation or partial-sum quantization (``psumOpt=False``), so that only the weight quantizer is
compared. On the same float weights, the CIM layer with the authors' settings must give their steps, per-split
integers and cell codes, recombined weight, output, and the gradients of the weights and of every split's step.

    git clone https://github.com/jiyoonkm/ColumnQuant /tmp/ColumnQuant
    CIMEXP_AUTHORS_CODE=/tmp/ColumnQuant python -m pytest tests/cim/test_authors_code.py
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest
import torch

from cimexp.cim import CIMConv2d, set_calibration

AUTHORS_CODE = os.environ.get("CIMEXP_AUTHORS_CODE")
pytestmark = pytest.mark.skipif(
    not AUTHORS_CODE or not (Path(AUTHORS_CODE) / "SplitConv4Pim_group.py").is_file(),
    reason="CIMEXP_AUTHORS_CODE does not name a checkout of jiyoonkm/ColumnQuant",
)

W_BITS, CELL_BITS = 4, 2
IN_CH, OUT_CH, K = 8, 16, 3
AUTHORS = {  # conf/quantizer/authors.yaml, less what needs no training (act_grad_scale) or an ADC (psum_grad_scale)
    "weight_grad_scale": 1e-4,
    "weight_splits": "per_split",
    "slice_gradient": "lowest_split",
}


@pytest.fixture(scope="module")
def authors_module():
    sys.path.insert(0, str(Path(AUTHORS_CODE).resolve()))
    try:
        yield importlib.import_module("SplitConv4Pim_group")
    finally:
        sys.path.remove(str(Path(AUTHORS_CODE).resolve()))


def _theirs(module, weight: torch.nn.Parameter, per_channel: bool) -> list[torch.nn.Module]:
    """One ``Conv4Pim_group_split`` per split sharing ``weight``, initialised as ``SplitConv4Pim_group`` does."""
    splits = []
    for idx in range(W_BITS // CELL_BITS):
        split = module.Conv4Pim_group_split(
            W_BITS, CELL_BITS, idx, 4, 6, "Layer", IN_CH, OUT_CH, K, 128, 1, 1, padding=1,
            w_per_ch=per_channel, psumOpt=False,
        )  # fmt: skip
        split.weight = weight
        split.bias = None
        split.quant_ready()
        splits.append(split)
    return splits


@pytest.mark.parametrize("granularity", ["column", "layer"])
def test_authors_reading_equals_the_authors_weight_quantizer(authors_module, granularity):
    torch.manual_seed(0)
    per_channel = granularity == "column"
    weight = torch.nn.Parameter(torch.randn(OUT_CH, IN_CH, K, K) * 0.1)
    theirs = _theirs(authors_module, weight, per_channel)
    ours = CIMConv2d(
        IN_CH, OUT_CH, K, padding=1, w_bits=W_BITS, cell_bits=CELL_BITS, a_bits=None, psum_quant=False,
        weight_granularity=granularity, psum_granularity="column", **AUTHORS,
    )  # fmt: skip
    with torch.no_grad():
        ours.weight.copy_(weight)
    set_calibration(ours, {"weight": "mean_abs"})

    x = torch.randn(2, IN_CH, 6, 6)
    shifts = [2 ** (CELL_BITS * (len(theirs) - 1 - s)) for s in range(len(theirs))]
    out_theirs = sum(shift * split(x) for shift, split in zip(shifts, theirs, strict=True))
    out_ours = ours(x)

    # Steps: every split starts at the group's mean |w| (per output channel, or the whole layer).
    steps = ours.weight_step.detach()  # [1, S, 1, O] (column) or [1, S, 1, 1] (layer)
    for s, split in enumerate(theirs):
        torch.testing.assert_close(steps[0, s, 0].reshape(-1), split.weight_quantize_fn.sf.detach().reshape(-1))

    # Per-split integers and cell codes, and the recombined weight.
    s_w = ours._weight_step_full()
    codes = ours.cell_codes(s_w).detach()[0, :, :, 0]  # [S, O, R]
    recombined = torch.zeros(OUT_CH, IN_CH * K * K)
    for s, split in enumerate(theirs):
        torch.testing.assert_close(
            codes[s], split.w_split.reshape(OUT_CH, -1).detach(), rtol=0, atol=0, msg=f"cell codes of split {s}"
        )
        integers = (split.w_q_int - 2 ** (W_BITS - 1)).reshape(OUT_CH, -1).detach()
        mine = torch.clamp(torch.round(ours.weight.reshape(OUT_CH, -1) / s_w[0, s, 0].reshape(-1, 1)), -8, 7)
        torch.testing.assert_close(mine.detach(), integers, rtol=0, atol=0, msg=f"integers of split {s}")
        recombined += shifts[s] * (split.w_split * split.scale_factor).reshape(OUT_CH, -1).detach()
    mine = (codes * torch.tensor(shifts).reshape(-1, 1, 1) * s_w[0, :, 0].detach().unsqueeze(-1)).sum(0)
    torch.testing.assert_close(mine, recombined)
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-5, atol=1e-5)

    # Gradients of the weights and of every split's steps, under the same upstream gradient.
    upstream = torch.randn_like(out_ours)
    (out_theirs * upstream).sum().backward()
    grad_weight_theirs = weight.grad.clone()
    (out_ours * upstream).sum().backward()
    torch.testing.assert_close(ours.weight.grad, grad_weight_theirs, rtol=1e-4, atol=1e-6)
    for s, split in enumerate(theirs):
        torch.testing.assert_close(
            ours.weight_step.grad[0, s, 0].reshape(-1),
            split.weight_quantize_fn.sf.grad.reshape(-1),
            rtol=1e-4,
            atol=1e-9,
            msg=f"step gradient of split {s}",
        )
