"""ImageNet (ILSVRC-2012) from torchvision's ImageFolder layout, with the standard per-image transforms."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset
from torchvision import datasets, transforms

from cimexp.data.base import DataError, ImageDataModule, check_int


class ImageNetDataModule(ImageDataModule):
    """ImageNet from ``data_dir/{train,val}/<class>/<image>`` (or the same below ``data_dir/imagenet/``).

    The ``val`` split is the evaluation set. Training images get ``RandomResizedCrop(224)`` and a horizontal
    flip (only ``Resize(256)`` + ``CenterCrop(224)`` when ``augment=False``), evaluation images
    ``Resize(256)`` + ``CenterCrop(224)``; both are normalised with the ImageNet channel mean/std. Batches are
    ``[B, 3, 224, 224]`` float32. Decoding is per image, so use ``num_workers`` > 0.

    Args:
        data_dir: folder holding ``train/`` and ``val/`` (or ``imagenet/train/`` and ``imagenet/val/``).
        num_classes: class folders expected in each split (1000 for ImageNet; smaller for ImageNet subsets).
        **kwargs: batch sizes, workers, ``train_subset``, ``seed``, ``augment``; see ``ImageDataModule``.
    """

    name = "imagenet"
    image_size = 224  # the crop
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def __init__(self, *, data_dir: str | Path = "data", num_classes: int = 1000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir).expanduser()
        self.num_classes = check_int("num_classes", num_classes, 1)

    def _load_splits(self) -> tuple[Dataset, Dataset]:
        root = self._locate()
        normalize = transforms.Normalize(self.mean, self.std)
        evaluate = transforms.Compose(
            [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize]
        )
        train = transforms.Compose(
            [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
        )
        splits = (
            datasets.ImageFolder(str(root / "train"), transform=train if self.augment else evaluate),
            datasets.ImageFolder(str(root / "val"), transform=evaluate),
        )
        for split in splits:
            if len(split.classes) != self.num_classes:
                raise DataError(
                    f"{split.root} has {len(split.classes)} class folders but num_classes={self.num_classes}"
                )
        return splits

    def _collate_fn(self, train: bool) -> Callable | None:
        return None

    def _locate(self) -> Path:
        candidates = [self.data_dir, self.data_dir / "imagenet"]
        for root in candidates:
            if (root / "train").is_dir() and (root / "val").is_dir():
                return root
        looked = "\n".join(f"  - {root}/{{train,val}}/" for root in candidates)
        raise FileNotFoundError(
            f"ImageNet not found. Looked for these folders:\n{looked}\n"
            "Fix: set CIMEXP_DATA (or data.data_dir) to a folder with train/ and val/ in torchvision's "
            "ImageFolder layout (one sub-folder of images per class); ImageNet cannot be downloaded automatically."
        )
