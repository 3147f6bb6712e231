"""Writers of tiny fake CIFAR copies (npz and torchvision's pickled batches) for the data tests.

A copy stands for a full-size one: writing it sets the CIFAR modules' expected split sizes (``split_sizes``,
50,000 and 10,000 for the real datasets) to its own for the rest of the test.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from cimexp.data.cifar import _CIFARDataModule


def _images_and_labels(count: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    return images, (np.arange(count) % num_classes).astype(np.int64)


@pytest.fixture
def write_npz(monkeypatch):
    """``write_npz(folder, num_classes=10, train=40, test=20)`` writes train.npz/test.npz; returns the arrays."""

    def write(folder: Path, num_classes: int = 10, train: int = 40, test: int = 20) -> dict[str, tuple]:
        folder.mkdir(parents=True, exist_ok=True)
        monkeypatch.setattr(_CIFARDataModule, "split_sizes", (train, test))
        arrays = {}
        for seed, (split, count) in enumerate((("train", train), ("test", test))):
            images, labels = _images_and_labels(count, num_classes, seed)
            np.savez(folder / f"{split}.npz", images=images, labels=labels)
            arrays[split] = (images, labels)
        return arrays

    return write


@pytest.fixture
def write_batches(monkeypatch):
    """``write_batches(folder, names, label_key, num_classes, per_batch)`` writes CIFAR python batches.

    Each batch is a dict with ``data`` ``[n, 3072]`` uint8 (channel-major rows, as the official files) and
    ``label_key`` labels; returns the HWC images and labels, concatenated in ``names`` order.
    """

    def write(folder: Path, names, label_key: str = "labels", num_classes: int = 10, per_batch: int = 10):
        folder.mkdir(parents=True, exist_ok=True)
        test = per_batch * sum("test" in name for name in names)
        monkeypatch.setattr(_CIFARDataModule, "split_sizes", (per_batch * len(names) - test, test))
        all_images, all_labels = [], []
        for seed, name in enumerate(names):
            images, labels = _images_and_labels(per_batch, num_classes, 100 + seed)
            batch = {"data": images.transpose(0, 3, 1, 2).reshape(per_batch, -1), label_key: labels.tolist()}
            with open(folder / name, "wb") as file:
                pickle.dump(batch, file)
            all_images.append(images)
            all_labels.append(labels)
        return np.concatenate(all_images), np.concatenate(all_labels)

    return write
