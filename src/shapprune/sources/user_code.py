"""Models from the user's own code: a class or factory in ``FILE.py:NAME`` or
``package.module:NAME``, and a whole pickled module (only when trusted)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from shapprune.sources.weights import torch_file

__all__ = ["from_file", "from_module", "pickled"]


def _call(what: str, builder: Any, model_args: dict) -> nn.Module:
    if not callable(builder):
        raise ValueError(f"{what} is not a class or a function that builds a model")
    try:
        model = builder(**model_args)
    except Exception as err:
        msg = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"{what}({_show_args(model_args)}) failed: {msg}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{what} returned {type(model).__name__}, not a torch nn.Module")
    return model


def _show_args(model_args: Mapping) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in model_args.items())


def from_file(text: str, model_args: dict) -> nn.Module:
    file, _, name = text.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found (--model FILE.py:NAME)")
    if not name.isidentifier():
        raise ValueError(f"--model {text}: after FILE.py: give the name of a class or function")
    module_name = f"shapprune_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        sys.modules.pop(module_name, None)
        msg = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"importing {path} failed: {type(err).__name__}: {msg}") from None
    if not hasattr(module, name):
        found = [n for n, v in vars(module).items() if inspect.isclass(v) or inspect.isfunction(v)]
        raise ValueError(
            f"{path} has no {name!r}; it defines: {', '.join(n for n in found if not n.startswith('_')) or 'nothing callable'}"  # noqa: E501
        )
    return _call(f"{path}:{name}", getattr(module, name), model_args)


def from_module(text: str, model_args: dict) -> nn.Module:
    module_name, _, name = text.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import {module_name!r} for --model {text}: {err}") from None
    if not hasattr(module, name):
        raise ValueError(f"module {module_name!r} has no {name!r} (--model {text})")
    return _call(text, getattr(module, name), model_args)


def pickled(path: Path, trust_pickle: bool) -> nn.Module:
    obj = torch_file(path, trust_pickle) if trust_pickle else _refuse_pickle(path)
    if not isinstance(obj, nn.Module):
        raise ValueError(
            f"{path} holds a {type(obj).__name__}, not a whole module: give the "
            "architecture as --model and this file as --weights"
        )
    return obj


def _refuse_pickle(path: Path):
    obj = torch_file(path)  # weights_only: a whole module is refused here, naming the flag
    raise ValueError(
        f"{path} holds weights ({type(obj).__name__}), not a model: name the architecture "
        "with --model and pass this file as --weights"
    )
