"""In-memory uint8 image datasets and whole-batch augmentation as tensor ops (fast on a few CPU cores).

The dataset hands out whole batches of uint8 images (``__getitems__``) and ``BatchTransform``, used as the
DataLoader's ``collate_fn``, turns them into normalised float batches, so there is no per-image Python work.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import Dataset, get_worker_info


class UInt8ImageDataset(Dataset):
    """Images ``[N, C, H, W]`` uint8 and labels ``[N]`` int64 held in memory.

    Indexing one item gives ``(image [C, H, W] uint8, label)``; the DataLoader fetches whole batches through
    ``__getitems__``, which returns ``(images [B, C, H, W] uint8, labels [B] int64)`` for ``BatchTransform``.
    ``targets`` (the labels) follows torchvision's attribute name.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W]; got {images.dtype} {list(images.shape)}")
        if targets.shape != images.shape[:1]:
            raise ValueError(f"need one label per image; got {list(targets.shape)} for {images.shape[0]} images")
        self.images = images.contiguous()
        self.targets = targets.to(torch.int64)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.targets[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        return self.images[index], self.targets[index]


class BatchTransform:
    """DataLoader ``collate_fn``: uint8 batch -> (random crop + horizontal flip) -> per-channel normalised float.

    Input ``(images [B, C, H, W] uint8, labels [B])``; output ``(images [B, C, H, W] float32, labels [B])`` with
    ``(x / 255 - mean) / std``. With ``augment``, each image is zero-padded by ``crop_padding`` pixels (black, as
    torchvision's ``RandomCrop(padding=...)`` on PIL images), cropped back to ``H x W`` at a random offset, and
    flipped left-right with probability 1/2.

    Randomness comes from a private generator, so the global RNG is untouched. It is a pure function of
    ``(seed, epoch, rank, worker)``: :meth:`set_epoch` (called through :class:`~cimexp.data.base.EpochSampler`
    before every epoch) reseeds it, and each DataLoader worker seeds its own from its id. A run resumed at an
    epoch therefore augments that epoch exactly as the uninterrupted run did (the loader must re-create its
    workers every epoch, so that they get the new epoch: ``persistent_workers=False``).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool,
        seed: int = 0,
        crop_padding: int = 4,
    ) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.augment = augment
        self.crop_padding = crop_padding
        self.seed = seed
        self.epoch = 0
        self._generator = torch.Generator().manual_seed(epoch_seed(seed, 0))
        self._worker_generator: torch.Generator | None = None

    def set_epoch(self, epoch: int) -> None:
        """Reseed the augmentation for ``epoch`` (and this process's distributed rank)."""
        self.epoch = epoch
        self._generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, _rank()))
        self._worker_generator = None

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        if self.augment:
            images = random_crop_flip(images, self.crop_padding, self._current_generator())
        return (images.float() / 255 - self.mean) / self.std, labels

    def _current_generator(self) -> torch.Generator:
        worker = get_worker_info()
        if worker is None:
            return self._generator
        if self._worker_generator is None:
            seed = epoch_seed(self.seed, self.epoch, _rank(), worker.id + 1)
            self._worker_generator = torch.Generator().manual_seed(seed)
        return self._worker_generator


def epoch_seed(seed: int, epoch: int, *more: int) -> int:
    """A 32-bit seed that is a pure function of ``(seed, epoch, *more)`` (numpy's ``SeedSequence``: nearby inputs
    give unrelated seeds)."""
    return int(np.random.SeedSequence([int(seed) % 2**32, int(epoch), *map(int, more)]).generate_state(1)[0])


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding``, crop back to the input size at per-image random offsets, flip half the images.

    Args:
        images: ``[B, C, H, W]`` (any dtype; padding value 0).
        padding: pixels added on each side before cropping; the offsets are uniform in ``[0, 2 * padding]``.
        generator: source of the offsets and flips.

    Returns:
        ``[B, C, H, W]``, same dtype and device.
    """
    batch, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator)
    flip = torch.rand(batch, 1, generator=generator) < 0.5
    rows = top + torch.arange(height)
    cols = torch.arange(width)
    cols = left + torch.where(flip, cols.flip(0), cols)
    device = images.device
    return padded[
        torch.arange(batch, device=device).view(batch, 1, 1, 1),
        torch.arange(channels, device=device).view(1, channels, 1, 1),
        rows.to(device).view(batch, 1, height, 1),
        cols.to(device).view(batch, 1, 1, width),
    ]
