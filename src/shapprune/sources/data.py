"""The registry of data sources: every way to name a dataset, in one open table.

``--data`` (and ``load_data``) takes a zoo dataset (``mnist5k``, embedded; ``mnist``,
``fashion-mnist``, ``cifar10`` from local files), an image folder (class subfolders, or
``train/``, ``val/``, ``test/`` subfolders used as the splits; ``imagefolder:DIR`` as well),
or ``path/to/file.py:NAME`` / ``package.module:NAME``: a torch ``Dataset``, a dict of them
(keys train/val/test), or a function returning one. A folder is streamed: only the
reference examples and a few example inputs are decoded into memory.

``register_data_source("mine", load)`` adds ``mine:ARG``, loaded by ``load(ARG, request)``
(a :class:`DataRequest`) returning ``DatasetSplits``, a ``Dataset``, a ``DataLoader`` or a
dict of them.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shapprune.data import DatasetSplits, as_splits, examples
from shapprune.sources.folders import class_names, folder_splits, scan_folder
from shapprune.sources.preprocessing import Preprocessing, input_channels, torchvision_hint

__all__ = [
    "DATA_SOURCES",
    "DataRequest",
    "DataSource",
    "check_data_source",
    "check_model_fits",
    "describe_data_sources",
    "load_data",
    "read_classes",
    "register_data_source",
]

ZOO_DATASETS = ("mnist5k", "mnist", "fashion-mnist", "cifar10")
PREPROCESSING_KEYS = ("image_size", "resize", "mean", "std")


@dataclass(frozen=True)
class DataRequest:
    """What a data source may use besides its argument: where local datasets live, the
    seed of its split, the model's preprocessing (None: unknown), the channels its first
    layer takes, class names (a ``--classes`` file) and the model's own labels."""

    root: Path | None = None
    seed: int = 0
    preprocessing: Preprocessing | None = None
    channels: int | None = None
    classes: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    model: str = ""
    hint: str = ""


Loader = Callable[[str, DataRequest], Any]


@dataclass
class DataSource:
    """``prefix:ARG`` loaded by ``load(ARG, request)``; ``help`` says what ARG is."""

    prefix: str
    load: Loader
    help: str = ""
    arg: str = "NAME"


DATA_SOURCES: dict[str, DataSource] = {}


def register_data_source(
    prefix: str, load: Loader, *, help: str = "", arg: str = "NAME", replace: bool = False
) -> DataSource:
    """Make ``prefix:ARG`` a data source loaded by ``load(ARG, request)``."""
    if not prefix.isidentifier() or len(prefix) < 2:
        raise ValueError(f"a data source prefix must be an identifier of 2+ letters: {prefix!r}")
    if prefix in DATA_SOURCES and not replace:
        raise ValueError(f"a data source {prefix!r} is already registered; pass replace=True")
    DATA_SOURCES[prefix] = DataSource(prefix, load, help, arg)
    return DATA_SOURCES[prefix]


# --- the registered sources ------------------------------------------------------------------


def _zoo(name: str, request: DataRequest) -> DatasetSplits:
    from shapprune.zoo.data import load_dataset

    return load_dataset(name, root=request.root, seed=request.seed)


def _folder(folder: str, request: DataRequest) -> DatasetSplits:
    path = Path(folder).expanduser()
    parts = scan_folder(path)
    pre = request.preprocessing
    if pre is None:
        raise ValueError(_unknown_preprocessing(request, path))
    pre = pre.for_channels(request.channels)
    names, _ = class_names(parts, request.classes, request.labels)
    splits = as_splits(folder_splits(parts, names, pre, request.seed), request.seed,
                       name=str(path))  # fmt: skip
    return replace(
        splits,
        num_classes=len(names),
        classes=tuple(names),
        in_channels=pre.channels or len(pre.mean),
        image_size=pre.image_size[-1],
        mean=pre.mean,
        std=pre.std,
        preprocessing=pre.to_dict(),
    )


def _unknown_preprocessing(request: DataRequest, path: Path) -> str:
    hint = f" ({request.hint})" if request.hint else ""
    return (
        f"the preprocessing of model {request.model or '?'} is not known, so images of {path} "
        "cannot be made into its inputs: give --image-size N --mean M,M,M --std S,S,S (and "
        f"--resize N to resize before a centre crop), as the model was trained{hint}"
    )


register_data_source("zoo", _zoo, help="a zoo dataset (" + ", ".join(ZOO_DATASETS) + ")")
register_data_source("imagefolder", _folder, help="an image folder", arg="DIR")


# --- a user's code ---------------------------------------------------------------------------


