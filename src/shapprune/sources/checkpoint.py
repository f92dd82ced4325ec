"""Model files: safetensors weights plus a JSON description that rebuilds the model.

The JSON names the zoo (or ``torchvision:``) model and its build config; for a pruned
model it also holds the pruning history, which is replayed on the freshly built model to
recover the pruned architecture before the weights are loaded. Nothing is unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shapprune.pruning.removal import history, replay
from shapprune.version import __version__
from shapprune.zoo.models import build_model

CHECKPOINT_FORMAT = "shapprune.checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """(``.safetensors``, ``.json``) paths for a prefix or either file."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.parent / (path.name + ".safetensors"), path.parent / (path.name + ".json")


def save_checkpoint(
    path_prefix: str | Path,
    model: nn.Module,
    *,
    name: str,
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    dataset: str | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write ``<prefix>.safetensors`` (weights) and ``<prefix>.json`` (how to rebuild them).

    ``config`` holds the :func:`build_model` keywords; ``extra`` adds top-level JSON fields.
    """
    from safetensors.torch import save_file

    st_path, json_path = checkpoint_paths(path_prefix)
    meta: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model": name,
        "config": dict(config),
        "dataset": dataset,
        "metrics": dict(metrics),
        "shapprune_version": __version__,
        "torch_version": torch.__version__,
    }
    clash = set(extra or {}) & set(meta)
    if clash:
        raise ValueError(f"extra checkpoint fields {sorted(clash)} clash with reserved fields")
    meta.update(extra or {})
    text = json.dumps(meta, indent=2, sort_keys=False)  # fails early if not JSON-serialisable
    if not overwrite:
        for p in (st_path, json_path):
            if p.exists():
                raise FileExistsError(f"{p} already exists; pass overwrite=True to replace it")
    st_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(st_path), metadata={"format": "pt", "model": name})
    json_path.write_text(text + "\n", encoding="utf-8")
    return st_path, json_path


def _add_folded_biases(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give a bias to each layer that has none but whose saved weights hold one: removal
    with compensation folds removed units' means into biases the layer was built without."""
    modules = dict(model.named_modules())
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        module = modules.get(owner)
        if leaf == "bias" and module is not None and getattr(module, "bias", 0) is None:
            module.bias = nn.Parameter(torch.zeros_like(value))


def load_checkpoint(
    path: str | Path, build: Callable[[dict], nn.Module] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_checkpoint` from its prefix, .json or .safetensors.

    ``build(meta)`` makes the unpruned model; by default the zoo's ``build_model`` from the
    recorded name and config. A checkpoint that records another source (``meta["source"]``)
    needs the sources' builder (nothing here knows the sources): ``shapprune.load_checkpoint``
    (``sources.models.load_checkpoint``) and ``shapprune.load_model`` pass it.
    """
    from safetensors.torch import load_file

    st_path, json_path = checkpoint_paths(path)
    if not json_path.is_file():
        raise FileNotFoundError(f"checkpoint metadata {json_path} not found")
    if not st_path.is_file():
        raise FileNotFoundError(f"checkpoint weights {st_path} not found")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{json_path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or "model" not in meta or "config" not in meta:
        raise ValueError(f"{json_path} is not a shapprune checkpoint (needs 'model' and 'config')")
    try:
        state = load_file(str(st_path), device="cpu")
    except Exception as err:  # safetensors raises its own error type for malformed files
        raise ValueError(f"{st_path} is not a valid safetensors file: {err}") from None
    if build is None and meta.get("source"):
        raise ValueError(
            f"{json_path} records the model source {meta['source'].get('source')!r}: load it "
            "with shapprune.load_checkpoint or shapprune.load_model, which rebuild sources"
        )
    model = build(meta) if build is not None else build_model(meta["model"], **meta["config"])
    pruning = meta.get("pruning")
    if pruning:  # rebuild the pruned architecture by replaying its history
        example = torch.zeros(2, *pruning["input_shape"], device="cpu")
        replay(model, pruning["history"], example)
    _add_folded_biases(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{st_path} does not fit model {meta['model']!r} built from {json_path}: {err}"
        ) from None
    return model.eval(), meta


def save_pruned(
    path_prefix,
    model: nn.Module,
    *,
    base: Mapping,
    input_shape: Sequence[int],
    metrics: Mapping | None = None,
    dataset: str | None = None,
    overwrite: bool = False,
):
    """Save a pruned model: safetensors weights plus JSON with the base model's name and
    config (or the source it came from: ``base["source"]``, as ``shapprune.load_model``'s
    metadata records it) and the pruning history that rebuilds its architecture (no pickle).

    A base that names neither a zoo model nor a source could not be rebuilt: ValueError.
    """
    extra: dict[str, Any] = {}
    if base.get("source"):
        extra["source"] = dict(base["source"])
    elif not _zoo_buildable(str(base.get("model", ""))):
        raise ValueError(
            f"cannot save a pruned model that could not be reloaded: base {dict(base)!r} names "
            "no zoo model and no source; load the model with shapprune.load_model(SOURCE) and "
            "pass its metadata as base"
        )
    for key in ("preprocessing", "labels"):  # how its inputs are made: read by load_data
        if base.get(key):
            extra[key] = base[key]
    pruning = {"history": history(model), "input_shape": list(input_shape)}
    return save_checkpoint(
        path_prefix,
        model,
        name=str(base.get("model")),
        config=base.get("config", {}),
        metrics=dict(metrics or {}),
        dataset=dataset,
        extra={"pruning": pruning, **extra},
        overwrite=overwrite,
    )


def _zoo_buildable(name: str) -> bool:
    from shapprune.zoo.models import MODELS

    return name in MODELS or name.startswith("torchvision:")
