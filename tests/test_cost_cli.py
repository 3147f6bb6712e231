"""``python -m cimexp.cost``: the cost table of a configuration without training; the ``cost`` config node in
validation and in a training run's results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cimexp.run.summary
from cimexp.cost import cost_summary, main
from cimexp.run.config import compose
from cimexp.run.config import validate_train as validate_config
from cimexp.train import train

# ResNet-20's CIM layers on 32x32 images (W4 on 2-bit cells: S = 2, P = 1; 128x128 arrays: 14 channels per tile):
# layer1: 6 x 16->16 at 32x32 (T = 2); layer2: 16->32 at 16x16 (T = 2), 5 x 32->32 (T = 3); layer3: 32->64 at 8x8
# (T = 3), 5 x 64->64 (T = 5). Conversions per image = H_out * W_out * T * O * S.
RESNET20_CONVERSIONS = 6 * 65_536 + 256 * 2 * 32 * 2 + 5 * 256 * 3 * 32 * 2 + 64 * 3 * 64 * 2 + 5 * 64 * 5 * 64 * 2


def test_cli_prints_the_layers_and_totals_as_a_user_types_it():
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    args = [sys.executable, "-m", "cimexp.cost", "adc=5bit", "granularity=layer_layer", "cost.adc_model=isaac"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert RESNET20_CONVERSIONS == 901_120
    assert sum(line.startswith("layer") for line in lines) == 1 + 18  # header + 18 CIM layers
    assert "adc5" in lines[0] and "w:layer/p:layer" in lines[0]
    # isaac at 5 bits: 0.99 pJ per conversion
    assert f"total: 901,120 ADC conversions, {901_120 * 0.99 / 1e6:.4g} uJ per image, 5,056 ADCs" in done.stdout
    assert "ADC model isaac" in done.stdout and "Shafiee" in done.stdout


def test_cli_summary_is_the_results_summary_of_the_configuration():
    summary = cost_summary(compose("train", ["cost.adc_share=4"]))
    assert (summary["model"], summary["data"], summary["input_size"]) == ("resnet20", "cifar10", 32)
    total = summary["total"]
    assert total["adc_conversions"] == RESNET20_CONVERSIONS and total["cim_layers"] == 18
    assert total["n_adcs"] < 5_056 / 3  # 4 columns per ADC; partly used ADCs round up
    assert total["cost_model"]["name"] == "zigzag" and total["cost_model"]["adc_share"] == 4
    imagenet = cost_summary(compose("train", ["experiment=paper_resnet18_imagenet", "model.init_from=/nowhere.ckpt"]))
    assert imagenet["input_size"] == 224 and imagenet["layers"][0]["out_hw"] == [56, 56]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("cost.adc_model=murmann", "invalid cost.adc_model='murmann'; valid choices: zigzag, walden, isaac"),
        ("adc=9bit", "adc"),
    ],
)
def test_cli_errors_name_the_bad_value(override, message, capsys):
    assert main([override]) == 2
    assert message in capsys.readouterr().err


def test_cli_float_model_has_nothing_to_cost(capsys):
    assert main(["cim=none"]) == 0
    assert "no CIM layers" in capsys.readouterr().out


def test_validate_config_rejects_a_bad_cost_model_before_training(make_cfg):
    with pytest.raises(ValueError, match="valid choices: zigzag, walden, isaac"):
        validate_config(make_cfg(["cost.adc_model=murmann"]))
    with pytest.raises(ValueError, match=r"no 3-bit ADC; valid adc_bits: 4\.\.10"):
        validate_config(make_cfg(["adc=3bit", "cost.adc_model=isaac"]))
    validate_config(make_cfg(["adc=3bit", "cost.adc_model=walden", "cim=none"]))


def test_training_results_and_log_summary_carry_the_adc_costs(make_cfg, tiny_data, quiet, tmp_path: Path):
    overrides = [*tiny_data, *quiet, "debug=fdr", "cost.adc_model=walden", "cost.adc_share=2"]
    _, objects = train(make_cfg(overrides))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    total = results["cim_summary"]["total"]
    assert total["cost_model"]["name"] == "walden" and total["cost_model"]["adc_share"] == 2
    layers = results["cim_summary"]["layers"]
    for key in ("adc_conversions", "adc_energy_pj", "adc_area_um2", "n_adcs"):
        assert total[key] == pytest.approx(sum(row[key] for row in layers)) and total[key] > 0, key
    logged = cimexp.run.summary.log_summary([], objects["results"])
    assert logged["cim/adc_energy_pj"] == total["adc_energy_pj"] and logged["cim/cost_model"]["name"] == "walden"
