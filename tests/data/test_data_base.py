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
        ({"batch_size": 0}, "invalid batch_size=0; valid values: an integer >= 1"),
        ({"batch_size": "abc"}, "invalid batch_size='abc'; valid values: an integer >= 1"),
        ({"batch_size": 2.5}, "invalid batch_size=2.5; valid values: an integer >= 1"),
        ({"batch_size": True}, "invalid batch_size=True"),
        ({"eval_batch_size": 0}, r"invalid eval_batch_size=0; valid values: an integer >= 1 or null \(batch_size\)"),
        ({"train_subset": 0}, r"invalid train_subset=0; valid values: an integer in \[1, 1024\] or null \(the full"),
        ({"train_subset": 2000}, r"invalid train_subset=2000; valid values: an integer in \[1, 1024\]"),
        ({"val_subset": "10"}, r"invalid val_subset='10'; valid values: an integer in \[1, 256\]"),
        ({"num_workers": -1}, "invalid num_workers=-1; valid values: an integer >= 0"),
        ({"num_workers": "4"}, "invalid num_workers='4'"),
        ({"seed": "x"}, r"invalid seed='x'; valid values: an integer >= 0 or null \(a random seed\)"),
        ({"augment": "no"}, "invalid augment='no'; valid values: true, false"),
        ({"num_classes": "ten"}, "invalid num_classes='ten'"),
        ({"val_size": 5}, "invalid val_size=5; valid values: an integer >= 10"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    """Every argument is checked at construction, before any data is made or read, naming the value and the valid
    range (the subsets against the split sizes: 1024 training and 256 evaluation images by default)."""
    with pytest.raises(ValueError, match=message):
        SyntheticDataModule(**kwargs)


def test_seed_none_draws_a_seed():
    dm = SyntheticDataModule(seed=None, train_size=20, val_size=10, image_size=4)
    assert isinstance(dm.seed, int)
    dm.setup()
    assert len(next(iter(dm.train_dataloader()))[0]) == 20


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


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_loader_resumed_inside_an_epoch_yields_the_rest_of_that_epoch(num_workers):
    """A training loader's state taken after 2 batches of epoch 1 and loaded into a fresh loader (as Lightning does
    on resume, creating the iterator before it sets the epoch) yields exactly the 3 remaining batches of epoch 1,
    augmentation included, in the main process and in workers; the skip applies to that epoch only."""

    def loader():
        data = SyntheticDataModule(image_size=8, train_size=40, val_size=10, batch_size=8, num_workers=num_workers)
        data.setup()
        return data.train_dataloader()

    straight = loader()
    straight.sampler.set_epoch(1)
    batches = iter(straight)
    [next(batches) for _ in range(2)]
    state = straight.state_dict()
    rest = list(batches)
    assert state == {"epoch": 1, "batches": 2} and len(rest) == 3

    resumed = loader()
    resumed.load_state_dict(state)
    batches = iter(resumed)
    resumed.sampler.set_epoch(1)
    got = list(batches)
    assert len(got) == 3
    assert all(torch.equal(g[0], r[0]) and torch.equal(g[1], r[1]) for g, r in zip(got, rest, strict=True))
    assert resumed.state_dict() == {"epoch": 1, "batches": 5}
    resumed.sampler.set_epoch(2)
    assert len(list(resumed)) == 5
