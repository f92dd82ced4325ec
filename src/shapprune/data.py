"""Data as the pipeline sees it: plain records and the few ways through them.

A split is held in memory (:class:`Split`: tensors) or streamed (a torch ``Dataset``, whose
items are decoded on access, or a ``DataLoader``). Only what a step needs is materialised:
the reference examples (``reference_set``: a few per class, chosen from the labels alone
where the split knows them) and a couple of example inputs; accuracy and loss go through
``batches``. This module is below ``game/``, ``pruning/`` and ``evaluation/``: it knows no
zoo and no source, only tensors, Datasets and DataLoaders.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

__all__ = [
    "DatasetSplits",
    "Split",
    "SplitLike",
    "as_splits",
    "as_tensors",
    "batches",
    "examples",
    "labels_of",
    "reference_set",
    "split_size",
    "stratified_indices",
    "take",
]

BATCH_SIZE = 64
"""Examples per batch where a split is streamed (``--batch-size``): 64 images of 224 px
and a ResNet's activations on them fit well within a few hundred MB."""


@dataclass(frozen=True)
class Split:
    """Images ``x`` (float32, N x C x H x W) and labels ``y`` (int64, N), in memory."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise ValueError(
                f"Split needs x of shape N x C x H x W and y of shape N, "
                f"got {tuple(self.x.shape)} and {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return len(self.y)


SplitLike = Union[Split, Dataset, DataLoader, tuple]  # noqa: UP007 (a runtime alias)
"""A split as the API takes it: tensors (a ``Split`` or ``(x, y)``), a map-style torch
``Dataset`` of ``(image, label)`` items, or a ``DataLoader`` of ``(x, y)`` batches."""


@dataclass(frozen=True)
class DatasetSplits:
    """Train/val/test splits of one dataset, with what is known of its shape and
    preprocessing. Each split is a :data:`SplitLike`: tensors, or a Dataset / DataLoader
    streamed in batches of ``batch_size`` (None: ``BATCH_SIZE``; tensors 512 at a time)
    through ``workers`` loader processes.

    The validation split gives the reference examples, the test split measures; train is
    used only for fine-tuning (it may be None where there is none).
    """

    train: Any
    val: Any
    test: Any
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    classes: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    batch_size: int | None = None
    workers: int = 0
    preprocessing: Mapping[str, Any] | None = field(default=None, compare=False)


# --- reading a split -------------------------------------------------------------------------


def _base(split: Any) -> Any:
    """The map-style dataset behind a DataLoader (or the split itself); a DataLoader over
    an iterable dataset stays itself (it can only be read in order)."""
    if isinstance(split, DataLoader) and _indexable(split.dataset):
        return split.dataset
    return split


def _indexable(data: Any) -> bool:
    return not isinstance(data, IterableDataset | DataLoader) and hasattr(data, "__len__")


def split_size(split: Any) -> int:
    """The number of examples of a split (a DataLoader: of its dataset)."""
    if isinstance(split, tuple):
        return len(split[1])
    base = _base(split)
    return len(base) if _indexable(base) else len(labels_of(split))


def known_size(split: Any) -> int | None:
    """The number of examples where it is known without reading the split (None for a
    DataLoader over an iterable dataset): what a progress display counts toward."""
    if isinstance(split, tuple):
        return len(split[1])
    base = _base(split)
    return len(base) if _indexable(base) else None


def labels_of(split: Any) -> np.ndarray:
    """Every label of ``split`` as int64, without decoding images where the split knows
    them: a Split's ``y``, a dataset's ``targets`` (torchvision's and shapprune's folders
    have them), a ``Subset`` of one; else read item by item (decoding each once)."""
    if isinstance(split, Split):
        return split.y.cpu().numpy().astype(np.int64)
    if isinstance(split, tuple):
        return torch.as_tensor(split[1]).cpu().numpy().astype(np.int64)
    data = _base(split)
    if not _indexable(data):  # read in order, once
        return np.concatenate([y.numpy() for _, y in batches(data)]).astype(np.int64)
    if isinstance(data, Subset):
        return labels_of(data.dataset)[np.asarray(data.indices, dtype=np.int64)]
    targets = getattr(data, "targets", None)
    if targets is not None and len(targets) == len(data):
        return torch.as_tensor(np.asarray(targets)).numpy().astype(np.int64)
    return np.array([int(_label(data[i])) for i in range(len(data))], dtype=np.int64)


def _label(item: Any) -> int:
    if not isinstance(item, tuple | list) or len(item) < 2:
        raise ValueError(
            f"a dataset item must be (image, label), got {type(item).__name__}; "
            "return (tensor of C x H x W, class index) from __getitem__"
        )
    return int(torch.as_tensor(item[1]))


def _image(item: Any) -> torch.Tensor:
    x = torch.as_tensor(item[0] if isinstance(item, tuple | list) else item)
    if x.ndim != 3:
        raise ValueError(
            f"a dataset item's image must be a C x H x W tensor, got shape {tuple(x.shape)}; "
            "convert images with a transform (e.g. torchvision.transforms.ToTensor())"
        )
    return x.float()


def take(split: Any, indices: Sequence[int] | np.ndarray) -> Split:
    """The examples at ``indices`` in memory: only these are decoded. A DataLoader without a
    map-style dataset is read batch by batch until the last index."""
    idx = np.asarray(indices, dtype=np.int64)
    if isinstance(split, Split):
        order = torch.from_numpy(idx)
        return Split(split.x[order], split.y[order])
    if isinstance(split, tuple):
        return take(Split(*split), idx)
    data = _base(split)
    if _indexable(data):
        items = [data[int(i)] for i in idx]
        if not items:
            raise ValueError("no examples to take")
        x = torch.stack([_image(it) for it in items])
        return Split(x, torch.tensor([_label(it) for it in items], dtype=torch.int64))
    wanted = {int(i): k for k, i in enumerate(idx)}
    xs: list = [None] * len(idx)
    ys: list = [None] * len(idx)
    seen = 0
    for x, y in batches(split):
        for j in range(len(y)):
            if seen + j in wanted:
                k = wanted[seen + j]
                xs[k], ys[k] = x[j], int(y[j])
        seen += len(y)
        if seen > max(wanted, default=-1):
            break
    return Split(torch.stack(xs).float(), torch.tensor(ys, dtype=torch.int64))


def examples(split: Any, n: int = 2) -> torch.Tensor:
    """The first ``n`` inputs of ``split`` (fewer if it has fewer): what a forward pass
    needs to trace the model or count its MACs."""
    if isinstance(split, Split):
        return split.x[:n]
    if isinstance(split, tuple):
        return split[0][:n]
    if not _indexable(_base(split)):  # the first batches, in order
        xs, count = [], 0
        for x, _ in batches(split):
            xs.append(x)
            count += len(x)
            if count >= n:
                break
        return torch.cat(xs)[:n]
    return take(split, np.arange(min(n, split_size(split)))).x


def batches(
    split: Any, batch_size: int | None = None, workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches of ``split`` in order: slices of tensors, a DataLoader as it is,
    a Dataset through a DataLoader of ``batch_size`` with ``workers`` processes."""
    batch_size = batch_size or BATCH_SIZE
    if isinstance(split, tuple):
        split = Split(*split)
    if isinstance(split, Split):
        for i in range(0, len(split), batch_size):
            yield split.x[i : i + batch_size], split.y[i : i + batch_size]
        return
    loader = split
    if not isinstance(split, DataLoader):
        loader = DataLoader(split, batch_size=batch_size, shuffle=False, num_workers=workers)
    for item in loader:
        x, y = item[0], item[1]
        yield torch.as_tensor(x).float(), torch.as_tensor(y).long()


