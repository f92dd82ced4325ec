"""The preprocessing a model was trained with, as one record: how an image file becomes the
tensor the model takes.

Where the model source knows it, it comes from there: timm's data config
(``timm.data.resolve_data_config``), the image processor saved in a Hugging Face folder
(``preprocessor_config.json``), a shapprune checkpoint that recorded it; else the user gives
it (``--image-size``, ``--resize``, ``--mean``, ``--std``). It is never guessed from the
images themselves: an accuracy measured under another normalisation is not the model's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "Preprocessing",
    "hf_preprocessing",
    "input_channels",
    "model_data_meta",
    "parse_floats",
    "timm_preprocessing",
    "torchvision_hint",
]

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
_HF_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class Preprocessing:
    """Resize (the shorter side to ``resize``, then a centre crop of ``image_size``; without
    ``resize``, straight to ``image_size``), scale to 0..1, normalise by ``mean``/``std``.

    Called on a PIL image it gives the float32 C x H x W tensor; ``channels`` (1 or 3)
    converts grey and colour images alike to what the model's first layer takes.
    """

    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    interpolation: str = "bilinear"
    channels: int | None = None

    def __post_init__(self) -> None:
        size = self.image_size
        size = (int(size), int(size)) if isinstance(size, int | float) else tuple(map(int, size))
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"--image-size takes a positive size, got {self.image_size}")
        if self.resize is not None and self.resize < max(size):
            raise ValueError(
                f"--resize {self.resize} is smaller than the --image-size {max(size)} cropped "
                "from it; give --resize >= --image-size, or no --resize"
            )
        if not self.mean or len(self.mean) != len(self.std):
            raise ValueError(
                f"--mean and --std need one value per channel each; got {len(self.mean)} and "
                f"{len(self.std)}"
            )
        if min(self.std) <= 0:
            raise ValueError(f"--std values must be positive, got {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; one of {', '.join(INTERPOLATIONS)}"
            )

    def for_channels(self, channels: int | None) -> Preprocessing:
        """The same preprocessing giving ``channels`` channels (None: as many as ``mean``
        has); one mean/std value serves every channel, three serve grey by their average."""
        n = channels or len(self.mean)
        if n not in (1, 3):
            raise ValueError(f"images convert to 1 or 3 channels; the model takes {n}")
        mean, std = self.mean, self.std
        if len(mean) != n:
            if len(mean) == 1:
                mean, std = mean * n, std * n
            elif n == 1:
                mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
            else:
                raise ValueError(
                    f"--mean/--std give {len(mean)} channels; the model takes {n}: give {n} "
                    "values each"
                )
        return Preprocessing(self.image_size, mean, std, self.resize, self.interpolation, n)

    def __call__(self, image: Any) -> torch.Tensor:
        from PIL import Image

        n = self.channels or len(self.mean)
        image = image.convert("L" if n == 1 else "RGB")
        method = getattr(Image.Resampling, self.interpolation.upper())
        height, width = self.image_size
        if self.resize is None:
            image = image.resize((width, height), method)
        else:
            w, h = image.size
            scale = self.resize / min(w, h)
            image = image.resize((max(width, round(w * scale)), max(height, round(h * scale))),
                                 method)  # fmt: skip
            w, h = image.size
            left, top = (w - width) // 2, (h - height) // 2
            image = image.crop((left, top, left + width, top + height))
        arr = np.asarray(image, dtype=np.float32) / 255.0
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        return torch.from_numpy(np.ascontiguousarray((arr - mean) / std))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON-ready), without the channel count (the model's, found again)."""
        out = asdict(self)
        out.pop("channels")
        out["image_size"] = list(self.image_size)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Preprocessing:
        keys = ("image_size", "mean", "std", "resize", "interpolation")
        return cls(**{k: values[k] for k in keys if k in values and values[k] is not None})

    def describe(self) -> str:
        size = "x".join(map(str, self.image_size))
        resize = f"resize {self.resize}, crop " if self.resize else "resize to "
        return f"{resize}{size} ({self.interpolation}), mean {self.mean}, std {self.std}"

    def flags(self) -> str:
        """The command-line flags that give this preprocessing."""
        size = self.image_size[0] if self.image_size[0] == self.image_size[1] else None
        parts = [f"--image-size {size}"] if size else []
        if self.resize:
            parts.append(f"--resize {self.resize}")
        parts.append("--mean " + ",".join(f"{v:g}" for v in self.mean))
        parts.append("--std " + ",".join(f"{v:g}" for v in self.std))
        return " ".join(parts)


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    """``0.485,0.456,0.406`` as floats (``--mean``/``--std``)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise ValueError(f"{what} takes comma-separated numbers per channel (0.5,0.5,0.5); "
                         f"got {text!r}")  # fmt: skip
    return values


def input_channels(model: nn.Module) -> int | None:
    """The channels the model's first convolution takes (None: no convolution first)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Conv1d | nn.Conv3d):
            return int(module.in_channels)
        if isinstance(module, nn.Linear):
            return None
    return None


