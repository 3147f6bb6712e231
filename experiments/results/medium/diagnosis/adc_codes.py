"""Why a trained checkpoint reads ~10%: where its ADC inputs fall, and how far SGD still moves its steps.

For each checkpoint given (a run directory of the medium grids, or its ``checkpoints/last.ckpt``), prints the
logits' spread over the first 256 test images and, per CIM layer: the ADC step (integer-MAC units, first entry), the
share of conversions whose rounded input is 0 (the ADC reads code 0) and the clip rate, in eval mode; then, in train
mode on the first training batch, the relative SGD update ``lr * |grad| / |step|`` (lr 0.01) of the ADC, weight and
activation steps.

    python experiments/results/medium/diagnosis/adc_codes.py \
        "logs/sweeps/granularity_grid/medium_3bit/granularity=layer_layer,seed=0" \
        "logs/sweeps/granularity_grid/medium/granularity=layer_layer,seed=0" ...
"""

import os
import sys

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import batches  # noqa: E402  (sets CIMEXP_DATA and one thread)

from cimexp.cim import cim_layers, start_telemetry, stop_telemetry  # noqa: E402
from cimexp.run.build import build_trained_net, load_checkpoint  # noqa: E402
from cimexp.run.config import compose  # noqa: E402

LR = 0.01

dm = instantiate(compose("train", ["experiment=medium", "logger=none"]).data)
dm.setup("validate")
test_images = next(iter(dm.val_dataloader()))[0][:256]
train_images, train_labels = batches(1)[0]

for path in sys.argv[1:]:
    net = build_trained_net(load_checkpoint(path), 10).eval()
    start_telemetry(net)
    with torch.no_grad():
        logits = net(test_images)
    stats = stop_telemetry(net)
    net.train()
    loss = F.cross_entropy(net(train_images), train_labels)
    loss.backward()
    print(f"{path}\n  logit std over images {logits.std(0).mean().item():.3f}, train-batch loss {loss.item():.3f}")
    print(
        f"  {'layer':16s} {'ADC step':>9s} {'code 0':>7s} {'clip':>6s} |"
        f" relative update: {'ADC':>8s} {'weight':>8s} {'act':>8s}"
    )
    for name, layer in cim_layers(net):
        s = stats[name]
        zero = (s.counts[:, s.hist_range].sum() / s.counts.sum()).item()

        def rel(p):
            return (LR * p.grad.abs() / p.detach().abs()).mean().item()

        print(
            f"  {name:16s} {layer.psum_step.detach().flatten()[0].item():9.3f} {zero:7.3f}"
            f" {s.summary()['clip_rate']:6.3f}"
            f" | {rel(layer.psum_step):25.1e} {rel(layer.weight_step):8.1e} {rel(layer.act_step):8.1e}"
        )
