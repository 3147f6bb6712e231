"""The networks with the real CIM layer: building, training step, and fine-tuning from a float checkpoint."""

from __future__ import annotations

import functools

import pytest
import torch

from cimexp.cim import CIMConv2d, calibrate
from cimexp.models import load_float_weights, resnet20, swap_convs


def test_resnet20_with_cim_layer_runs_forward_backward():
    torch.manual_seed(0)
    model = resnet20(conv_layer=functools.partial(CIMConv2d, array_size=128))
    assert sum(isinstance(m, CIMConv2d) for m in model.modules()) == 18
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert model.layer3[2].conv2.weight.grad is not None
    assert model.layer3[2].conv2.weight_step.grad is not None


def test_float_checkpoint_loads_into_cim_model(tmp_path):
    float_model = resnet20()
    torch.save({"state_dict": {f"model.{k}": v for k, v in float_model.state_dict().items()}}, tmp_path / "f.ckpt")
    cim_model = resnet20(conv_layer=CIMConv2d)
    assert load_float_weights(cim_model, tmp_path / "f.ckpt") == len(float_model.state_dict())
    assert torch.equal(cim_model.layer2[0].conv1.weight, float_model.layer2[0].conv1.weight)

    swapped = swap_convs(resnet20(), functools.partial(CIMConv2d, adc_bits=3), skip=["conv1"])
    load_float_weights(swapped, tmp_path / "f.ckpt")
    assert isinstance(swapped.layer1[0].conv1, CIMConv2d) and swapped.layer1[0].conv1.adc_bits == 3
    swapped.eval()
    assert swapped(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow  # 60 s of tracing on 2 cores (training and validation graphs)
@pytest.mark.parametrize("train", [True, False])
def test_cim_resnet20_compiles_to_one_graph_and_matches_eager(train):
    """No graph breaks and no host syncs in a calibrated CIM network (``fullgraph=True``), so a whole training step
    can be captured (CUDA graphs, ``model.compile_mode=reduce-overhead``); outputs and gradients equal eager's.
    The ``aot_eager`` backend traces forward and backward exactly as inductor would, without code generation."""
    torch.manual_seed(0)
    model = resnet20(conv_layer=functools.partial(CIMConv2d, array_size=128)).double()
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64)
    calibrate(model, x)
    model.train(train)
    results = []
    for net in (model, torch.compile(model, backend="aot_eager", fullgraph=True)):
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(train):
            out = net(x)
            if train:
                out.square().sum().backward()
        results.append([out.detach(), *(p.grad for p in model.parameters() if train)])
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)


def test_building_on_the_crossbars_draws_no_random_numbers() -> None:
    """A CIM network starts from the float network's weights, and leaves the random stream where the float one does
    (one way to build: float, then :func:`cimexp.models.swap.on_crossbars`)."""
    torch.manual_seed(3)
    float_model = resnet20()
    after_float = torch.rand(4)
    torch.manual_seed(3)
    cim_model = resnet20(conv_layer=functools.partial(CIMConv2d, adc_bits=3))
    assert torch.equal(torch.rand(4), after_float)
    floats = float_model.state_dict()
    for key, value in cim_model.state_dict().items():
        if key in floats:
            assert torch.equal(value, floats[key]), key
