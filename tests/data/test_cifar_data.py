"""CIFAR-10/100 DataModules on tiny fake copies: layout detection, errors, subsets and loaders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cimexp.data import CIFAR10DataModule, CIFAR100DataModule, DataError
from cimexp.data.cifar import _CIFARDataModule

CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _as_nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2)


@pytest.mark.parametrize("subfolder", ["", "cifar10"])
def test_reads_npz_layout(tmp_path, write_npz, subfolder):
    arrays = write_npz(tmp_path / subfolder)
    dm = CIFAR10DataModule(data_dir=tmp_path)
    dm.setup()
    assert torch.equal(dm.train_set.images, _as_nchw(arrays["train"][0]))
    assert torch.equal(dm.val_set.targets, torch.from_numpy(arrays["test"][1]))
    assert (dm.name, dm.num_classes) == ("cifar10", 10)


@pytest.mark.parametrize("where", ["cifar-10-batches-py", "cifar10/cifar-10-batches-py", "itself"])
def test_reads_torchvision_batches(tmp_path, write_batches, where):
    folder = tmp_path / "cifar-10-batches-py" if where == "itself" else tmp_path / where
    images, labels = write_batches(folder, CIFAR10_BATCHES)
    dm = CIFAR10DataModule(data_dir=folder if where == "itself" else tmp_path)
    dm.setup()
    assert len(dm.train_set) == 50 and len(dm.val_set) == 10
    assert torch.equal(dm.train_set.images, _as_nchw(images[:50]))
    assert torch.equal(dm.val_set.images, _as_nchw(images[50:]))
    assert torch.equal(dm.train_set.targets, torch.from_numpy(labels[:50]))


def test_cifar100_reads_both_layouts(tmp_path, write_npz, write_batches):
    write_npz(tmp_path / "npz" / "cifar100", num_classes=100, train=200, test=100)
    dm = CIFAR100DataModule(data_dir=tmp_path / "npz")
    dm.setup()
    assert (dm.name, dm.num_classes, len(dm.train_set)) == ("cifar100", 100, 200)

    _, labels = write_batches(tmp_path / "tv" / "cifar-100-python", ["train", "test"], "fine_labels", 100, 100)
    dm = CIFAR100DataModule(data_dir=tmp_path / "tv")
    dm.setup()
    assert torch.equal(dm.val_set.targets, torch.from_numpy(labels[100:]))


def test_missing_data_lists_every_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        CIFAR10DataModule(data_dir=tmp_path).setup()
    message = str(error.value)
    assert "download=False" in message
    for folder in ["", "/cifar10", "/cifar-10-batches-py", "/cifar10/cifar-10-batches-py"]:
        assert f"{tmp_path}{folder}/{{" in message
    assert "train.npz,test.npz" in message and "data_batch_1" in message
    assert "CIMEXP_DATA" in message and "data.download=true" in message


def test_failed_download_is_reported(tmp_path, monkeypatch):
    def offline(root, train, download):
        raise OSError("no route to host")

    monkeypatch.setattr(CIFAR10DataModule, "torchvision_dataset", staticmethod(offline))
    with pytest.raises(FileNotFoundError, match="download failed: no route to host"):
        CIFAR10DataModule(data_dir=tmp_path, download=True).prepare_data()


def test_download_goes_to_data_dir(tmp_path, monkeypatch, write_batches):
    def fake_download(root, train, download):
        write_batches(Path(root) / "cifar-10-batches-py", CIFAR10_BATCHES)

    monkeypatch.setattr(CIFAR10DataModule, "torchvision_dataset", staticmethod(fake_download))
    dm = CIFAR10DataModule(data_dir=tmp_path, download=True)
    dm.prepare_data()
    dm.setup()
    assert len(dm.train_set) == 50


def test_rejects_labels_outside_the_classes(tmp_path, write_npz):
    write_npz(tmp_path, num_classes=100, train=200, test=100)
    with pytest.raises(DataError, match=r"train.npz: cifar10 labels must be in \[0, 10\)"):
        CIFAR10DataModule(data_dir=tmp_path).setup()


def test_cifar100_refuses_a_cifar10_copy(tmp_path, write_npz):
    """The issue's case: data=cifar100 with CIMEXP_DATA at the CIFAR-10 copy (train.npz/test.npz directly in it)."""
    write_npz(tmp_path, num_classes=10, train=200, test=100)
    with pytest.raises(DataError) as error:
        CIFAR100DataModule(data_dir=tmp_path).setup()
    message = str(error.value)
    assert message.startswith(f"{tmp_path}/train.npz: the labels cover 10 classes (in [0, 9]), but cifar100 has 100")
    assert "is this CIFAR-10?" in message and f"{tmp_path}/cifar100/ (train.npz, test.npz)" in message