def as_tensors(split: Any) -> Split:
    """The whole split in memory (for what needs it all at once: fine-tuning, a game on
    every example); a Split is returned as it is."""
    if isinstance(split, Split):
        return split
    if isinstance(split, tuple):
        return Split(*split)
    if not _indexable(_base(split)):
        xs, ys = zip(*batches(split), strict=True)
        return Split(torch.cat(xs), torch.cat(ys))
    return take(split, np.arange(split_size(split)))


# --- drawing ---------------------------------------------------------------------------------


def stratified_indices(
    y: np.ndarray, fractions: tuple[float, ...], rng: np.random.Generator
) -> list[np.ndarray]:
    """Split indices per class by ``fractions`` (last part takes the rest), then shuffle."""
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        bounds = np.round(np.cumsum(fractions)[:-1] * len(idx)).astype(int)
        for i, chunk in enumerate(np.split(idx, bounds)):
            parts[i].append(chunk)
    return [rng.permutation(np.concatenate(p)) for p in parts]


def reference_set(
    split: Any,
    per_class: int,
    seed: int,
    *,
    num_classes: int | None = None,
    classes: Sequence[str] = (),
) -> Split:
    """``per_class`` seeded examples of every class, ordered by class then original index,
    in memory; chosen from the labels alone, so only those examples are decoded.

    With ``num_classes`` every class 0..num_classes-1 must be present; otherwise the classes
    are those occurring in ``split``. ``classes``: class names, for the messages.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    y = labels_of(split)
    wanted = np.arange(num_classes) if num_classes is not None else np.unique(y)
    counts = [int((y == c).sum()) for c in wanted]
    for c, count in zip(wanted, counts, strict=True):
        if count < per_class:
            name = f" ({classes[int(c)]!r})" if int(c) < len(classes) else ""
            fix = (
                f"pass --per-class {min(counts)} or fewer, or give more examples"
                if min(counts)
                else "give examples of every class"
            )
            raise ValueError(
                f"class {int(c)}{name} has only {count} examples in the split the reference "
                f"examples are drawn from ({len(y)} examples), fewer than per_class="
                f"{per_class}: {fix}"
            )
    rng = np.random.default_rng(seed)
    chosen = [np.sort(rng.choice(np.flatnonzero(y == c), size=per_class, replace=False))
              for c in wanted]  # fmt: skip
    return take(split, np.concatenate(chosen))


# --- the API's inputs --------------------------------------------------------------------------


def _is_split(value: Any) -> bool:
    if isinstance(value, Split | Dataset | DataLoader):
        return True
    return isinstance(value, tuple) and len(value) == 2 and all(torch.is_tensor(v) for v in value)


def _describe(split: Any) -> tuple[int, int, int]:
    """(channels, image size, number of classes) read from one example and the labels."""
    x = examples(split, 1)
    labels = labels_of(split)
    return int(x.shape[1]), int(x.shape[-1]), int(labels.max()) + 1 if len(labels) else 0


def as_splits(
    data: Any,
    seed: int = 0,
    *,
    name: str = "data",
    batch_size: int | None = None,
    workers: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> DatasetSplits:
    """``data`` as ``DatasetSplits``: one already is; a dict with keys train/val/test (val
    missing: a tenth of train, stratified by ``seed``; test missing: val measures too); one
    Dataset or ``(x, y)`` tensors: split by ``seed`` (``fractions``, stratified); one
    DataLoader: its reference examples are drawn from it and it is measured whole."""
    if isinstance(data, DatasetSplits):
        return data
    if isinstance(data, Mapping):
        unknown = sorted(set(data) - {"train", "val", "test"})
        if unknown or not data:
            raise ValueError(
                f"a dict of splits takes the keys train, val and test; got {sorted(data)}"
            )
        for key, value in data.items():
            if not _is_split(value):
                raise ValueError(
                    f"split {key!r} is a {type(value).__name__}: give a torch Dataset, a "
                    "DataLoader or (x, y) tensors"
                )
        train, val, test = data.get("train"), data.get("val"), data.get("test")
        if val is None and train is None:
            val = test
        elif val is None:
            tr, va = _split_off(train, (0.9, 0.1), seed)
            train, val = tr, va
        test = val if test is None else test
    elif _is_split(data):
        if isinstance(data, DataLoader):
            train, val, test = None, data, data
        else:
            train, val, test = _split_off(data, fractions, seed)
    else:
        raise ValueError(
            f"data is a {type(data).__name__}: give DatasetSplits, a torch Dataset, a "
            "DataLoader, (x, y) tensors, or a dict of them with keys train, val, test"
        )
    channels, size, n_classes = _describe(val)
    names = _class_names(val)
    return DatasetSplits(
        train=train, val=val, test=test, name=name, num_classes=max(n_classes, len(names)),
        in_channels=channels, image_size=size, classes=names, batch_size=batch_size,
        workers=workers,
    )  # fmt: skip


def _class_names(split: Any) -> tuple[str, ...]:
    """A dataset's ``classes`` (torchvision's convention), looked up through Subsets."""
    data = _base(split)
    while isinstance(data, Subset):
        data = data.dataset
    names = getattr(data, "classes", None)
    if isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
        return tuple(names)
    return ()


def _split_off(split: Any, fractions: tuple[float, ...], seed: int) -> list[Any]:
    """``split`` cut by ``fractions``, stratified by its labels (seeded): tensors as
    tensors, a Dataset as ``Subset``s (nothing decoded but labels a dataset cannot tell)."""
    parts = stratified_indices(labels_of(split), fractions, np.random.default_rng(seed))
    if isinstance(split, Split | tuple):
        return [take(split, np.sort(p)) for p in parts]
    return [Subset(split, np.sort(p).tolist()) for p in parts]
