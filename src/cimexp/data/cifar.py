"""CIFAR-10 and CIFAR-100 as in-memory uint8 tensors, read from ``.npz`` files or torchvision's pickled batches.

``data_dir`` may hold (first match wins, in this order):

1. ``train.npz`` and ``test.npz`` (arrays ``images`` uint8 ``[N, H, W, C]`` RGB and ``labels`` int64 ``[N]``,
   the format of the offline copy in ``/work/shared/data/cifar10``);
2. ``cifar10/train.npz`` and ``cifar10/test.npz`` (``cifar100/`` for CIFAR-100), i.e. ``data_dir`` is a parent
   folder of several datasets, like the ``CIMEXP_DATA`` folder the configs use;
3. torchvision's extracted batches ``cifar-10-batches-py/`` (``cifar-100-python/``);
4. the same below ``cifar10/`` (``cifar100/``);
5. the pickled batches directly in ``data_dir``.

If none is found and ``download=True``, torchvision downloads the official archive into ``data_dir``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset

from cimexp.data.base import ImageDataModule
from cimexp.data.batch import UInt8ImageDataset


class _CIFARDataModule(ImageDataModule):
    """CIFAR-10/100 in memory; the official **test split is the validation set** (as in the paper).

    Args:
        data_dir: folder holding the data in one of the layouts listed in this module's docstring.
        download: download with torchvision into ``data_dir`` when no copy is found (needs internet).
        **kwargs: batch sizes, workers, ``train_subset``, ``seed``, ``augment``; see ``ImageDataModule``.

    Training batches are random 32x32 crops of the 4-pixel zero-padded image plus horizontal flips, done per
    batch as tensor ops; all batches are normalised with the training-set channel mean/std.
    """

    image_size = 32
    folder: str
    batches_folder: str
    train_batches: tuple[str, ...]
    test_batches: tuple[str, ...]
    label_key: str
    torchvision_dataset: type[torchvision.datasets.VisionDataset]

    def __init__(self, *, data_dir: str | Path = "data", download: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir).expanduser()
        self.download = download

    def prepare_data(self) -> None:
        """Download if needed and allowed (Lightning runs this once per node, before ``setup``)."""
        self._locate()

    def _load_splits(self) -> tuple[Dataset, Dataset]:
        layout, folder = self._locate()
        splits = []
        for split, batch_files in (("train", self.train_batches), ("test", self.test_batches)):
            if layout == "npz":
                images, labels = read_npz(folder / f"{split}.npz")
            else:
                images, labels = read_pickled_batches([folder / f for f in batch_files], self.label_key)
            if labels.min() < 0 or labels.max() >= self.num_classes:
                raise ValueError(
                    f"{self.name} labels must be in [0, {self.num_classes}); {folder} has labels in "
                    f"[{labels.min()}, {labels.max()}] (is it another dataset?)"
                )
            splits.append(UInt8ImageDataset(images, labels))
        return splits[0], splits[1]

    def _candidates(self) -> list[tuple[str, Path]]:
        root = self.data_dir
        return [
            ("npz", root),
            ("npz", root / self.folder),
            ("batches", root / self.batches_folder),
            ("batches", root / self.folder / self.batches_folder),
            ("batches", root),
        ]

    def _files(self, layout: str, folder: Path) -> list[Path]:
        names = ("train.npz", "test.npz") if layout == "npz" else self.train_batches + self.test_batches
        return [folder / name for name in names]

    def _locate(self) -> tuple[str, Path]:
        """Return the first ``(layout, folder)`` holding all files, downloading first if allowed."""
        for layout, folder in self._candidates():
            if all(f.is_file() for f in self._files(layout, folder)):
                return layout, folder
        failure = "download=False"
        if self.download:
            try:
                for train in (True, False):
                    self.torchvision_dataset(root=str(self.data_dir), train=train, download=True)
                return "batches", self.data_dir / self.batches_folder
            except (OSError, RuntimeError) as error:
                failure = f"download failed: {error}"
        raise FileNotFoundError(self._missing_message(failure))

    def _missing_message(self, failure: str) -> str:
        looked = "\n".join(
            f"  - {folder}/{{{','.join(f.name for f in self._files(layout, folder))}}}"
            for layout, folder in self._candidates()
        )
        return (
            f"{self.name} not found ({failure}). Looked for these files:\n{looked}\n"
            f"Fix: set CIMEXP_DATA (or data.data_dir) to a folder holding train.npz/test.npz (arrays 'images' "
            f"uint8 NxHxWxC RGB, 'labels' int64), or a {self.folder}/ folder with them, or torchvision's "
            f"{self.batches_folder}/ layout; or pass data.download=true when online."
        )


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10: 10 classes, 50,000 train / 10,000 test 32x32 RGB images; the test split is the validation set.

    Arguments and augmentation are described in ``_CIFARDataModule``.
    """

    name = "cifar10"
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    folder = "cifar10"
    batches_folder = "cifar-10-batches-py"
    train_batches = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_batches = ("test_batch",)
    label_key = "labels"
    torchvision_dataset = torchvision.datasets.CIFAR10


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100: 100 fine classes, 50,000 train / 10,000 test 32x32 RGB images; the test split is the validation set.

    Arguments and augmentation are described in ``_CIFARDataModule``.
    """

    name = "cifar100"
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    folder = "cifar100"
    batches_folder = "cifar-100-python"
    train_batches = ("train",)
    test_batches = ("test",)
    label_key = "fine_labels"
    torchvision_dataset = torchvision.datasets.CIFAR100


def read_npz(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``images`` uint8 ``[N, H, W, C]`` and ``labels`` ``[N]`` from ``path``.

    Returns:
        ``(images [N, C, H, W] uint8 contiguous, labels [N] int64)``.
    """
    with np.load(path) as arrays:
        missing = {"images", "labels"} - set(arrays.files)
        if missing:
            raise ValueError(f"{path} lacks arrays {sorted(missing)}; it has {arrays.files}")
        images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{path}: 'images' must be uint8 [N, H, W, C]; got {images.dtype} {list(images.shape)}")
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).to(torch.int64)


def read_pickled_batches(paths: list[Path], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and concatenate CIFAR's python batches (dicts with ``data`` ``[n, 3072]`` uint8 and labels).

    Args:
        paths: batch files, in order.
        label_key: ``"labels"`` (CIFAR-10) or ``"fine_labels"`` (CIFAR-100).

    Returns:
        ``(images [N, 3, 32, 32] uint8, labels [N] int64)``.
    """
    images, labels = [], []
    for path in paths:
        with open(path, "rb") as file:
            batch = pickle.load(file, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))