def test_a_dataset_named_folder_wins_over_the_bare_folder(tmp_path, write_npz):
    """CIMEXP_DATA holding the CIFAR-10 copy itself and a cifar100/ folder: each dataset reads its own copy."""
    write_npz(tmp_path, num_classes=10, train=200, test=100)
    write_npz(tmp_path / "cifar100", num_classes=100, train=200, test=100)
    cifar100, cifar10 = CIFAR100DataModule(data_dir=tmp_path), CIFAR10DataModule(data_dir=tmp_path)
    cifar100.setup()
    cifar10.setup()
    assert len(cifar100.train_set.targets.unique()) == 100 and len(cifar10.train_set.targets.unique()) == 10


def test_split_sizes_and_image_shapes_are_checked(tmp_path, write_npz, monkeypatch):
    write_npz(tmp_path)
    monkeypatch.setattr(_CIFARDataModule, "split_sizes", (50_000, 10_000))  # the real sizes
    with pytest.raises(DataError, match=r"train.npz: 40 images, but the train split of cifar10 has 50000"):
        CIFAR10DataModule(data_dir=tmp_path).setup()

    images = np.zeros((40, 16, 16, 3), np.uint8)
    np.savez(tmp_path / "train.npz", images=images, labels=np.arange(40) % 10)
    with pytest.raises(DataError, match=r"train.npz: the images are 16x16 with 3 channels; cifar10 has 32x32 RGB"):
        CIFAR10DataModule(data_dir=tmp_path).setup()


