"""Whole-batch augmentation against a literal per-image reference, and the in-memory dataset."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cimexp.data import BatchTransform, UInt8ImageDataset, random_crop_flip


def _all_crops(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every crop of the zero-padded ``image`` ``[C, H, W]``, flipped and not: the allowed outputs."""
    _, height, width = image.shape
    padded = F.pad(image, (padding,) * 4)
    crops = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = padded[:, top : top + height, left : left + width]
            crops += [crop, crop.flip(-1)]
    return crops


def test_crop_flip_outputs_are_padded_crops_or_their_mirror():
    images = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    for image, augmented in zip(images, out, strict=True):
        assert any(torch.equal(augmented, crop) for crop in _all_crops(image, 2))
    assert not torch.equal(out, images)


def test_crop_flip_is_generator_deterministic():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)

    def augment(seed: int) -> torch.Tensor:
        return random_crop_flip(images, 4, torch.Generator().manual_seed(seed))

    assert torch.equal(augment(3), augment(3))
    assert not torch.equal(augment(3), augment(4))


def test_batch_transform_normalises_per_channel():
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    labels = torch.arange(4)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    out, out_labels = BatchTransform(mean, std, augment=False)((images, labels))
    assert out.dtype == torch.float32 and out_labels is labels
    for channel in range(3):
        expected = (images[:, channel].float() / 255 - mean[channel]) / std[channel]
        torch.testing.assert_close(out[:, channel], expected)


def test_dataset_hands_out_batches():
    dataset = UInt8ImageDataset(torch.zeros(6, 3, 4, 4, dtype=torch.uint8), torch.arange(6))
    images, labels = dataset.__getitems__([5, 0, 2])
    assert images.shape == (3, 3, 4, 4) and labels.tolist() == [5, 0, 2]
    assert dataset[1][1].item() == 1 and len(dataset) == 6


def test_dataset_rejects_bad_arrays():
    with pytest.raises(ValueError, match=r"images must be uint8 \[N, C, H, W\]; got torch.float32"):
        UInt8ImageDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="need one label per image"):
        UInt8ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3))
