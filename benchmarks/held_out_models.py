"""The held-out architectures of ``held_out.py``: built by torchvision and timm (1-channel
stems, 10 classes), trained here on MNIST 5k once and cached under the shapprune cache dir.

Kept apart from the benchmark's pruning so that the models can be trained (and cached)
before a run: ``python benchmarks/held_out_models.py [NAME ...]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from shapprune.evaluation.measure import evaluate
from shapprune.training import train_model
from shapprune.zoo.cache import cache_dir
from shapprune.zoo.data import DatasetSplits

CLASSES = 10


def _one_channel_stem(model: nn.Module) -> nn.Module:
    """The first convolution replaced by one that reads 1 channel (the same shape else)."""
    name, first = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Conv2d(1, first.out_channels, first.kernel_size, first.stride,
                                    first.padding, bias=first.bias is not None))  # fmt: skip
    return model


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        model = torchvision.models.get_model(name, weights=None, num_classes=CLASSES)
        return _one_channel_stem(model)

    return build


def _deit() -> nn.Module:
    import timm

    return timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=28,
                             patch_size=7, depth=4, in_chans=1, num_classes=CLASSES)  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """How a held-out model is trained (``train_model``'s arguments), seed 0."""

    epochs: int
    lr: float
    batch_size: int = 128
    optimizer: str = "adamw"
    weight_decay: float = 5e-4
    train_subset: int | None = None  # the first N training images only


QUICK = "resnet10"  # the quick run's: a torchvision ResNet with one block a stage
QUICK_RECIPE = Recipe(epochs=2, lr=3e-3, batch_size=64)


def subset(data: DatasetSplits, n: int | None) -> DatasetSplits:
    """``data`` with the first ``n`` training images only (None: all)."""
    if n is None:
        return data
    train = data.train
    return dataclasses.replace(data, train=type(train)(train.x[:n], train.y[:n]))


def _resnet10() -> nn.Module:
    from torchvision.models.resnet import BasicBlock, ResNet

    return _one_channel_stem(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=CLASSES))


BUILDERS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    # name -> (what it is, in words; builder with random weights)
    "resnet34": ("torchvision ResNet-34", _torchvision("resnet34")),
    "mobilenet_v2": ("torchvision MobileNet-V2", _torchvision("mobilenet_v2")),
    "efficientnet_b0": ("torchvision EfficientNet-B0", _torchvision("efficientnet_b0")),
    "deit_tiny": ("timm DeiT-Tiny (patch 7, depth 4)", _deit),
    QUICK: ("torchvision ResNet-10 (BasicBlock, 1-1-1-1; the quick run's)", _resnet10),
}
RECIPES: dict[str, Recipe] = {
    "resnet34": Recipe(epochs=3, lr=2e-3),
    "mobilenet_v2": Recipe(epochs=5, lr=3e-3),
    "efficientnet_b0": Recipe(epochs=5, lr=3e-3),
    "deit_tiny": Recipe(epochs=12, lr=1e-3, weight_decay=0.05),
}


def trained(name: str, data: DatasetSplits, recipe: Recipe) -> tuple[nn.Module, dict]:
    """Model ``name`` trained by ``recipe`` on ``data`` (seed 0), from the cache
    (``cache_dir()/held_out``) when it holds one trained the same way; (model, metrics)."""
    key = json.dumps({"name": name, "data": data.name, "pixels": data.image_size,
                      "recipe": asdict(recipe)}, sort_keys=True)  # fmt: skip
    stem = f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    folder = cache_dir() / "held_out"
    weights, meta = folder / f"{stem}.safetensors", folder / f"{stem}.json"
    torch.manual_seed(0)
    model = BUILDERS[name][1]()
    if weights.is_file() and meta.is_file():
        model.load_state_dict(load_file(weights))
        return model.eval(), json.loads(meta.read_text())
    start = time.perf_counter()
    options = {k: v for k, v in asdict(recipe).items() if k != "train_subset"}
    train_model(model, subset(data, recipe.train_subset), seed=0, progress=False, **options)
    model.eval()
    metrics = {"test_accuracy": evaluate(model, data.test)["accuracy"],
               "train_seconds": time.perf_counter() - start, "recipe": asdict(recipe),
               "cached": False}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    meta.write_text(json.dumps({**metrics, "cached": True}, indent=2))  # read back: cached
    return model, metrics


if __name__ == "__main__":
    from shapprune.zoo.data import load_dataset

    mnist = load_dataset("mnist5k")
    for model_name in sys.argv[1:] or list(RECIPES):
        _, found = trained(model_name, mnist, RECIPES[model_name])
        print(model_name, json.dumps(found), flush=True)