def _write_bad_train_npz(path: Path, kind: str) -> None:
    """A ``train.npz`` that is wrong in the way ``kind`` says (beside a valid ``test.npz``)."""
    images = np.zeros((40, 32, 32, 3), np.uint8)
    labels = np.arange(40) % 10
    if kind == "truncated":
        np.savez_compressed(path, images=images, labels=labels)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "garbage":
        path.write_bytes(b"this is not a numpy file\n" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "single_array":
        with open(path, "wb") as file:  # np.save to a file object keeps the .npz name
            np.save(file, images)
    elif kind == "array_names":
        np.savez(path, x=images, y=labels)
    elif kind == "dtype":
        np.savez(path, images=images.astype(np.float32), labels=labels)
    elif kind == "nchw":
        np.savez(path, images=images.transpose(0, 3, 1, 2), labels=labels)
    elif kind == "count":
        np.savez(path, images=images, labels=labels[:30])
    elif kind == "float_labels":
        np.savez(path, images=images, labels=labels.astype(np.float32))
    elif kind == "object_labels":
        np.savez(path, images=images, labels=np.array([str(i) for i in labels], dtype=object))


BAD_FILES = {
    "truncated": r"not a readable \.npz archive \(BadZipFile",
    "garbage": r"not a readable \.npz archive \(ValueError: .*pickled",
    "empty": r"not a readable \.npz archive \(EOFError",
    "single_array": r"a single array uint8 \[40, 32, 32, 3\], not an \.npz archive",
    "array_names": r"lacks arrays \['images', 'labels'\] \(it has \['x', 'y'\]\)",
    "dtype": r"'images' must be uint8 \(pixel values 0\.\.255\); got float32 \[40, 32, 32, 3\]",
    "nchw": r"'images' must be channels-last \[N, H, W, C\] .*; got \[40, 3, 32, 32\] \(channels-first NCHW\?",
    "count": r"40 images but 30 labels",
    "float_labels": r"'labels' must be integers \[N\]; got float32 \[40\]",
    "object_labels": r"cannot read its arrays \(ValueError: Object arrays cannot be loaded",
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_file_is_reported_with_its_path_and_what_is_wrong(tmp_path, write_npz, kind):
    write_npz(tmp_path)
    bad = tmp_path / "train.npz"
    _write_bad_train_npz(bad, kind)
    with pytest.raises(DataError, match=f"^{bad}: ({BAD_FILES[kind]})"):
        CIFAR10DataModule(data_dir=tmp_path).setup()


@pytest.mark.parametrize("content", [b"garbage", b""])
def test_a_bad_pickled_batch_is_reported_with_its_path(tmp_path, write_batches, content):
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder, CIFAR10_BATCHES)
    (folder / "data_batch_3").write_bytes(content)
    with pytest.raises(DataError, match=f"^{folder}/data_batch_3: not a readable CIFAR python batch"):
        CIFAR10DataModule(data_dir=tmp_path).setup()


def test_train_subset_is_balanced_and_seeded(tmp_path, write_npz):
    write_npz(tmp_path, train=200)

    def subset(seed: int) -> torch.Tensor:
        dm = CIFAR10DataModule(data_dir=tmp_path, train_subset=30, seed=seed)
        dm.setup()
        return torch.tensor(dm.train_set.indices)

    indices = subset(0)
    labels = torch.arange(200) % 10
    assert torch.bincount(labels[indices], minlength=10).tolist() == [3] * 10
    assert torch.equal(indices, subset(0))
    assert not torch.equal(indices, subset(1))


def test_loaders_give_normalised_float_batches(tmp_path, write_npz):
    write_npz(tmp_path)
    dm = CIFAR10DataModule(data_dir=tmp_path, batch_size=16, eval_batch_size=20)
    dm.setup()
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    val_images, _ = next(iter(dm.val_dataloader()))
    expected = (dm.val_set.images.float() / 255 - torch.tensor(dm.mean).view(3, 1, 1)) / torch.tensor(dm.std).view(
        3, 1, 1
    )
    torch.testing.assert_close(val_images, expected)


def _train_epochs(
    data_dir: Path, seed: int, num_workers: int = 0, epochs: int = 1, first_epoch: int = 0
) -> list[torch.Tensor]:
    """All training images of each epoch, in loader order: ``epochs`` tensors ``[N, 3, 32, 32]``. Before each
    epoch the sampler is told the epoch, as Lightning does."""
    dm = CIFAR10DataModule(data_dir=data_dir, batch_size=8, seed=seed, num_workers=num_workers)
    dm.setup()
    loader = dm.train_dataloader()
    out = []
    for epoch in range(first_epoch, first_epoch + epochs):
        loader.sampler.set_epoch(epoch)
        out.append(torch.cat([images for images, _ in loader]))
    return out


def test_training_batches_are_seed_deterministic(tmp_path, write_npz):
    write_npz(tmp_path)
    torch.manual_seed(123)
    first = _train_epochs(tmp_path, seed=0, epochs=2)
    torch.manual_seed(456)
    again = _train_epochs(tmp_path, seed=0, epochs=2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[0], _train_epochs(tmp_path, seed=1)[0])


@pytest.mark.parametrize("num_workers", [0, 1])
def test_every_epoch_is_a_pure_function_of_seed_and_epoch(tmp_path, write_npz, num_workers):
    """Order and augmentation of epoch 1 are the same whether the loader ran epoch 0 before (the uninterrupted run)
    or starts at epoch 1 (a run resumed from epoch 0's checkpoint), in the main process and in workers."""
    write_npz(tmp_path)
    first = _train_epochs(tmp_path, seed=0, num_workers=num_workers, epochs=2)
    resumed = _train_epochs(tmp_path, seed=0, num_workers=num_workers, first_epoch=1)
    assert torch.equal(resumed[0], first[1])
    assert not torch.equal(first[0], first[1])


REAL_CIFAR10 = Path(os.environ.get("CIMEXP_DATA", "/work/shared/data/cifar10"))


@pytest.mark.slow
def test_real_cifar10_copy():
    dm = CIFAR10DataModule(data_dir=REAL_CIFAR10)
    try:
        dm.setup()
    except FileNotFoundError as error:
        pytest.skip(f"real CIFAR-10 not available: {error}")
    assert (len(dm.train_set), len(dm.val_set)) == (50_000, 10_000)
    assert dm.train_set.targets[:5].tolist() == [6, 9, 9, 4, 1]
    assert dm.val_set.targets[:5].tolist() == [3, 8, 8, 0, 6]
    assert torch.bincount(dm.train_set.targets).tolist() == [5000] * 10
    pixels = dm.train_set.images[:, 0, 0, :3]
    assert pixels[0].tolist() == [59, 43, 50]


@pytest.mark.slow
def test_real_cifar10_copy_is_not_cifar100():
    if not (REAL_CIFAR10 / "train.npz").is_file():
        pytest.skip(f"real CIFAR-10 not available in {REAL_CIFAR10}")
    with pytest.raises(DataError, match=r"train.npz: the labels cover 10 classes .* is this CIFAR-10\?"):
        CIFAR100DataModule(data_dir=REAL_CIFAR10).setup()