def _user_object(text: str) -> Any:
    """The object ``FILE.py:NAME`` or ``package.module:NAME`` names (a function is called)."""
    where, _, name = text.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise FileNotFoundError(f"data file {path} not found (--data FILE.py:NAME)")
        module_name = f"shapprune_user_data_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # DataLoader workers unpickle items by module
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            sys.modules.pop(module_name, None)
            raise ValueError(f"importing {path} failed: {type(err).__name__}: "
                             f"{' '.join(str(err).split())}") from None  # fmt: skip
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise ValueError(f"cannot import {where!r} for --data {text}: {err}") from None
    if not name.isidentifier() or not hasattr(module, name):
        defined = [n for n in vars(module) if not n.startswith("_") and n[0].isalpha()
                   and not inspect.ismodule(getattr(module, n))]  # fmt: skip
        raise ValueError(
            f"{where} has no {name!r} (--data {text}); it defines: "
            f"{', '.join(defined[:10]) or 'nothing'}"
        )
    obj = getattr(module, name)
    if inspect.isfunction(obj):
        try:
            obj = obj()
        except Exception as err:
            raise ValueError(f"{text}() failed: {' '.join(str(err).split()) or type(err).__name__}"
                             ) from None  # fmt: skip
    return obj


# --- telling the kinds apart -----------------------------------------------------------------


def _kind(text: str) -> str:
    prefix, sep, rest = text.partition(":")
    if sep and prefix in DATA_SOURCES:
        return "prefix"
    if sep and rest:
        where = text.rpartition(":")[0]
        if where.endswith(".py"):
            return "file"
        if all(p.isidentifier() for p in prefix.split(".")) and rest.isidentifier():
            return "module"
    if text in ZOO_DATASETS:
        return "zoo"
    if Path(text).expanduser().is_dir():
        return "folder"
    return "unknown"


def describe_data_sources() -> str:
    """One line of help: the kinds of --data, the registered prefixes included."""
    return (
        "a zoo dataset (" + ", ".join(ZOO_DATASETS) + "; mnist5k is embedded), an image folder "
        "(class subfolders, or train/ val/ test/), FILE.py:NAME or package.module:NAME (a "
        "torch Dataset or a dict of them), "
        + ", ".join(f"{p}:{s.arg}" for p, s in DATA_SOURCES.items())
    )


def _unknown(text: str) -> ValueError:
    prefix, sep, _ = text.partition(":")
    what = (
        f"unknown data source {prefix + ':'!r}"
        if sep
        else f"unknown dataset {text!r} (no zoo dataset and no folder of that name)"
    )
    return ValueError(f"{what}; give {describe_data_sources()}")


def check_data_source(source: str) -> str:
    """The kind of data ``source`` names (prefix, file, module, zoo, folder), checked
    without loading it: an unknown source or a missing file is an error before any work."""
    text = str(source)
    kind = _kind(text)
    if kind == "unknown":
        raise _unknown(text)
    if kind == "module":
        module = text.partition(":")[0]
        if "." not in module and importlib.util.find_spec(module) is None:
            raise ValueError(f"{_unknown(text)} (no module {module!r} either)")
    if kind == "file" and not Path(text.rpartition(":")[0]).is_file():
        raise FileNotFoundError(
            f"data file {text.rpartition(':')[0]} not found (--data FILE.py:NAME)"
        )
    return kind


def read_classes(path: str | Path | None) -> tuple[str, ...] | None:
    """Class names, one per line (``--classes``); blank lines skipped."""
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--classes file {file} not found (one class name per line)")
    names = tuple(line.strip() for line in file.read_text(encoding="utf-8").splitlines())
    names = tuple(n for n in names if n)
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"--classes {file} must name two or more distinct classes, one a line")
    return names


def _preprocessing(
    meta: Mapping[str, Any], explicit: Mapping[str, Any] | None
) -> Preprocessing | None:
    """The model's preprocessing (its metadata), each explicitly given value replacing its
    own; None where neither says the size, mean and std."""
    given = {k: v for k, v in (explicit or {}).items() if v is not None}
    unknown = sorted(set(given) - set(PREPROCESSING_KEYS) - {"interpolation"})
    if unknown:
        raise ValueError(f"unknown preprocessing keys {unknown}; known: {PREPROCESSING_KEYS}")
    values = {**dict(meta.get("preprocessing") or {}), **given}
    if "image_size" in given and "resize" not in given:  # the model's resize fits its own size
        values["resize"] = None
    if not values:
        return None
    missing = [k for k in ("image_size", "mean", "std") if values.get(k) is None]
    if missing:
        flags = ", ".join("--" + k.replace("_", "-") for k in missing)
        raise ValueError(
            f"the preprocessing is incomplete: give {flags} too (the model's own preprocessing "
            "is not known)"
        )
    return Preprocessing.from_dict(values)


def _zoo_model(meta: Mapping[str, Any]) -> bool:
    from shapprune.zoo.models import MODELS

    return meta.get("model") in MODELS and not meta.get("source")


