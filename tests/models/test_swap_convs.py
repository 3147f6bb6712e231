"""swap_convs (selection rules, weight copy) and load_float_weights (strictness on float tensors)."""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cimexp.cim import CIMConv2d, convert
from cimexp.models import load_float_weights, resnet20, swap_convs


class StepConv(nn.Conv2d):
    """Stand-in for a CIM layer: an ``nn.Conv2d`` subclass with an extra per-column step-size parameter."""

    built = 0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.step = nn.Parameter(torch.full((self.out_channels,), 0.5))
        StepConv.built += 1


def _small_net(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=True),
        nn.BatchNorm2d(4),
        nn.Sequential(nn.Conv2d(4, 4, 1, stride=2), nn.ReLU()),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 2),
    ).to(dtype)


def test_swap_copies_weights_settings_dtype_and_mode():
    model = _small_net(torch.float64).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    swap_convs(model, StepConv)
    assert isinstance(model[0], StepConv) and isinstance(model[2][0], StepConv)
    assert model[2][0].stride == (2, 2) and model[0].padding == (1, 1)
    assert model[0].weight.dtype == torch.float64 and not model[0].training
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert set(after) - set(before) == {"0.step", "2.0.step"}


def test_skip_uses_fullmatch_on_dotted_names():
    model = resnet20()
    swap_convs(model, StepConv, skip=["conv1"])
    assert type(model.conv1) is nn.Conv2d
    assert isinstance(model.layer1[0].conv1, StepConv)
    swap_convs(model := resnet20(), StepConv, skip=[r"layer1\..*"])
    assert type(model.layer1[2].conv2) is nn.Conv2d and isinstance(model.layer2[0].conv1, StepConv)


def test_filter_fn_gets_module_and_name():
    model = resnet20()
    seen = []

    def only_stride_two(module: nn.Module, name: str) -> bool:
        seen.append(name)
        return module.stride == (2, 2)

    swap_convs(model, StepConv, filter_fn=only_stride_two)
    swapped = [n for n, m in model.named_modules() if isinstance(m, StepConv)]
    assert swapped == ["layer2.0.conv1", "layer3.0.conv1"]
    assert "layer1.0.conv2" in seen


def test_swap_never_rewraps_swapped_layers():
    model = swap_convs(resnet20(), StepConv)
    count = StepConv.built
    swap_convs(model, StepConv)
    assert StepConv.built == count


def test_swap_passes_groups_and_rejects_other_padding_modes_by_name():
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    weight = grouped[0].weight.detach().clone()
    swap_convs(grouped, StepConv)
    assert type(grouped[0]) is StepConv and grouped[0].groups == 2 and torch.equal(grouped[0].weight, weight)
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match=r"conv '0': padding_mode='reflect'"):
        swap_convs(model, StepConv)
    swap_convs(model, StepConv, skip=["0"])


def test_swap_of_root_conv_returns_replacement():
    assert isinstance(swap_convs(nn.Conv2d(2, 3, 1), StepConv), StepConv)


@pytest.mark.parametrize("lightning_format", [False, True])
def test_load_float_weights_into_cim_model(tmp_path, lightning_format):
    float_model = resnet20()
    state = float_model.state_dict()
    payload = {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3} if lightning_format else state
    path = tmp_path / "float.ckpt"
    torch.save(payload, path)

    cim_model = resnet20(conv_layer=StepConv)
    assert load_float_weights(cim_model, path) == len(state)
    loaded = cim_model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert torch.equal(cim_model.layer1[0].conv1.step, torch.full((16,), 0.5))


def test_a_float_run_exported_in_half_precision_loads_into_a_cim_model(tmp_path):
    """experiments/results/networks/export_float.py: a run directory's last.ckpt -> a half-precision state_dict,
    half the size, which loads into the CIM network with the float weights rounded to half precision."""
    float_model = resnet20()
    state = float_model.state_dict()
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    payload = {"state_dict": {f"model.{k}": v for k, v in state.items()}, "optimizer_states": [{"m": torch.ones(9)}]}
    torch.save(payload, tmp_path / "run" / "checkpoints" / "last.ckpt")
    torch.save(state, tmp_path / "fp32.pt")
    script = Path(__file__).resolve().parents[2] / "experiments" / "results" / "networks" / "export_float.py"
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run"), str(tmp_path / "out" / "float.pt")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and f"{len(state)} tensors" in result.stdout, result.stderr
    assert (tmp_path / "out" / "float.pt").stat().st_size < 0.6 * (tmp_path / "fp32.pt").stat().st_size

    cim_model = resnet20(conv_layer=StepConv)
    assert load_float_weights(cim_model, tmp_path / "out" / "float.pt") == len(state)
    loaded = cim_model.state_dict()
    assert all(torch.equal(loaded[k], v.half().to(v.dtype) if v.is_floating_point() else v) for k, v in state.items())
    assert loaded["conv1.weight"].dtype == torch.float32

    missing = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "nothing"), str(tmp_path / "x.pt")], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "no checkpoint at" in missing.stderr


def test_load_float_weights_rejects_unexpected_keys(tmp_path):
    state = resnet20().state_dict() | {"extra.weight": torch.zeros(1)}
    torch.save(state, tmp_path / "bad.pt")
    model = resnet20(conv_layer=StepConv)
    before = model.layer1[0].conv1.weight.clone()
    with pytest.raises(ValueError, match=r"1 unexpected checkpoint keys \[extra.weight\]"):
        load_float_weights(model, tmp_path / "bad.pt")
    assert torch.equal(model.layer1[0].conv1.weight, before)


def test_load_float_weights_rejects_missing_float_tensors(tmp_path):
    state = resnet20().state_dict()
    del state["layer2.1.bn2.running_var"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"1 float tensors of the model missing from it \[layer2.1.bn2.running_var\]"):
        load_float_weights(resnet20(conv_layer=StepConv), tmp_path / "partial.pt")


def test_swap_convs_from_conv_and_convert_rebuild_a_conv_alike():
    """One rebuild path (``cimexp.cim.rebuild.rebuild_conv``): the three ways onto the crossbars build equal layers."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, stride=2, padding=1, bias=True).double().eval()
    options = {"array_size": 36, "adc_bits": 3, "weight_granularity": "layer"}
    direct = CIMConv2d.from_conv(conv, **options)
    swapped = swap_convs(copy.deepcopy(conv), functools.partial(CIMConv2d, **options))
    converted = nn.Sequential(copy.deepcopy(conv))
    convert(converted, keep="none", **options)
    for layer in (swapped, converted[0]):
        assert type(layer) is CIMConv2d and repr(layer) == repr(direct) and not layer.training
        state, reference = layer.state_dict(), direct.state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], v) for k, v in reference.items() if isinstance(v, torch.Tensor))
        assert layer.weight.dtype == torch.float64 and torch.equal(layer.weight, conv.weight)
