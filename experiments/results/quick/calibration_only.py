"""Post-training quantization check (no fine-tuning): the shipped float ResNet-20 converted to every CIM scheme, steps
calibrated on one 128-image training batch (BatchNorm keeps its float statistics), top-1 on the first 2,000 test
images. Run from the repository root: python experiments/results/quick/calibration_only.py (~2 min, 1 core)."""

import itertools
import json
from functools import partial
from pathlib import Path

import numpy as np
import torch

from cimexp.cim import CIMConv2d
from cimexp.models import load_float_weights, resnet20

torch.set_num_threads(1)
torch.manual_seed(0)
mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
d = np.load("/work/shared/data/cifar10/test.npz")
n = 2000
x = ((torch.tensor(d["images"][:n]).permute(0, 3, 1, 2).float() / 255) - mean) / std
y = torch.tensor(d["labels"][:n])
tr = np.load("/work/shared/data/cifar10/train.npz")
xb = ((torch.tensor(tr["images"][:128]).permute(0, 3, 1, 2).float() / 255) - mean) / std
out = {}
for wg, pg in list(itertools.product(["layer", "array", "column"], ["layer", "array", "column", "none"])):
    net = resnet20(
        num_classes=10,
        conv_layer=partial(
            CIMConv2d, weight_granularity=wg, psum_granularity="layer" if pg == "none" else pg, psum_quant=pg != "none"
        ),
    )
    load_float_weights(net, "checkpoints/resnet20_cifar10_float.pt")
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()  # keep the float BN statistics
    net.train()
    with torch.no_grad():
        net(xb)
    net.eval()
    with torch.no_grad():
        acc = sum((net(x[i : i + 500]).argmax(1) == y[i : i + 500]).sum().item() for i in range(0, n, 500)) / n
    out[f"{wg}/{pg}"] = round(100 * acc, 2)
    print(wg, pg, out[f"{wg}/{pg}"], flush=True)
Path("experiments/results/quick/calibration_only.json").write_text(json.dumps(out, indent=1))
