"""Tests for dataset loading and reference sets (all data synthetic or embedded)."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from shapprune.zoo.data import (
    DATASETS,
    DatasetSplits,
    RestrictedUnpickler,
    Split,
    load_dataset,
    read_idx,
    reference_set,
)


@pytest.fixture(scope="module")
def mnist5k() -> DatasetSplits:
    return load_dataset("mnist5k", seed=0)


def _ids(split: Split) -> set[bytes]:
    return {row.numpy().tobytes() for row in split.x}


# --- mnist5k ---------------------------------------------------------------------------------


def test_mnist5k_sizes_stratified_and_normalised(mnist5k: DatasetSplits) -> None:
    d = mnist5k
    assert (len(d.train), len(d.val), len(d.test)) == (3500, 500, 1000)
    assert (d.num_classes, d.in_channels, d.image_size) == (10, 1, 28)
    for split, per_class in ((d.train, 350), (d.val, 50), (d.test, 100)):
        assert split.x.shape[1:] == (1, 28, 28) and split.x.dtype == torch.float32
        assert split.y.dtype == torch.int64
        assert torch.bincount(split.y, minlength=10).tolist() == [per_class] * 10
    assert abs(d.train.x.mean().item()) < 0.05 and abs(d.train.x.std().item() - 1) < 0.05
    assert d.train.y[:50].unique().numel() > 5  # shuffled, not sorted by class


def test_mnist5k_splits_are_disjoint(mnist5k: DatasetSplits) -> None:
    tr, va, te = _ids(mnist5k.train), _ids(mnist5k.val), _ids(mnist5k.test)
    # the raw subset itself has a few duplicate images; allow none beyond that
    assert len(tr & va) + len(tr & te) + len(va & te) <= 2
    assert len(tr) + len(va) + len(te) >= 4990


def test_mnist5k_split_is_deterministic_per_seed(mnist5k: DatasetSplits) -> None:
    again = load_dataset("mnist5k", seed=0)
    other = load_dataset("mnist5k", seed=1)
    assert torch.equal(again.train.x, mnist5k.train.x)
    assert torch.equal(again.test.y, mnist5k.test.y)
    assert not torch.equal(other.train.y, mnist5k.train.y)


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'") as info:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(info.value)


# --- IDX -------------------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> None:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 3, 5), dtype=np.uint8)
    _write_idx(tmp_path / f"img{suffix}", images)
    assert np.array_equal(read_idx(tmp_path / f"img{suffix}"), images)
    ints = rng.integers(-1000, 1000, size=(6,)).astype(np.int32)
    _write_idx(tmp_path / f"ints{suffix}", ints, code=0x0C)
    assert np.array_equal(read_idx(tmp_path / f"ints{suffix}"), ints)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "short", np.zeros((2, 2), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="expected"):
        read_idx(tmp_path / "short")


def _write_mnist(folder: Path, n_train: int, n_test: int, gz: bool) -> tuple[np.ndarray, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        (np.arange(n_train) % 10).astype(np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        (np.arange(n_test) % 10).astype(np.uint8),
    )
    stems = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    for stem, arr in zip(stems, arrays, strict=True):
        _write_idx(folder / (stem + (".gz" if gz else "")), arr)
    return arrays


@pytest.mark.parametrize(
    ("name", "layout", "gz"),
    [
        ("mnist", ".", False),
        ("mnist", "MNIST/raw", True),
        ("fashion-mnist", "FashionMNIST/raw", False),
    ],
)
def test_idx_datasets_load_from_local_files(
    tmp_path: Path, name: str, layout: str, gz: bool
) -> None:
    _, ytr, xte, yte = _write_mnist(tmp_path / layout, 40, 12, gz)
    d = load_dataset(name, root=tmp_path, seed=0)
    assert (len(d.train), len(d.val), len(d.test)) == (36, 4, 12)
    assert torch.equal(d.test.y, torch.from_numpy(yte.astype(np.int64)))
    mean, std = d.mean[0], d.std[0]
    assert torch.allclose(
        d.test.x[:, 0] * std + mean, torch.from_numpy(xte / 255).float(), atol=1e-5
    )
    assert sorted(torch.cat([d.train.y, d.val.y]).tolist()) == sorted(ytr.tolist())


def test_missing_idx_file_names_expected_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", root=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "train-images-idx3-ubyte") in msg
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") in msg
    assert "does not download" in msg and "\n" not in msg


# --- CIFAR-10 --------------------------------------------------------------------------------

_CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _cifar_batch(i: int, n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), (np.arange(n) + i) % 10


def test_cifar10_binary_format(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for i, stem in enumerate(_CIFAR_FILES):
        data, labels = _cifar_batch(i)
        records = np.concatenate([labels[:, None].astype(np.uint8), data], axis=1)
        (folder / f"{stem}.bin").write_bytes(records.tobytes())
    d = load_dataset("cifar10", root=tmp_path)
    assert (len(d.train), len(d.val), len(d.test), d.in_channels, d.image_size) == (18, 2, 4, 3, 32)
    data, labels = _cifar_batch(5)
    assert d.test.y.tolist() == labels.tolist()
    std, mean = torch.tensor(d.std)[:, None, None], torch.tensor(d.mean)[:, None, None]
    pixels = torch.from_numpy(data.reshape(-1, 3, 32, 32) / 255).float()
    assert torch.allclose(d.test.x * std + mean, pixels, atol=1e-5)


def test_cifar10_python_format(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i, stem in enumerate(_CIFAR_FILES):
        data, labels = _cifar_batch(i)
        batch = {b"batch_label": b"x", b"labels": labels.tolist(), b"data": data}
        batch[b"filenames"] = [b"f%d.png" % j for j in range(len(labels))]
        (folder / stem).write_bytes(pickle.dumps(batch, protocol=4))
    d = load_dataset("cifar10", root=tmp_path)
    assert (len(d.train), len(d.test)) == (18, 4)
    assert d.test.y.tolist() == _cifar_batch(5)[1].tolist()


def test_restricted_unpickler_refuses_other_globals(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for stem in _CIFAR_FILES:
        (folder / stem).write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        load_dataset("cifar10", root=tmp_path)
    payload = pickle.dumps(np.arange(3), protocol=4)
    assert np.array_equal(RestrictedUnpickler(io.BytesIO(payload)).load(), np.arange(3))


def test_missing_cifar_names_both_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar10", root=tmp_path)
    assert str(tmp_path / "cifar-10-batches-bin") in str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in str(info.value)
    (tmp_path / "cifar-10-batches-bin").mkdir()
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin"):
        load_dataset("cifar10", root=tmp_path)


# --- image folders ---------------------------------------------------------------------------


def test_imagefolder_loads_resizes_and_splits(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for j in range(10):
            arr = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{j}.png")
    d = load_dataset(f"imagefolder:{tmp_path}", image_size=16)
    assert d.classes == ("cat", "dog") and d.num_classes == 2 and d.in_channels == 3
    assert (len(d.train), len(d.val), len(d.test)) == (16, 2, 2)
    assert d.train.x.shape[1:] == (3, 16, 16)
    assert torch.bincount(d.test.y).tolist() == [1, 1]
    again = load_dataset(str(tmp_path), image_size=16)  # a bare directory path works too
    assert torch.equal(again.train.x, d.train.x)


def test_empty_imagefolder_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        load_dataset(f"imagefolder:{tmp_path}")


# --- reference sets --------------------------------------------------------------------------


def _toy_split() -> Split:
    y = torch.tensor([0] * 5 + [1] * 3 + [2] * 4)
    x = torch.arange(len(y), dtype=torch.float32).reshape(-1, 1, 1, 1)
    return Split(x, y)


def test_reference_set_k_per_class_deterministic() -> None:
    split = _toy_split()
    a = reference_set(split, per_class=3, seed=5)
    b = reference_set(split, per_class=3, seed=5)
    assert a.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert torch.equal(a.x, b.x)
    idx = a.x.flatten().long()
    assert torch.equal(split.y[idx], a.y)  # examples keep their labels
    assert len(set(idx.tolist())) == 9
    draws = {tuple(reference_set(split, 2, seed=s).x.flatten().tolist()) for s in range(10)}
    assert len(draws) > 1


def test_reference_set_too_few_examples() -> None:
    with pytest.raises(ValueError, match="class 1 has only 3 examples"):
        reference_set(_toy_split(), per_class=4, seed=0)
    with pytest.raises(ValueError, match="class 3 has only 0"):
        reference_set(_toy_split(), per_class=1, seed=0, num_classes=4)


def test_split_validates_shapes() -> None:
    with pytest.raises(ValueError, match="N x C x H x W"):
        Split(torch.zeros(3, 4), torch.zeros(3, dtype=torch.int64))