# --- what the model sources know ----------------------------------------------------------


def timm_preprocessing(model: nn.Module) -> Preprocessing | None:
    """timm's data config of ``model`` (its pretrained config's input size, crop, mean, std)."""
    try:
        from timm.data import resolve_data_config
    except ImportError:
        return None
    cfg = resolve_data_config({}, model=model)
    _, h, w = cfg["input_size"]
    crop = float(cfg.get("crop_pct") or 1.0)
    resize = math.floor(max(h, w) / crop) if crop < 1.0 else None
    interpolation = cfg.get("interpolation") or "bilinear"
    if interpolation not in INTERPOLATIONS:
        interpolation = "bicubic" if "bicubic" in interpolation else "bilinear"
    return Preprocessing((h, w), cfg["mean"], cfg["std"], resize, interpolation)


def hf_preprocessing(folder: str | Path) -> Preprocessing | None:
    """The image processor saved in a Hugging Face folder (``preprocessor_config.json``),
    read as JSON: ``size`` (height/width, or shortest_edge with ``crop_size`` or
    ``crop_pct``), ``image_mean``, ``image_std``, ``resample``; None where there is none."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not readable JSON: {err}") from None
    mean = cfg.get("image_mean") if cfg.get("do_normalize", True) else None
    std = cfg.get("image_std") if cfg.get("do_normalize", True) else None
    if mean is None or std is None:
        mean, std = (0.0,), (1.0,)
    if not cfg.get("do_rescale", True) or abs(cfg.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
        raise ValueError(f"{path}: only images rescaled by 1/255 are supported")
    size = cfg.get("size", 224)
    size = {"height": size, "width": size} if isinstance(size, int) else dict(size)
    crop = cfg.get("crop_size")
    crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
    resample = _HF_RESAMPLE.get(cfg.get("resample", 2), "bilinear")
    if "height" in size and "width" in size and not (cfg.get("do_center_crop") and crop):
        return Preprocessing((size["height"], size["width"]), mean, std, None, resample)
    edge = int(size.get("shortest_edge", size.get("height", 224)))
    if crop and cfg.get("do_center_crop", True):
        return Preprocessing((crop["height"], crop["width"]), mean, std, edge, resample)
    pct = cfg.get("crop_pct")
    if pct:  # ConvNeXt: the shorter side to edge / crop_pct, a crop of edge
        return Preprocessing((edge, edge), mean, std, math.floor(edge / pct), resample)
    return Preprocessing((edge, edge), mean, std, None, resample)


def torchvision_hint(name: str) -> str:
    """The flags of torchvision's default weights' preprocessing for ``name`` (a hint:
    weights of one's own may have been trained otherwise); "" where there are none."""
    try:
        import torchvision

        weights = torchvision.models.get_model_weights(name).DEFAULT
        t = weights.transforms()
        pre = Preprocessing(t.crop_size[0], t.mean, t.std, t.resize_size[0],
                            t.interpolation.value)  # fmt: skip
    except Exception:  # no weights enum for this builder: no hint
        return ""
    return f"torchvision's {weights} were trained with {pre.flags()}"


def model_data_meta(source: str, model: nn.Module) -> dict[str, Any]:
    """What a model source knows of the data its model takes: ``preprocessing`` (as plain
    values) and ``labels`` (class names in output order), where known."""
    prefix, _, rest = source.partition(":")
    out: dict[str, Any] = {}
    pre = None
    if prefix == "timm":
        pre = timm_preprocessing(model)
    elif prefix == "hf":
        pre = hf_preprocessing(rest)
        config = getattr(getattr(model, "model", model), "config", None)
        id2label = getattr(config, "id2label", None) or {}
        names = [str(id2label[i]) for i in sorted(id2label, key=int)]
        if names and names != [f"LABEL_{i}" for i in range(len(names))]:
            out["labels"] = names
    if pre is not None:
        out["preprocessing"] = pre.to_dict()
    return out
