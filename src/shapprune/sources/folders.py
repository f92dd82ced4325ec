"""Image folders as streamed datasets: class subfolders (split by seed), or ``train/``,
``val/``, ``test/`` subfolders used as the splits.

Labels come from folder names, so the files are listed and their headers checked (a file
that is not an image is skipped and counted) but no image is decoded until an example is
asked for: the reference examples, and one batch at a time when measuring.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from shapprune.data import stratified_indices

__all__ = ["IMAGE_EXTENSIONS", "SPLIT_NAMES", "ImageFiles", "class_names", "scan_folder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test"}  # fmt: skip
FRACTIONS = (0.8, 0.1, 0.1)


class ImageFiles(Dataset):
    """Image files with their labels (``targets``, known without decoding): each item is
    ``(transform(image), label)``, decoded when asked for."""

    def __init__(self, files: Sequence[Path], targets: Sequence[int], transform: Callable) -> None:
        self.files = list(files)
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path = self.files[index]
        try:
            with Image.open(path) as image:
                x = self.transform(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise ValueError(
                f"{path} could not be decoded ({' '.join(str(err).split())}); repair it or "
                "move it out of the image folder"
            ) from None
        return x, self.targets[index]


def _dirs(path: Path) -> list[Path]:
    return sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))


def _readable(path: Path) -> bool:
    """Whether the file opens as an image (its header only: nothing is decoded)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size[0] > 0 and image.size[1] > 0
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def _images(folder: Path) -> list[tuple[Path, str]]:
    """(file, class name) of every image file under ``folder``'s class subfolders."""
    found = []
    for cls in _dirs(folder):
        for f in sorted(cls.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                found.append((f, cls.name))
    return found


def scan_folder(path: Path) -> dict[str, list[tuple[Path, str]]]:
    """The folder's files by split: ``{"train"|"val"|"test": [(file, class name)]}`` where it
    has split subfolders, else ``{"all": [...]}``; unreadable files skipped with a warning
    that counts them; errors (one line) for a missing folder, no images, one class."""
    if not path.is_dir():
        raise FileNotFoundError(f"image folder {path} not found")
    subdirs = _dirs(path)
    names = {d.name.lower() for d in subdirs}
    if names and names <= set(SPLIT_NAMES) and names & {"train", "val", "valid", "test"}:
        parts = {SPLIT_NAMES[d.name.lower()]: _images(d) for d in subdirs}
    else:
        parts = {"all": _images(path)}
    total = sum(len(p) for p in parts.values())
    if total == 0:
        where = "SPLIT/CLASS" if "all" not in parts else "CLASS"
        raise ValueError(
            f"no images in {path}: expected {path}/{where}/IMAGE with one of "
            f"{', '.join(IMAGE_EXTENSIONS)}"
        )
    bad: list[Path] = []
    for key, files in parts.items():
        kept = [(f, c) for f, c in files if _readable(f) or bad.append(f)]
        parts[key] = kept
    if bad:
        if len(bad) == total:
            raise ValueError(f"none of the {total} image files in {path} is readable "
                             f"(first: {bad[0]})")  # fmt: skip
        warnings.warn(
            f"skipped {len(bad)} of {total} files in {path} that are not readable images "
            f"(first: {bad[0]})",
            stacklevel=3,
        )
    found = sorted({c for files in parts.values() for _, c in files})
    if len(found) < 2:
        raise ValueError(
            f"{path} has {'one class' if found else 'no class'} ({', '.join(found)}): a "
            f"classifier's folder needs a subfolder of images per class, two or more"
        )
    return parts


def class_names(
    parts: dict[str, list[tuple[Path, str]]],
    classes: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
) -> tuple[list[str], str]:
    """The class names in index order, and where the order comes from: ``classes`` (a
    ``--classes`` file, every folder class in it), the model's own ``labels`` (used when
    every folder class is one of them), else the folder names sorted."""
    found = sorted({c for files in parts.values() for _, c in files})
    if classes:
        missing = [c for c in found if c not in classes]
        if missing:
            raise ValueError(
                f"class folder(s) {', '.join(missing[:5])} not in the --classes file "
                f"({len(classes)} names): add them, one per line"
            )
        return list(classes), "the --classes file"
    if labels and all(c in labels for c in found):
        return list(labels), "the model's labels (id2label)"
    if labels:
        warnings.warn(
            f"the folder's class names ({', '.join(found[:3])}, ...) are not the model's "
            f"labels ({', '.join(list(labels)[:3])}, ...): classes taken in sorted order; give "
            "a --classes file to set the order",
            stacklevel=3,
        )
    return found, "the folder names, sorted"


def folder_splits(
    parts: dict[str, list[tuple[Path, str]]],
    names: Sequence[str],
    transform: Callable,
    seed: int,
) -> dict[str, ImageFiles]:
    """``ImageFiles`` per split: the folder's own splits, or its files split by ``seed``
    (80/10/10, stratified by class; the labels alone decide)."""
    index = {n: i for i, n in enumerate(names)}

    def files(entries: list[tuple[Path, str]]) -> ImageFiles:
        return ImageFiles([f for f, _ in entries], [index[c] for _, c in entries], transform)

    if "all" not in parts:
        return {key: files(entries) for key, entries in parts.items()}
    entries = parts["all"]
    y = np.array([index[c] for _, c in entries], dtype=np.int64)
    chosen = stratified_indices(y, FRACTIONS, np.random.default_rng(seed))
    return {
        key: files([entries[i] for i in np.sort(idx)])
        for key, idx in zip(("train", "val", "test"), chosen, strict=True)
    }