def load_data(
    source: str,
    *,
    model: nn.Module | None = None,
    meta: Mapping[str, Any] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    classes: str | Path | Sequence[str] | None = None,
    root: str | Path | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    workers: int = 0,
) -> DatasetSplits:
    """The dataset ``source`` names, split, as ``DatasetSplits`` (streamed where it is a
    folder or a Dataset); see the module's doc for the kinds of source.

    ``model`` and its ``meta`` (as ``load_model`` returns them) give the preprocessing of
    image folders (``meta["preprocessing"]``), the channels images convert to and the
    model's class names; with ``model`` given, one forward pass checks that the model takes
    the examples and has one output per class. ``preprocessing``: ``image_size``,
    ``resize``, ``mean``, ``std`` given explicitly (each replaces the model's). ``classes``:
    class names in index order, or a file of them. ``batch_size``, ``workers``: how a
    streamed split is read (a DataLoader's own settings are kept).
    """
    meta = dict(meta or {})
    text = str(source)
    kind = check_data_source(text)
    given = {k: v for k, v in (preprocessing or {}).items() if v is not None}
    names = read_classes(classes) if isinstance(classes, str | Path) else classes
    model_name = str(meta.get("model", ""))
    request = DataRequest(
        root=Path(root).expanduser() if root is not None else None,
        seed=seed,
        channels=input_channels(model) if model is not None else None,
        classes=tuple(names) if names else None,
        labels=tuple(meta["labels"]) if meta.get("labels") else None,
        model=model_name,
        hint=torchvision_hint(model_name.partition(":")[2])
        if model_name.startswith("torchvision:")
        else "",
    )
    prefix, _, rest = text.partition(":")
    if kind == "prefix" and not rest:
        raise ValueError(f"--data {text}: give a {DATA_SOURCES[prefix].arg} after {prefix}:")
    folder = kind == "folder" or (kind == "prefix" and prefix == "imagefolder")
    if folder and _zoo_model(meta) and not meta.get("preprocessing") and not given:
        # a zoo model trained on this folder by its recipe: the zoo's own loading of it
        from shapprune.zoo.data import load_dataset

        size = int((meta.get("recipe") or {}).get("image_size", 32))
        folder_path = rest if kind == "prefix" else text
        loaded: Any = load_dataset(folder_path, root=root, seed=seed, image_size=size)
    elif folder:
        pre = _preprocessing(meta, given)
        request = replace(request, preprocessing=pre)
        loaded = _folder(rest if kind == "prefix" else text, request)
    else:
        if given or names:
            which = ", ".join("--" + k.replace("_", "-") for k in given) or "--classes"
            warnings.warn(f"{which} apply to image folders only; {text} gives its own tensors",
                          stacklevel=2)  # fmt: skip
        if kind == "prefix":
            loaded = DATA_SOURCES[prefix].load(rest, request)
        elif kind in ("file", "module"):
            loaded = _user_object(text)
        elif kind == "zoo":
            loaded = _zoo(text, request)
        else:
            raise _unknown(text)
    splits = as_splits(loaded, seed, name=text, batch_size=batch_size, workers=workers)
    if splits is loaded:  # DatasetSplits given: only the loader settings are this call's
        splits = replace(splits, batch_size=batch_size, workers=workers)
    if splits.preprocessing is None and splits.mean:
        splits = replace(splits, preprocessing={"image_size": [splits.image_size] * 2,
                                                "mean": list(splits.mean),
                                                "std": list(splits.std)})  # fmt: skip
    if model is not None:
        check_model_fits(model, splits)
    return splits


def check_model_fits(model: nn.Module, splits: DatasetSplits) -> None:
    """One forward pass on two examples: the model takes them, and has one output per
    class of the data (a one-line error naming the fix where not)."""
    x = examples(splits.val, 2)
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(param.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:
        msg = " ".join(str(err).split())[:300] or type(err).__name__
        raise ValueError(
            f"the model does not take {splits.name}'s examples (shape {tuple(x.shape[1:])}): "
            f"{msg}; give the image size and channels it was trained with (--image-size)"
        ) from None
    finally:
        model.train(was_training)
    outputs = out.shape[-1] if torch.is_tensor(out) and out.ndim >= 1 else None
    if outputs is not None and outputs != splits.num_classes:
        shown = ", ".join(splits.classes[:4]) + (", ..." if len(splits.classes) > 4 else "")
        raise ValueError(
            f"the model has {outputs} outputs but {splits.name} has {splits.num_classes} "
            f"classes{f' ({shown})' if shown else ''}: give a model with {splits.num_classes} "
            f"outputs (e.g. --model-arg num_classes={splits.num_classes}) or a --classes file "
            f"naming its {outputs} classes"
        )
