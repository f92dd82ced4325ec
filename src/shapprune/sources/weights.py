"""Weights a user hands in: ``.safetensors``, or ``.pt/.pth/.bin/.ckpt`` read with
``torch.load(weights_only=True)`` (a state_dict, or a training checkpoint holding one under
``state_dict``, ``model`` or ``model_state_dict``). Nothing is unpickled unless asked."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = ["PICKLE_SUFFIXES", "load_weights", "read_state_dict", "torch_file"]

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
NESTED_KEYS = ("state_dict", "model_state_dict", "model")
TRUST_HINT = "pass --trust-pickle (trust_pickle=True) to unpickle it, only if you trust the file"


def torch_file(path: str | Path, trust_pickle: bool = False):
    """``torch.load`` of ``path`` on the CPU: tensors and plain containers only, unless
    ``trust_pickle`` (then any pickled object, a whole module included)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        if trust_pickle:
            raise ValueError(f"{path} could not be unpickled: {err}") from None
        raise ValueError(
            f"{path} holds pickled objects beyond tensors (a whole module saved with "
            f"torch.save(model)?); {TRUST_HINT}"
        ) from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"{path} is not a torch file: {' '.join(str(err).split())}") from None


def _tensors_only(obj) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def read_state_dict(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state_dict a weights file holds (see the module's doc)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error type
            raise ValueError(f"{path} is not a valid safetensors file: {err}") from None
    if path.suffix not in PICKLE_SUFFIXES:
        raise ValueError(
            f"weights file {path} has an unknown suffix; give .safetensors or one of "
            f"{', '.join(PICKLE_SUFFIXES)} (a state_dict saved with torch.save)"
        )
    obj = torch_file(path, trust_pickle)
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if _tensors_only(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return dict(inner.state_dict())
            if _tensors_only(inner):
                return dict(inner)
    raise ValueError(
        f"{path} holds no state_dict: expected tensors by name, or a dict with one under "
        f"{', '.join(NESTED_KEYS)}"
    )


def _strip_prefix(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """``state`` without a prefix common to all its keys (``module.``, ``model.``, ...) that
    the model's own keys do not have."""
    while state and not set(state) & wanted:
        first = next(iter(state)).split(".", 1)[0] + "."
        if not all(k.startswith(first) and len(k) > len(first) for k in state):
            break
        state = {k[len(first) :]: v for k, v in state.items()}
    return state


def _first(names, n: int = 3) -> str:
    names = sorted(names)
    more = ", ..." if len(names) > n else ""
    return ", ".join(names[:n]) + more


def load_weights(model: nn.Module, path: str | Path, trust_pickle: bool = False) -> nn.Module:
    """Load the weights file ``path`` into ``model`` (in place); weights that do not fit
    raise a one-line ValueError with the counts and the first offending keys."""
    own = model.state_dict()
    state = _strip_prefix(read_state_dict(path, trust_pickle), set(own))
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    shaped = [
        f"{k} {list(state[k].shape)} vs {list(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or shaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
        if shaped:
            parts.append(f"{len(shaped)} mis-shaped ({_first(shaped, 2)}, file vs model)")
        raise ValueError(
            f"weights {path} do not fit the model: {'; '.join(parts)}; were they saved from "
            "another architecture or with other --model-arg values?"
        )
    model.load_state_dict(state, strict=True)
    return model
