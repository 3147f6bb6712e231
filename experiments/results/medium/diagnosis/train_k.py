"""Drift of the split weight steps over the first K training steps of the medium experiment.

Builds and calibrates the medium network (seed 0), trains it for K SGD steps (lr 0.01, momentum 0.9) on the first K
training batches, and every 10 steps prints weight statistics averaged over the CIM layers:

- ``carry-mismatch``: fraction of weights whose 4-bit code (round, clamp to [-8, 7]) differs between the two splits'
  weight steps;
- ``rel.w.err``: relative squared error of the effective (quantised, recombined) weights against the float weights;
- ``|log s0/s1|``: mean absolute log ratio of the two splits' weight steps (0 with a single split).

At the end it prints the number of negative weight steps, the per-step losses, the mean loss over steps 0-9, 10-19 and
20-29, and the mean relative change of each kind of learned step.

Usage, from any directory (CPU):

    python experiments/results/medium/diagnosis/train_k.py VARIANT [K]

VARIANT is ``lc...`` (layer-column granularity) or otherwise column-column, with two special cases: ``cc_tied`` ties
the two splits' weight steps to their mean, ``cc_frozen`` does not train the weight steps. K defaults to 30.
"""

import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import batches, build, optimizer  # noqa: E402

from cimexp.cim import CIMConv2d, cim_layers  # noqa: E402
from cimexp.cim.quant import effective_step  # noqa: E402

variant = sys.argv[1]
K = int(sys.argv[2]) if len(sys.argv) > 2 else 30
gran = "layer_column" if variant.startswith("lc") else "column_column"


def tied_weight_step_full(self):
    """``CIMConv2d._weight_step_full`` with each split's effective step replaced by the mean over the splits."""
    if not self.weight_step_ready:
        self._init_weight_step()
    m = self.mapping
    n_per_step = self.weight.numel() * self.weight_step.shape[:2].numel() / self.weight_step.numel()
    step = effective_step(self.weight_step, n_per_step, float(m.weight_range()[1]))
    step = step.mean(1, keepdim=True)
    return m.expand_step(step, self.weight_granularity)


if variant == "cc_tied":
    CIMConv2d._weight_step_full = tied_weight_step_full


def weight_stats(net):
    """``(carry-mismatch, rel.w.err, |log s0/s1|)`` of ``net``, averaged over its CIM layers (see the docstring)."""
    mism, err, n, spread = 0, 0.0, 0, []
    with torch.no_grad():
        for _, layer in cim_layers(net):
            m = layer.mapping
            s_w = layer._weight_step_full()  # [P,S,T,O]
            codes = layer.cell_codes(s_w)  # [P,S,O,T,R]
            sh = layer.split_shift.reshape(1, -1, 1, 1, 1)
            weff = (codes * sh * s_w.permute(0, 1, 3, 2).unsqueeze(-1)).sum(1)[0]  # [O,T,R]
            w = m.tile_rows(layer.weight)
            u = w.unsqueeze(0) / s_w[0].permute(0, 2, 1).unsqueeze(-1)  # [S,O,T,R]
            q = torch.clamp(torch.round(u), -8, 7)
            mism += (q[0] != q[1]).sum().item()
            n += w.numel()
            err += ((weff - w) ** 2).sum().item() / (w**2).sum().item() * w.numel()
            ws = layer.weight_step
            r = (ws[0, 0].abs() / ws[0, 1].abs()) if ws.shape[1] == 2 else torch.ones(1)
            spread.append(r.log().abs().mean().item())
    return mism / n, err / n, sum(spread) / len(spread)


def stats_line(k):
    mismatch, rel_err, log_spread = weight_stats(net)
    return f"step {k:3d} carry-mismatch {mismatch:.4f} rel.w.err {rel_err:.4f} |log s0/s1| {log_spread:.4f}"


cfg, net = build(gran)
steps0 = {n: p.detach().clone() for n, p in net.named_parameters() if n.endswith("_step")}
if variant == "cc_frozen":
    for n, p in net.named_parameters():
        if n.endswith("weight_step"):
            p.requires_grad_(False)
opt = optimizer(net)
net.train()
bs = batches(K)
losses = []
t0 = time.time()
for k, (x, y) in enumerate(bs):
    if k % 10 == 0:
        print(stats_line(k), flush=True)
    loss = F.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
print(stats_line(K))

rel = {}
for n, p in net.named_parameters():
    if n in steps0:
        kind = n.split(".")[-1]
        rel.setdefault(kind, []).append(((p.detach() - steps0[n]).abs() / steps0[n].abs()).mean().item())
neg = sum((p.detach() < 0).sum().item() for n, p in net.named_parameters() if n.endswith("weight_step"))
tot = sum(p.numel() for n, p in net.named_parameters() if n.endswith("weight_step"))
print("negative weight steps", neg, "/", tot)
print(variant, "losses", " ".join(f"{x:.2f}" for x in losses))
mean0, mean1, mean2 = (sum(losses[i : i + 10]) / 10 for i in (0, 10, 20))
print(variant, f"mean loss 0-9 {mean0:.3f} 10-19 {mean1:.3f} 20-29 {mean2:.3f}")
print(
    variant,
    "mean rel change of steps",
    {k: f"{sum(v) / len(v):.2e}" for k, v in rel.items()},
    f"time {time.time() - t0:.0f}",
)
