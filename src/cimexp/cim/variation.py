"""Memory-cell conductance variation (paper Sec. IV-E, eq. 5), modelled at the cell level.

Every programmed cell's conductance is multiplied by ``exp(theta)``, ``theta ~ N(0, sigma^2)`` i.i.d. per cell
(log-normal variation, Charan et al. 2020). One draw is one chip instance: it stays fixed while the context is
active, is reproducible from ``seed``, and is removed on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from cimexp.cim.layer import CIMConv2d, cim_layers


def sample_cell_gain(layer: CIMConv2d, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Log-normal gains ``exp(theta)``, ``theta ~ N(0, sigma^2)``, one per cell: ``[P, S, T, R, O]``."""
    m = layer.mapping
    shape = (m.n_polarities, m.n_splits, m.n_row_tiles, m.rows_per_tile, m.out_channels)
    theta = torch.randn(shape, generator=generator, dtype=torch.float64) * sigma
    return torch.exp(theta).to(device=layer.weight.device, dtype=layer.weight.dtype)


@contextmanager
def cell_variation(module: nn.Module, sigma: float, seed: int = 0) -> Iterator[nn.Module]:
    """Program one chip instance with log-normal cell variation into every CIM layer of ``module``.

    ``sigma`` is the standard deviation of ``theta`` (``sigma=0`` leaves every output unchanged). Layers draw
    their gains in module order from one generator seeded with ``seed``, so a (model, sigma, seed) triple is
    always the same chip. Earlier gains (e.g. an enclosing context) are restored on exit. Yields ``module``.
    """
    if not sigma >= 0:
        raise ValueError(f"invalid sigma={sigma!r}; valid values: a float >= 0")
    layers = [layer for _, layer in cim_layers(module)]
    generator = torch.Generator().manual_seed(int(seed))
    saved = [layer.cell_gain for layer in layers]
    try:
        for layer in layers:
            layer.cell_gain = sample_cell_gain(layer, float(sigma), generator)
        yield module
    finally:
        for layer, gain in zip(layers, saved, strict=True):
            layer.cell_gain = gain
