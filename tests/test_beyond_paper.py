"""Issue 5 from the command line: ADC non-idealities, bit-serial inputs, partial-sum telemetry and variation-aware
training, as training runs on tiny synthetic data."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cimexp.cim import CIMConv2d, cim_layers
from cimexp.run.callbacks import VariationAwareTraining
from cimexp.run.config import validate_train as validate_config
from cimexp.train import train


@pytest.fixture
def run(make_cfg, tiny_data, quiet):
    """``run(overrides, subdir)``: one epoch on tiny synthetic data into ``tmp_path / subdir``."""
    return lambda overrides, subdir: train(make_cfg([*tiny_data, *quiet, "trainer.max_epochs=1", *overrides], subdir))


def _logged_columns(run_dir: Path) -> set[str]:
    (metrics_csv,) = run_dir.rglob("metrics.csv")
    with metrics_csv.open() as f:
        return {key for row in csv.DictReader(f) for key, value in row.items() if value}


def test_noise_aware_bit_serial_training_with_telemetry(run, tmp_path: Path) -> None:
    overrides = ["logger=csv", "adc.noise_lsb=0.5", "adc.offset_lsb=0.2", "cim.dac_bits=2", "telemetry.every_n_steps=1"]
    _, objects = run(overrides, "noisy")
    results = objects["results"]
    layers = dict(cim_layers(objects["module"].model))
    assert results["adc_errors"]["noise_lsb"] == 0.5 and results["adc_errors"]["offset_lsb"] == 0.2
    assert all(layer.adc_state is not None and layer.n_input_cycles == 2 for layer in layers.values())
    assert {row["input_cycles"] for row in results["cim_summary"]["layers"]} == {2}

    telemetry = results["psum_telemetry"]
    assert telemetry.keys() == layers.keys()
    for summary in telemetry.values():
        assert 0 <= summary["clip_rate"] <= 1 and 0 < summary["code_utilization"] <= 1 and summary["conversions"] > 0
    columns = _logged_columns(tmp_path / "noisy")
    assert {"telemetry/clip_rate", "val_telemetry/clip_rate", "cim/adc_energy_pj", "cim/adc_conversions"} <= columns


def test_validation_telemetry_records_the_first_val_batches(run) -> None:
    _, objects = run(["logger=none", "telemetry.val_batches=1", "telemetry.every_n_steps=0"], "one")
    per_image = {row["name"]: row["adc_conversions"] for row in objects["results"]["cim_summary"]["layers"]}
    telemetry = objects["results"]["psum_telemetry"]
    assert {name: s["conversions"] for name, s in telemetry.items()} == {n: 8 * c for n, c in per_image.items()}


def test_telemetry_off_records_nothing(run) -> None:
    _, objects = run(["logger=none", "telemetry.every_n_steps=0", "telemetry.validation=false"], "off")
    assert objects["results"]["psum_telemetry"] is None
    assert all(layer.psum_stats is None for _, layer in cim_layers(objects["module"].model))


def test_variation_aware_training_is_seeded_and_leaves_the_nominal_chip(run) -> None:
    weights = {}
    for name, sigma in (("plain", 0.0), ("aware", 0.3), ("aware_again", 0.3)):
        _, objects = run(["logger=none", f"variation.train_sigma={sigma}"], name)
        model = objects["module"].model
        assert all(layer.cell_gain is None for _, layer in cim_layers(model))  # removed after every step
        assert objects["results"]["variation"] == {"train_sigma": sigma, "level": "weight"}
        weights[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(weights["aware"], weights["aware_again"])
    assert not torch.allclose(weights["aware"], weights["plain"])


@pytest.mark.parametrize("level", ["weight", "cell"])
def test_variation_aware_training_draws_at_the_configured_level(level: str) -> None:
    """Per weight: ``[1, 1, T, R, O]`` gains broadcast over the cells; per cell: ``[P, S, T, R, O]``; both reproducible
    from (seed, step) and removed after the step."""
    model = torch.nn.Sequential(CIMConv2d(4, 8, 3, array_size=36))
    callback = VariationAwareTraining(sigma=0.2, seed=1, level=level)
    trainer = SimpleNamespace(global_step=5)
    callback.on_train_batch_start(trainer, model, None, 0)
    layer, m = model[0], model[0].mapping
    per_weight = (m.n_row_tiles, m.rows_per_tile, 8)
    assert layer.cell_gain.shape == ((1, 1) if level == "weight" else (m.n_polarities, m.n_splits)) + per_weight
    assert layer.variation_level.value == level
    gain = layer.cell_gain
    callback.on_train_batch_end(trainer, model)
    assert layer.cell_gain is None and layer.variation_level is None
    callback.on_train_batch_start(trainer, model, None, 0)
    assert torch.equal(layer.cell_gain, gain)
    with pytest.raises(ValueError, match="invalid variation.level 'die'; valid choices: weight, cell"):
        VariationAwareTraining(sigma=0.2, level="die")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("adc.gain_sigma=-0.1", "gain_sigma=-0.1"),
        ("adc.share=0", "share=0"),
        ("cim.dac_bits=5", "dac_bits=5"),
        ("variation.level=chip", "invalid variation.level 'chip'; valid choices: weight, cell"),
    ],
)
def test_bad_settings_fail_before_training(make_cfg, override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_config(make_cfg([override]))
