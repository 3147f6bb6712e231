"""The ImageNet DataModule on a tiny ImageFolder tree of PNG files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cimexp.data import ImageNetDataModule


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 1)):
        for label in ("n01", "n02"):
            folder = tmp_path / "imagenet" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return tmp_path


def test_imagenet_batches(image_folder):
    dm = ImageNetDataModule(data_dir=image_folder, num_classes=2, batch_size=4, train_subset=4)
    dm.setup()
    assert len(dm.train_set) == 4 and len(dm.val_set) == 2
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 224, 224) and images.dtype == torch.float32
    assert sorted(labels.tolist()) == [0, 0, 1, 1]
    images, _ = next(iter(dm.val_dataloader()))
    assert images.shape == (2, 3, 224, 224)


def test_imagenet_checks_class_count(image_folder):
    with pytest.raises(ValueError, match="has 2 class folders but num_classes=1000"):
        ImageNetDataModule(data_dir=image_folder).setup()


def test_imagenet_missing_lists_paths(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        ImageNetDataModule(data_dir=tmp_path).setup()
    assert f"{tmp_path}/{{train,val}}/" in str(error.value)
    assert f"{tmp_path}/imagenet/{{train,val}}/" in str(error.value)
