"""CIFAR-10 and CIFAR-100 as in-memory uint8 tensors, read from ``.npz`` files or torchvision's pickled batches.

``data_dir`` may hold (first match wins, in this order; the folders named after the dataset come first, so a
parent folder of several datasets, like ``CIMEXP_DATA``, serves each one its own copy):

1. ``cifar10/train.npz`` and ``cifar10/test.npz`` (``cifar100/`` for CIFAR-100): arrays ``images`` uint8
   ``[N, H, W, C]`` RGB and ``labels`` integer ``[N]``, the format of the offline copy in
   ``/work/shared/data/cifar10``;
2. torchvision's extracted batches ``cifar-10-batches-py/`` (``cifar-100-python/``);
3. the same below ``cifar10/`` (``cifar100/``);
4. ``train.npz`` and ``test.npz`` directly in ``data_dir`` (a folder that holds one dataset);
5. the pickled batches directly in ``data_dir``.

If none is found and ``download=True``, torchvision downloads the official archive into ``data_dir``.

Whatever the layout, the files must be the dataset asked for: both splits are checked for their size (50,000 and
10,000 images), the image shape (32x32 RGB uint8) and the labels (every class ``0 .. num_classes-1`` present, no
other), so a CIFAR-10 copy never passes for CIFAR-100. A file that cannot be read, or is not such a dataset, raises
:class:`~cimexp.data.base.DataError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset

from cimexp.data.base import DataError, ImageDataModule
from cimexp.data.batch import UInt8ImageDataset


class _CIFARDataModule(ImageDataModule):
    """CIFAR-10/100 in memory; the official **test split is the validation set** (as in the paper).

    Args:
        data_dir: folder holding the data in one of the layouts listed in this module's docstring.
        download: download with torchvision into ``data_dir`` when no copy is found (needs internet).
        **kwargs: batch sizes, workers, ``train_subset``, ``seed``, ``augment``; see ``ImageDataModule``.

    Training batches are random 32x32 crops of the 4-pixel zero-padded image plus horizontal flips, done per
    batch as tensor ops; all batches are normalised with the training-set channel mean/std.

    Raises (in ``setup``):
        DataError: a file cannot be read, or the folder holds another dataset (wrong split sizes, image shape or
            classes); the message names the file.
    """

    image_size = 32
    split_sizes = (50_000, 10_000)
    folder: str
    batches_folder: str
    train_batches: tuple[str, ...]
    test_batches: tuple[str, ...]
    label_key: str
    torchvision_dataset: type[torchvision.datasets.VisionDataset]

    def __init__(self, *, data_dir: str | Path = "data", download: bool = False, **kwargs) -> None:
        if not isinstance(download, bool):
            raise ValueError(f"invalid download={download!r}; valid values: true, false")
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir).expanduser()
        self.download = download

    def data_files(self) -> list[Path]:
        """The files of the first layout found (``[]`` when none is there yet, e.g. before a download)."""
        try:
            layout, folder = self._located()
        except FileNotFoundError:
            return []
        return self._files(layout, folder)

    def prepare_data(self) -> None:
        """Download if needed and allowed (Lightning runs this once per node, before ``setup``)."""
        self._locate()

    def _load_splits(self) -> tuple[Dataset, Dataset]:
        layout, folder = self._locate()
        splits = []
        batches = (self.train_batches, self.test_batches)
        for split, batch_files, size in zip(("train", "test"), batches, self.split_sizes, strict=True):
            if layout == "npz":
                source = folder / f"{split}.npz"
                images, labels = read_npz(source)
            else:
                source = folder / (batch_files[0] if len(batch_files) == 1 else f"{{{','.join(batch_files)}}}")
                images, labels = read_pickled_batches([folder / f for f in batch_files], self.label_key)
            self._check_split(source, split, size, images, labels)
            splits.append(UInt8ImageDataset(images, labels))
        return splits[0], splits[1]

    def _check_split(self, source: Path, split: str, size: int, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Check that ``images`` ``[N, C, H, W]`` and ``labels`` ``[N]`` read from ``source`` are this dataset's
        ``split``: ``size`` images of 3x32x32, labels in ``[0, num_classes)`` with every class present."""
        fix = (
            f"Fix: point CIMEXP_DATA (or data.data_dir) at a {self.name} copy, or put one in "
            f"{self.data_dir / self.folder}/ (train.npz, test.npz), which is looked at first."
        )
        shape = (3, self.image_size, self.image_size)
        if tuple(images.shape[1:]) != shape:
            c, h, w = images.shape[1:]
            raise DataError(
                f"{source}: the images are {h}x{w} with {c} channels; {self.name} has {shape[1]}x{shape[2]} RGB "
                f"images. {fix}"
            )
        if len(labels) != size:
            raise DataError(
                f"{source}: {len(labels)} images, but the {split} split of {self.name} has {size} (a subset or "
                f"another dataset? use data.train_subset / data.val_subset for subsets). {fix}"
            )
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.num_classes:
            raise DataError(
                f"{source}: {self.name} labels must be in [0, {self.num_classes}); these are in [{low}, {high}] "
                f"(is it another dataset?). {fix}"
            )
        present = int(torch.unique(labels).numel())
        if present != self.num_classes:
            known = {10: "CIFAR-10", 100: "CIFAR-100"}.get(high + 1)
            guess = f"; {known} has {high + 1} classes: is this {known}?" if known else ""
            raise DataError(
                f"{source}: the labels cover {present} classes (in [{low}, {high}]), but {self.name} has "
                f"{self.num_classes}{guess} {fix}"
            )

    def _candidates(self) -> list[tuple[str, Path]]:
        root = self.data_dir
        return [
            ("npz", root / self.folder),
            ("batches", root / self.batches_folder),
            ("batches", root / self.folder / self.batches_folder),
            ("npz", root),
            ("batches", root),
        ]

    def _files(self, layout: str, folder: Path) -> list[Path]:
        names = ("train.npz", "test.npz") if layout == "npz" else self.train_batches + self.test_batches
        return [folder / name for name in names]

    def _located(self) -> tuple[str, Path]:
        """The first ``(layout, folder)`` holding all files; ``FileNotFoundError`` when there is none."""
        for layout, folder in self._candidates():
            if all(f.is_file() for f in self._files(layout, folder)):
                return layout, folder
        raise FileNotFoundError(self._missing_message("download=False"))

    def _locate(self) -> tuple[str, Path]:
        """Return the first ``(layout, folder)`` holding all files, downloading first if allowed."""
        try:
            return self._located()
        except FileNotFoundError:
            if not self.download:
                raise
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


