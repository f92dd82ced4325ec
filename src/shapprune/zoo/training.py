"""Training zoo models: recipes per (model, dataset); the loop is :mod:`shapprune.training`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shapprune.devices import resolve_device
from shapprune.training import train_model
from shapprune.zoo.data import load_dataset
from shapprune.zoo.models import build_model

__all__ = [
    "DATA_SEED",
    "RECIPES",
    "recipe_for",
    "train_by_recipe",
    "train_model",
]

DATA_SEED = 0
"""Seed of the train/val/test split used by :func:`pretrained` (fixed across model seeds)."""

# Default training recipes per (model, dataset); dataset "*" is the fallback for a model.
# Keys: epochs, lr, batch_size, optimizer, schedule, weight_decay, augment, model (build kwargs).
RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    # measured on 2 CPU cores (test accuracy for seeds 0/1/2, training time):
    # lenet5 97.3/97.5/97.8% ~10 s; vgg 97.5% ~17 s; resnet20 97.7% ~40 s;
    # vit 95.8/95.2/96.2% ~60-80 s
    ("tinycnn", "mnist5k"): {"epochs": 3, "lr": 3e-3, "batch_size": 64, "optimizer": "adamw"},
    ("lenet5", "mnist5k"): {"epochs": 10, "lr": 2e-3, "batch_size": 64},
    ("vgg", "mnist5k"): {"epochs": 6, "lr": 3e-3, "batch_size": 64},
    ("resnet20", "mnist5k"): {"epochs": 5, "lr": 3e-3, "batch_size": 64},
    ("vit", "mnist5k"): {
        "epochs": 60,
        "lr": 1e-3,
        "batch_size": 64,
        "weight_decay": 0.05,
        "augment": ["crop:2"],
        "model": {"patch_size": 7},  # 16 tokens: 3x faster than patch 4 and more accurate here
    },
    # untested fallbacks for the larger datasets
    ("tinycnn", "*"): {"epochs": 5, "lr": 3e-3, "batch_size": 128, "optimizer": "adamw"},
    ("lenet5", "*"): {"epochs": 10, "lr": 2e-3},
    ("vgg", "*"): {"epochs": 15, "lr": 3e-3},
    ("resnet20", "*"): {"epochs": 30, "lr": 0.1, "optimizer": "sgd"},
    ("vit", "*"): {"epochs": 30, "lr": 1e-3, "weight_decay": 0.05},
}
_CIFAR_AUGMENT = ("crop", "flip")
_TRAIN_KEYS = ("epochs", "lr", "batch_size", "optimizer", "schedule", "weight_decay", "augment")


# --- checkpoints -----------------------------------------------------------------------------


# --- pretrained zoo models -------------------------------------------------------------------


def recipe_for(name: str, dataset: str) -> dict[str, Any]:
    """The default training recipe for ``name`` on ``dataset`` (a copy, with defaults filled)."""
    recipe = RECIPES.get((name, dataset)) or RECIPES.get((name, "*"))
    if recipe is None:
        known = sorted({m for m, _ in RECIPES})
        raise ValueError(f"no training recipe for model {name!r}; models with recipes: {known}")
    out: dict[str, Any] = {
        "batch_size": 128,
        "optimizer": "adamw",
        "schedule": "onecycle",
        "weight_decay": 5e-4,
        "augment": list(_CIFAR_AUGMENT) if dataset == "cifar10" else [],
        "model": {},
        "image_size": 32,
    }
    out.update(json.loads(json.dumps(recipe)))
    return out


def train_by_recipe(
    name: str,
    dataset: str,
    recipe: Mapping[str, Any],
    *,
    seed: int = 0,
    progress: bool = True,
    root: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any], dict[str, Any], str]:
    """Build zoo model ``name`` for ``dataset`` and train it by ``recipe`` on ``device``
    (see :func:`shapprune.devices.resolve_device`; "auto" picks an accelerator).

    Returns the model (on ``device``), its build config, its metrics and the dataset's name.
    """
    data = load_dataset(dataset, root=root, seed=DATA_SEED, image_size=recipe["image_size"])
    config = {
        "in_channels": data.in_channels,
        "image_size": data.image_size,
        "num_classes": data.num_classes,
        "seed": seed,
        **recipe["model"],
    }
    model = build_model(name, **config).to(resolve_device(device))
    train_kwargs = {k: recipe[k] for k in _TRAIN_KEYS}
    metrics = train_model(model, data, seed=seed, progress=progress, **train_kwargs)
    return model, config, metrics, data.name
