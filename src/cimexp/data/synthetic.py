"""Random images with a learnable class signal, for tests and smoke runs without any dataset on disk."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cimexp.data.base import ImageDataModule, check_int
from cimexp.data.batch import UInt8ImageDataset

_SIGNAL = 48.0
"""Amplitude (pixel units, 0..255 scale) of the class pattern: strong enough to beat chance in a few steps."""
_NOISE = 40.0
"""Standard deviation (pixel units) of the per-image Gaussian noise on top of the class pattern."""
_PATTERN_CELLS = 4
"""Class patterns are random ``[3, 4, 4]`` grids upsampled to the image size: smooth, so crops and flips keep
most of the signal."""


class SyntheticDataModule(ImageDataModule):
    """Synthetic 3-channel uint8 images: grey 128 + a smooth per-class pattern + Gaussian noise.

    Everything is generated from ``seed`` (patterns, labels and noise), so the data is identical across runs and
    machines. Labels are balanced (``i % num_classes`` shuffled). The evaluation split uses the same class
    patterns with fresh noise. Batches go through the same tensor augmentation as CIFAR (4-pixel crop + flip).

    Args:
        num_classes: number of classes (``num_classes`` attribute).
        image_size: height and width of the square images.
        train_size: number of training images.
        val_size: number of evaluation images.
        **kwargs: batch sizes, workers, ``train_subset``, ``seed``, ``augment``; see ``ImageDataModule``.
    """

    name = "synthetic"
    mean = (128 / 255,) * 3
    std = (0.25,) * 3

    def __init__(
        self,
        *,
        num_classes: int = 10,
        image_size: int = 32,
        train_size: int = 1024,
        val_size: int = 256,
        **kwargs,
    ) -> None:
        check_int("num_classes", num_classes, 1)
        check_int("image_size", image_size, 1)
        for arg, value in (("train_size", train_size), ("val_size", val_size)):
            check_int(arg, value, num_classes)  # at least one image per class
        self.num_classes = num_classes
        self.image_size = image_size
        self.train_size = train_size
        self.val_size = val_size
        super().__init__(**kwargs)  # after the sizes: it checks the subsets against them

    @property
    def split_sizes(self) -> tuple[int, int]:
        return self.train_size, self.val_size

    def _load_splits(self) -> tuple[Dataset, Dataset]:
        generator = torch.Generator().manual_seed(self.seed)
        cells = torch.randn(self.num_classes, 3, _PATTERN_CELLS, _PATTERN_CELLS, generator=generator)
        patterns = F.interpolate(cells, size=self.image_size, mode="bilinear", align_corners=False)
        return tuple(self._sample(patterns, size, generator) for size in (self.train_size, self.val_size))

    def _sample(self, patterns: torch.Tensor, size: int, generator: torch.Generator) -> UInt8ImageDataset:
        """Draw ``size`` images ``[size, 3, S, S]`` from the class ``patterns`` ``[K, 3, S, S]``."""
        labels = (torch.arange(size) % self.num_classes)[torch.randperm(size, generator=generator)]
        noise = torch.randn(size, 3, self.image_size, self.image_size, generator=generator)
        pixels = 128 + _SIGNAL * patterns[labels] + _NOISE * noise
        return UInt8ImageDataset(pixels.round().clamp(0, 255).to(torch.uint8), labels)
