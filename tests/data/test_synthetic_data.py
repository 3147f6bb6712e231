"""The synthetic DataModule: reproducible, balanced, and learnable by a tiny model in a few steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cimexp.data import SyntheticDataModule


def test_synthetic_is_learnable_in_a_few_steps():
    dm = SyntheticDataModule(num_classes=10, train_size=512, val_size=200, batch_size=32, seed=0)
    dm.setup()
    torch.manual_seed(0)
    model = nn.Sequential(nn.AvgPool2d(8), nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for images, labels in dm.train_dataloader():
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in dm.val_dataloader())
    assert correct / 200 > 0.5  # chance is 0.1


def test_synthetic_is_seeded_balanced_and_sized():
    def build(seed: int) -> SyntheticDataModule:
        dm = SyntheticDataModule(num_classes=4, image_size=16, train_size=40, val_size=12, seed=seed)
        dm.setup()
        return dm

    dm = build(0)
    assert dm.train_set.images.shape == (40, 3, 16, 16) and len(dm.val_set) == 12
    assert torch.bincount(dm.train_set.targets).tolist() == [10] * 4
    assert (dm.name, dm.num_classes) == ("synthetic", 4)
    assert torch.equal(dm.train_set.images, build(0).train_set.images)
    assert not torch.equal(dm.train_set.images, build(1).train_set.images)
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (40, 3, 16, 16) and images.dtype == torch.float32


def test_synthetic_rejects_too_few_images():
    with pytest.raises(ValueError, match="invalid val_size=5; valid values: an integer >= 10"):
        SyntheticDataModule(val_size=5)