NPZ_FORMAT = "an .npz archive (np.savez) with arrays 'images' uint8 [N, H, W, C] (RGB, 0..255) and 'labels' integer [N]"
"""What :func:`read_npz` reads, for error messages."""

_UNREADABLE = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)
"""What numpy raises on a file that is not a (complete) .npz archive: truncated or corrupt archives (BadZipFile,
zlib.error, EOFError), other files (ValueError: it would have to unpickle them, which it refuses)."""


def read_npz(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``images`` uint8 ``[N, H, W, C]`` and ``labels`` ``[N]`` from ``path`` (never unpickling anything).

    Returns:
        ``(images [N, C, H, W] uint8 contiguous, labels [N] int64)``.

    Raises:
        DataError: ``path`` is not a readable .npz archive (truncated, corrupt, another kind of file), lacks an
            array, or holds arrays of the wrong dtype, layout (e.g. channels-first) or length; the message names
            ``path`` and what is wrong.
    """
    try:
        loaded = np.load(path, allow_pickle=False)
    except _UNREADABLE as error:
        raise DataError(f"{path}: not a readable .npz archive ({_reason(error)}); expected {NPZ_FORMAT}") from error
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path}: a single array {loaded.dtype} {list(loaded.shape)}, not an .npz archive; expected {NPZ_FORMAT}"
        )
    with loaded:
        missing = {"images", "labels"} - set(loaded.files)
        if missing:
            arrays = sorted(loaded.files)
            raise DataError(f"{path}: lacks arrays {sorted(missing)} (it has {arrays}); expected {NPZ_FORMAT}")
        try:
            images, labels = loaded["images"], loaded["labels"]
        except _UNREADABLE as error:
            raise DataError(f"{path}: cannot read its arrays ({_reason(error)}); expected {NPZ_FORMAT}") from error
    shape = list(images.shape)
    if images.dtype != np.uint8:
        raise DataError(f"{path}: 'images' must be uint8 (pixel values 0..255); got {images.dtype} {shape}")
    if images.ndim != 4:
        raise DataError(f"{path}: 'images' must be 4-D [N, H, W, C]; got {shape}")
    if images.shape[-1] not in (1, 3):
        hint = " (channels-first NCHW? convert with images.transpose(0, 2, 3, 1))" if shape[1] in (1, 3) else ""
        raise DataError(f"{path}: 'images' must be channels-last [N, H, W, C] with C = 1 or 3; got {shape}{hint}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' must be integers [N]; got {labels.dtype} {list(labels.shape)}")
    if len(labels) != len(images):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).to(torch.int64)


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.numeric", "_frombuffer"),  # numpy 2 with pickle protocol 5
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3's protocol 2 writes bytes (numpy's buffers)
        ("copy_reg", "_reconstructor"),  # Python 2's name, in the official batches
        ("copyreg", "_reconstructor"),
        ("__builtin__", "object"),
        ("builtins", "object"),
    }
)
"""The only globals a CIFAR python batch may name: what rebuilds numpy arrays. The batches are otherwise dicts,
lists, strings and numbers; anything else (``os.system`` ...) is refused before it could run."""


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's python batches and nothing else: :data:`PICKLE_GLOBALS` only."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: a CIFAR batch names no such object")
        return super().find_class(module, name)


def read_pickled_batches(paths: list[Path], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and concatenate CIFAR's python batches (dicts with ``data`` ``[n, 3072]`` uint8 and labels), with an
    unpickler that admits only the types the format has (:data:`PICKLE_GLOBALS`): a crafted file cannot run code.

    Args:
        paths: batch files, in order.
        label_key: ``"labels"`` (CIFAR-10) or ``"fine_labels"`` (CIFAR-100).

    Returns:
        ``(images [N, 3, 32, 32] uint8, labels [N] int64)``.
    """
    images, labels = [], []
    for path in paths:
        try:
            with open(path, "rb") as file:
                batch = _BatchUnpickler(file, encoding="latin1").load()
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            targets = np.asarray(batch[label_key], dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as error:
            raise DataError(f"{path}: not a readable CIFAR python batch ({_reason(error)})") from error
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(
                f"{path}: not a CIFAR python batch with 'data' uint8 [n, 3072] and {label_key!r} ({_reason(error)})"
            ) from error
        if len(targets) != len(data):
            raise DataError(f"{path}: {len(data)} images but {len(targets)} labels")
        images.append(data)
        labels.append(targets)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))
