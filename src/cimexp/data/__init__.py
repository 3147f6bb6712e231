"""Lightning DataModules for the paper's datasets (CIFAR-10/100, ImageNet) and a synthetic stand-in.

All share ``ImageDataModule``: keyword-only, config-friendly arguments (``batch_size``, ``eval_batch_size``,
``num_workers``, ``train_subset``, ``seed``, ``augment``), seeded loaders, and ``name``/``num_classes``
attributes for building the model. CIFAR and synthetic data live in memory as uint8 tensors and are augmented
per batch with tensor ops; the evaluation split of CIFAR is the official test split.
"""

from cimexp.data.base import (
    DataError,
    EpochSampler,
    ImageDataModule,
    ResumableDataLoader,
    check_int,
    class_balanced_subset,
)
from cimexp.data.batch import BatchTransform, UInt8ImageDataset, epoch_seed, random_crop_flip
from cimexp.data.cifar import CIFAR10DataModule, CIFAR100DataModule, read_npz, read_pickled_batches
from cimexp.data.imagenet import ImageNetDataModule
from cimexp.data.synthetic import SyntheticDataModule

__all__ = [
    "BatchTransform",
    "CIFAR100DataModule",
    "CIFAR10DataModule",
    "DataError",
    "EpochSampler",
    "ImageDataModule",
    "ImageNetDataModule",
    "ResumableDataLoader",
    "SyntheticDataModule",
    "UInt8ImageDataset",
    "check_int",
    "class_balanced_subset",
    "epoch_seed",
    "random_crop_flip",
    "read_npz",
    "read_pickled_batches",
]
