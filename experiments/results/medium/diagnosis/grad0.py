"""Gradient scale of the learned steps at initialisation, layer-column vs column-column granularity.

For each granularity, builds and calibrates the medium network, runs one forward/backward pass on the first training
batch and prints, per CIM layer, the relative update ``lr * |grad| / |param|`` (at lr 0.01) of the weight steps,
the partial-sum (ADC) steps and the weights. Where a layer has two weight splits (column-column), it also prints how
the gradients of the two split steps relate: their correlation, ``|g0 + g1| / (|g0| + |g1|)`` and their means.

Run from any directory (CPU, a few minutes):

    python experiments/results/medium/diagnosis/grad0.py
"""

import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import batches, build  # noqa: E402

from cimexp.cim import cim_layers  # noqa: E402

LR = 0.01

t0 = time.time()
x, y = batches(1)[0]
for gran in ["layer_column", "column_column"]:
    cfg, net = build(gran)
    net.train()
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    print(gran, f"loss0 {loss.item():.4f}", f"t={time.time() - t0:.0f}")
    for name, layer in cim_layers(net):
        ws, wg = layer.weight_step, layer.weight_step.grad
        ps, pg = layer.psum_step, layer.psum_step.grad
        # relative update per step at lr 0.01: lr*|g|/|s|
        rel_w_step = (LR * wg.abs() / ws.abs()).mean().item()
        rel_psum_step = (LR * pg.abs() / ps.abs()).mean().item()
        rel_weight = (LR * layer.weight.grad.norm() / layer.weight.norm()).item()
        s = (
            f"{name:22s} w_step {tuple(ws.shape)} rel_upd w_step {rel_w_step:.2e} psum_step {rel_psum_step:.2e}"
            f" weight {rel_weight:.2e}"
        )
        if ws.shape[1] == 2:
            g0, g1 = wg[0, 0].flatten(), wg[0, 1].flatten()
            corr = torch.corrcoef(torch.stack([g0, g1]))[0, 1].item()
            summ = (g0 + g1).abs().mean().item()
            indiv = (g0.abs() + g1.abs()).mean().item()
            s += (
                f" | split grads corr {corr:+.2f} |g0+g1|/(|g0|+|g1|) {summ / indiv:.2f}"
                f" mean g0 {g0.mean():+.2e} g1 {g1.mean():+.2e}"
            )
        print(s)
    sys.stdout.flush()
