"""The base Lightning DataModule shared by all datasets: batch sizes, seeded loaders, class-balanced subsets."""

from __future__ import annotations

import abc
import inspect
import itertools
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from cimexp.data.batch import BatchTransform, epoch_seed


class DataError(ValueError):
    """A data file that cannot be read, or a dataset folder that is not the dataset asked for. The message names
    the file (or folder) and what is wrong with it."""


def check_int(
    name: str, value: object, minimum: int, maximum: int | None = None, *, none: str | None = None
) -> int | None:
    """``value`` if it is an integer (not a bool) in ``[minimum, maximum]``, or ``None`` when ``none`` says what
    ``None`` means; otherwise a ``ValueError`` that names the value and the valid range."""
    if value is None and none is not None:
        return None
    too_big = maximum is not None and isinstance(value, int) and value > maximum
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or too_big:
        valid = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
        raise ValueError(f"invalid {name}={value!r}; valid values: {valid}" + (f" or null ({none})" if none else ""))
    return value


class ImageDataModule(L.LightningDataModule, abc.ABC):
    """Image classification data: a training split and an evaluation split, with reproducible loaders.

    Subclasses set the class attributes ``name``, ``num_classes``, ``image_size`` (height = width of the model
    input, known before any file is read), ``mean`` and ``std`` (per-channel normalisation of pixels in
    ``[0, 1]``) and implement ``_load_splits``. By default the splits are
    ``UInt8ImageDataset``s and ``BatchTransform`` augments and normalises whole batches; datasets that transform
    per image (ImageNet) override ``_collate_fn``.

    The training loader shuffles (:class:`EpochSampler`) and augments (``BatchTransform``) as pure functions of
    ``(seed, epoch)``: two modules with the same arguments yield the same batches in every epoch, whatever the
    global RNG state. It is a :class:`ResumableDataLoader`, so a run resumed from a checkpoint, at an epoch
    boundary or inside an epoch, sees the same data as the uninterrupted run.

    Args:
        batch_size: training batch size.
        eval_batch_size: validation/test batch size; default ``batch_size``.
        num_workers: DataLoader worker processes (0 is fastest for the in-memory datasets).
        train_subset: if set, train on a fixed class-balanced subset of this many training images, drawn with
            ``seed`` (for quick CPU recipes); see ``class_balanced_subset``.
        val_subset: if set, validate on a fixed class-balanced subset of this many evaluation images, drawn with
            ``seed`` (quick variation sweeps); the same seed gives the same images.
        seed: seed of the subset, the shuffling and the augmentation; ``None``: a random seed, drawn here (each
            process draws its own, so give DDP runs a seed).
        augment: augment training batches; if false, training batches are only normalised.

    Every argument is checked here, before any file is read (``ValueError`` naming the value and the valid range;
    the subsets also against ``split_sizes`` where known).
    """

    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    split_sizes: tuple[int | None, int | None] = (None, None)
    """Sizes of the (training, evaluation) splits where known before any file is read; ``None``: unknown."""

    def __init__(
        self,
        *,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_subset: int | None = None,
        val_subset: int | None = None,
        seed: int = 0,
        augment: bool = True,
    ) -> None:
        super().__init__()
        check_int("batch_size", batch_size, 1)
        check_int("eval_batch_size", eval_batch_size, 1, none="batch_size")
        check_int("num_workers", num_workers, 0)
        train_size, eval_size = self.split_sizes
        check_int("train_subset", train_subset, 1, train_size, none="the full split")
        check_int("val_subset", val_subset, 1, eval_size, none="the full split")
        check_int("seed", seed, 0, none="a random seed")
        if not isinstance(augment, bool):
            raise ValueError(f"invalid augment={augment!r}; valid values: true, false")
        if seed is None:
            seed = random.SystemRandom().randrange(2**31)
        # Passing this frame (instead of letting Lightning find it) avoids a self-referencing frame inside
        # Lightning that keeps the caller's frame, and any DataLoader workers in it, alive until the next gc.
        self.save_hyperparameters(frame=inspect.currentframe())
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.train_subset = train_subset
        self.val_subset = val_subset
        self.seed = seed
        self.augment = augment
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def data_files(self) -> list[Path]:
        """The files this module reads, where a run knows them before reading (their content identifies the data
        in results.json: ``cimexp.results.hashed_config``); ``[]`` for generated data or folders of many images."""
        return []

    @abc.abstractmethod
    def _load_splits(self) -> tuple[Dataset, Dataset]:
        """Return ``(train, evaluation)`` datasets; the training one has ``targets`` (labels, one per item)."""

    def _collate_fn(self, train: bool) -> Callable | None:
        """Collate function of the training (``train``) or evaluation loader; ``None`` is torch's default."""
        return BatchTransform(self.mean, self.std, augment=train and self.augment, seed=self.seed + 1)

    def setup(self, stage: str | None = None) -> None:
        """Load both splits once (all stages share them) and apply ``train_subset`` and ``val_subset``."""
        if self.train_set is not None:
            return
        train_set, val_set = self._load_splits()
        self.train_set = _balanced_subset(train_set, self.train_subset, self.seed)
        self.val_set = _balanced_subset(val_set, self.val_subset, self.seed)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, train=False)

    def _loader(self, dataset: Dataset | None, batch_size: int, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its dataloaders are built")
        collate_fn = self._collate_fn(train)
        # Training: an order and augmentation that are pure functions of (seed, epoch), so that a resumed run
        # sees every epoch exactly as the uninterrupted run did; workers are re-created every epoch to get it.
        sampler = EpochSampler(len(dataset), self.seed, followers=[collate_fn]) if train else None
        return (ResumableDataLoader if train else DataLoader)(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_fn,
            generator=torch.Generator().manual_seed(self.seed),
            persistent_workers=self.num_workers > 0 and not train,
            pin_memory=torch.cuda.is_available(),
        )


class EpochSampler(Sampler[int]):
    """The indices ``0 .. size-1`` in a random order that is a pure function of ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before every epoch (through its DDP wrapper too, which then shards this
    order), and the sampler passes the epoch on to its ``followers`` that have a ``set_epoch`` (the batch
    augmentation), so a run resumed from an epoch's checkpoint replays the next epochs exactly.
    """

    def __init__(self, size: int, seed: int, followers: Iterable[object] = ()) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.followers = [f for f in followers if callable(getattr(f, "set_epoch", None))]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for follower in self.followers:
            follower.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that resumes inside an epoch, through Lightning's interface for stateful loaders.

    Lightning stores ``state_dict()`` in every checkpoint: the epoch of the current pass and the number of batches
    yielded in it. A loader given that state with ``load_state_dict`` (by Lightning, or by
    :class:`cimexp.run.callbacks.RecoveryCheckpoint` where Lightning does not) starts its next pass over that epoch by
    producing and dropping as many batches, so the resumed epoch goes on with exactly the batches, augmentation and
    worker RNG states of the uninterrupted run. Producing the skipped batches costs their loading time, not their
    training time. The skip applies to the saved epoch only: a checkpoint from an epoch's end resumes with the next
    epoch, whole.

    A pass starts at its first ``next()``, not at ``iter()``: Lightning creates the iterator of a resumed run before
    it calls the sampler's ``set_epoch``, and worker processes would take their indices and epoch right away.
    The epoch is the sampler's ``epoch`` (:class:`EpochSampler`, or the ``DistributedSampler`` Lightning wraps it in).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pass_epoch: int | None = None
        self._yielded = 0
        self._resume_at: tuple[int | None, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch": epoch of the current pass, "batches": batches yielded in it}``."""
        return {"epoch": self._pass_epoch, "batches": self._yielded}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Skip ``state_dict["batches"]`` batches in the next pass, if that pass is over ``state_dict["epoch"]``."""
        self._resume_at = (state_dict["epoch"], int(state_dict["batches"]))

    def __iter__(self) -> Iterator[Any]:
        return self._pass()

    def _pass(self) -> Iterator[Any]:
        epoch = getattr(self.sampler, "epoch", None)
        skip = self._resume_at[1] if self._resume_at is not None and self._resume_at[0] == epoch else 0
        self._resume_at = None
        self._pass_epoch, self._yielded = epoch, 0
        batches = super().__iter__()
        for _ in itertools.islice(batches, skip):
            self._yielded += 1
        for batch in batches:
            self._yielded += 1
            yield batch


def _balanced_subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    """``dataset`` itself if ``size`` is ``None``, else a ``Subset`` of ``class_balanced_subset`` of its ``targets``."""
    if size is None:
        return dataset
    indices = class_balanced_subset(torch.as_tensor(dataset.targets), size, seed)
    return Subset(dataset, indices.tolist())


def class_balanced_subset(targets: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices of ``size`` items with (as nearly as possible) equally many of each class, drawn with ``seed``.

    Each of the ``K`` classes present gets ``size // K`` items, and the ``size % K`` smallest class labels one
    more; within a class the items are a seeded random choice.

    Args:
        targets: labels ``[N]``.
        size: number of items to keep, ``1 <= size <= N``.
        seed: seed of the choice (the same seed gives the same subset).

    Returns:
        Sorted indices ``[size]`` into ``targets``.

    Raises:
        ValueError: ``size`` exceeds ``N``, or a class has too few items for its share.
    """
    if not 1 <= size <= len(targets):
        raise ValueError(f"subset size must be in [1, {len(targets)}] (the split size); got {size}")
    classes = torch.unique(targets)
    per_class, remainder = divmod(size, len(classes))
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for rank, label in enumerate(classes.tolist()):
        members = torch.nonzero(targets == label).squeeze(1)
        share = per_class + (rank < remainder)
        if share > len(members):
            raise ValueError(
                f"class {label} has {len(members)} items but a balanced subset of {size} needs {share} of each"
            )
        chosen.append(members[torch.randperm(len(members), generator=generator)[:share]])
    return torch.cat(chosen).sort().values
