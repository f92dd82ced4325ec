"""The model cache: zoo models trained once by their recipe, then loaded from disk."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from shapprune.sources.checkpoint import checkpoint_paths, load_checkpoint, save_checkpoint
from shapprune.zoo.training import DATA_SEED, recipe_for, train_by_recipe

__all__ = ["cache_dir", "pretrained"]


def cache_dir() -> Path:
    """``$SHAPPRUNE_CACHE``, else ``$XDG_CACHE_HOME/shapprune``, else ``~/.cache/shapprune``."""
    if os.environ.get("SHAPPRUNE_CACHE"):
        return Path(os.environ["SHAPPRUNE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "shapprune"
    return Path.home() / ".cache" / "shapprune"


def _cache_stem(name: str, dataset: str, seed: int, recipe: Mapping[str, Any]) -> str:
    key = json.dumps({"recipe": recipe, "data_seed": DATA_SEED, "dataset": dataset}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset).strip("_")[-40:]
    return f"{name}-{slug}-seed{seed}-{digest}"


def pretrained(
    name: str,
    dataset: str,
    *,
    seed: int = 0,
    progress: bool = True,
    root: str | Path | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Zoo model ``name`` trained on ``dataset`` by its default recipe, cached on disk.

    The first call trains and saves to :func:`cache_dir`; later calls load the cached file.
    """
    recipe = recipe_for(name, dataset)
    folder = cache_dir()
    final = folder / _cache_stem(name, dataset, seed, recipe)
    st_final, json_final = checkpoint_paths(final)
    if st_final.is_file() and json_final.is_file():
        try:
            return load_checkpoint(final)
        except ValueError as err:
            warnings.warn(f"retraining: cached checkpoint is unusable ({err})", stacklevel=2)

    model, config, metrics, data_name = train_by_recipe(
        name, dataset, recipe, seed=seed, progress=progress, root=root
    )

    tmp = folder / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_paths = checkpoint_paths(tmp)
    try:
        save_checkpoint(
            tmp,
            model,
            name=name,
            config=config,
            metrics=metrics,
            dataset=data_name,
            extra={"recipe": recipe, "data_seed": DATA_SEED},
        )
        os.replace(tmp_paths[0], st_final)
        os.replace(tmp_paths[1], json_final)  # the JSON lands last: it marks the pair complete
    finally:
        for p in tmp_paths:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return model, json.loads(json_final.read_text(encoding="utf-8"))
