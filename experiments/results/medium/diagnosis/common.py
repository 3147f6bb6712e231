"""Shared helpers for the medium-experiment diagnosis scripts (``grad0.py``, ``train_k.py``).

Builds the ``experiment=medium`` network (seed 0, no logger) for a given weight-step granularity, calibrates it on
one training batch, caches the first training batches, and builds the SGD optimizer used in training. Not meant to be
run directly; import it from a script in this folder.

Importing this module sets ``CIMEXP_DATA`` (unless already set) to ``<repo>/../shared/data/cifar10`` and limits
torch to one CPU thread.
"""

import itertools
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
# <repo>/experiments/results/medium/diagnosis -> <repo>/../shared/data/cifar10; set before cimexp is imported.
os.environ.setdefault("CIMEXP_DATA", os.path.join(_HERE, *[".."] * 5, "shared", "data", "cifar10"))

import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from cimexp.run.build import build_net  # noqa: E402
from cimexp.run.classifier import calibrate_network, weight_decay_split  # noqa: E402
from cimexp.run.config import compose  # noqa: E402

torch.set_num_threads(1)

CALIBRATION = {"weight": "mse", "psum": "percentile", "act": "mse", "percentile": 99.99}


def get_cfg(gran):
    """The composed ``train`` config of the medium experiment at weight-step granularity ``gran``."""
    return compose("train", ["experiment=medium", f"granularity={gran}", "seed=0", "logger=none"])


_batches = None


def batches(n):
    """The first ``n`` training batches (loaded once and cached; the data pipeline does not depend on granularity)."""
    global _batches
    if _batches is None or len(_batches) < n:
        cfg = get_cfg("layer_column")
        dm = instantiate(cfg.data)
        dm.setup("fit")
        _batches = list(itertools.islice(dm.train_dataloader(), n))
    return _batches[:n]


def build(gran):
    """``(cfg, net)``: the medium network at granularity ``gran`` (seed 0), calibrated on the first batch."""
    cfg = get_cfg(gran)
    torch.manual_seed(0)
    net = build_net(cfg, 10)
    first_images = batches(1)[0][0]
    calibrate_network(net, [first_images], CALIBRATION, 1, 0)
    return cfg, net


def optimizer(net, lr=0.01, wd=5e-4, no_decay=("steps", "norms", "biases")):
    """SGD (momentum 0.9) with weight decay ``wd`` on all parameters except the groups in ``no_decay``."""
    decay, nod = weight_decay_split(net, no_decay)
    return torch.optim.SGD(
        [{"params": list(decay.values())}, {"params": list(nod.values()), "weight_decay": 0.0}],
        lr=lr,
        momentum=0.9,
        weight_decay=wd,
    )
