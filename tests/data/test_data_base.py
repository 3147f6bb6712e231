"""The shared DataModule base: argument checks and class-balanced subsets."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from cimexp.data import SyntheticDataModule, class_balanced_subset


def test_class_balanced_subset_spreads_the_remainder():
    targets = torch.arange(100) % 3
    indices = class_balanced_subset(targets, 10, seed=0)
    assert torch.bincount(targets[indices]).tolist() == [4, 3, 3]
    assert torch.equal(indices, indices.sort().values) and len(indices.unique()) == 10
    assert torch.equal(indices, class_balanced_subset(targets, 10, seed=0))


def test_class_balanced_subset_rejects_impossible_sizes():
    targets = torch.tensor([0, 0, 0, 1])
    with pytest.raises(ValueError, match=r"subset size must be in \[1, 4\]"):
        class_balanced_subset(targets, 5, seed=0)
    with pytest.raises(ValueError, match="class 1 has 1 items but a balanced subset of 4 needs 2 of each"):
        class_balanced_subset(targets, 4, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer; got 0"),
        ({"train_subset": 0}, "train_subset must be a positive integer or None"),
        ({"num_workers": -1}, "num_workers must be >= 0; got -1"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticDataModule(**kwargs)


def test_eval_batch_size_defaults_to_batch_size():
    dm = SyntheticDataModule(batch_size=16, val_size=40)
    dm.setup()
    assert dm.eval_batch_size == 16 and len(next(iter(dm.val_dataloader()))[0]) == 16
    assert SyntheticDataModule(batch_size=16, eval_batch_size=64).eval_batch_size == 64


def test_dataloaders_need_setup():
    with pytest.raises(RuntimeError, match=r"setup\(\) must run before"):
        SyntheticDataModule().train_dataloader()


def test_construction_does_not_keep_the_callers_frame_alive():
    """A persistent-worker loader in that frame would otherwise be shut down by gc later, stalling 5 s."""

    class Sentinel:
        pass

    def build() -> weakref.ref:
        sentinel = Sentinel()
        SyntheticDataModule()
        return weakref.ref(sentinel)

    gc.disable()
    try:
        assert build()() is None
    finally:
        gc.enable()
