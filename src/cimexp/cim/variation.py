"""Memory-cell conductance variation (paper Sec. IV-E, eq. 5): log-normal factors ``exp(theta)``,
``theta ~ N(0, sigma^2)`` i.i.d. (Charan et al. 2020), at one of two levels (:class:`~cimexp.cim.VariationLevel`):

- ``weight`` (default; the paper's eq. 5, ``w_var = w * exp(theta)``): one factor per weight, shared by all the
  cells (splits) and polarities that store it. The varied weight is exactly its ideal quantized value times
  ``exp(theta)``, so its relative standard deviation is that of ``exp(theta)`` (~``sigma``) whatever the weight's
  bit pattern.
- ``cell``: one factor per physical cell. Variation is a property of the device's conductance, which is a
  magnitude (``G > 0``; ``exp(theta) > 0`` keeps it one): a cell with code ``c`` conducts ``|c| * G_unit *
  exp(theta)``, and the sign of two's complement's signed most significant cell (code < 0) is applied by the
  periphery (read polarity / column subtraction), which does not vary. Its contribution is therefore
  ``c * exp(theta)``, the same relative error for a negative as for a positive code, and an empty cell (code 0,
  the off state) contributes nothing. A weight spread over several cells then varies as the sum of its cells:
  with 4-bit weights on 2-bit cells, ``w = 4 * c_msb + c_lsb``, so weight -1 (codes -1 and 3: ``-4 + 3``) has a
  standard deviation of ``sqrt(16 + 9) * std(exp(theta)) ~ 5 sigma`` while weight 1 (codes 0 and 1) has
  ``sigma``. That amplification of small negative weights is real for two's complement bit slicing, not a
  modelling artefact; differential encoding (``-1`` = one LSB cell in the negative array) does not have it.

Either way the layer's ``cell_gain`` multiplies the cell codes (:meth:`~cimexp.cim.layer.CIMConv2d.cell_codes`)
before the array MAC, so partial sums and ADCs see the varied conductances; the exported
:class:`~cimexp.cim.program.CIMProgram` holds the per-cell gains and ``variation_level``. One draw is one chip
instance: it stays fixed while the context is active, is reproducible from ``seed``, and is removed on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from cimexp.cim.layer import CIMConv2d
from cimexp.cim.network import cim_layers
from cimexp.cim.options import VariationLevel


def sample_cell_gain(
    layer: CIMConv2d, sigma: float, generator: torch.Generator, level: str | VariationLevel = "weight"
) -> torch.Tensor:
    """Log-normal gains ``exp(theta)``, ``theta ~ N(0, sigma^2)``, in the layer's dtype and device: one per weight,
    ``[1, 1, T, R, O]`` (broadcast over polarities and splits), at level ``weight``; one per cell,
    ``[P, S, T, R, O]``, at level ``cell``."""
    level = VariationLevel.parse(level, "level")
    m = layer.mapping
    per_weight = (m.n_row_tiles, m.rows_per_tile, m.out_channels)
    shape = (1, 1, *per_weight) if level is VariationLevel.WEIGHT else (m.n_polarities, m.n_splits, *per_weight)
    theta = torch.randn(shape, generator=generator, dtype=torch.float64) * sigma
    return torch.exp(theta).to(device=layer.weight.device, dtype=layer.weight.dtype)


@contextmanager
def cell_variation(
    module: nn.Module, sigma: float, seed: int = 0, level: str | VariationLevel = "weight"
) -> Iterator[nn.Module]:
    """Program one chip instance with log-normal conductance variation into every CIM layer of ``module``.

    ``sigma`` is the standard deviation of ``theta`` (``sigma=0`` leaves every output unchanged); ``level`` is
    ``"weight"`` (eq. 5: one ``exp(theta)`` per weight, shared by its cells) or ``"cell"`` (one per physical cell,
    scaling its conductance magnitude; see the module docstring). Layers draw their gains in module order from one
    generator seeded with ``seed``, so a (model, sigma, seed, level) tuple is always the same chip. Earlier gains
    (e.g. an enclosing context) are restored on exit. Yields ``module``.
    """
    if not sigma >= 0:
        raise ValueError(f"invalid sigma={sigma!r}; valid values: a float >= 0")
    level = VariationLevel.parse(level, "level")
    layers = [layer for _, layer in cim_layers(module)]
    generator = torch.Generator().manual_seed(int(seed))
    saved = [(layer.cell_gain, layer.variation_level) for layer in layers]
    try:
        for layer in layers:
            layer.cell_gain = sample_cell_gain(layer, float(sigma), generator, level)
            layer.variation_level = level
        yield module
    finally:
        for layer, (gain, gain_level) in zip(layers, saved, strict=True):
            layer.cell_gain, layer.variation_level = gain, gain_level
