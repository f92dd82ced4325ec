"""The criterion contract: ``score(model, layers, data, seed)`` -> ``{layer: one score per unit}``.

A criterion declares its options once (a dataclass, see :mod:`shapprune.options`), checks
them when it is built, and answers for several layers at once, so that a network-wide
criterion fits the same contract as a per-layer one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from shapprune.devices import device_of, to_device
from shapprune.game.pruning_game import as_data
from shapprune.game.units import Units, layer_units
from shapprune.options import NoOptions, build_options, declared

__all__ = ["Criterion", "Data"]

Data = tuple[torch.Tensor, torch.Tensor]


class Criterion:
    """Scores the units of layers; subclasses declare ``Options`` and implement one hook.

    Per-layer criteria implement ``_score_layer(model, units, x, y, seed)``; a criterion that
    looks at several layers together overrides ``_score_layers(model, layers, x, y, seed)``.
    Options are keyword arguments (or positional, in declaration order), checked against
    the declaration here; the built options are ``self.options``.
    """

    name: str = "criterion"
    Options: ClassVar[type] = NoOptions
    # how a global plan makes its layers' scores comparable, unless told otherwise: per-layer
    # scores need a normalisation; the values of one network-wide game need none
    normalisation: ClassVar[str] = "l1"

    def __init__(self, *args: Any, **options: Any) -> None:
        decl = self.declaration()
        names = list(declared(decl))
        if len(args) > len(names):
            raise TypeError(f"{self.name} takes at most {len(names)} positional options")
        for key, value in zip(names, args, strict=False):
            if key in options:
                raise TypeError(f"{self.name}: option {key!r} given twice")
            options[key] = value
        self.options = build_options(decl, options, f"criterion {self.name!r}")
        self.notes: list[str] = []  # what the user should know of how the scores were made

    @classmethod
    def declaration_for(cls, **fixed: Any) -> type:
        """The dataclass declaring the options of this class registered with ``fixed``."""
        return cls.Options

    def declaration(self) -> type:
        """The dataclass declaring this criterion's options."""
        return type(self).Options

    def __getattr__(self, key: str) -> Any:
        # options read as attributes (self.batch_size); only called when normal lookup fails
        options = self.__dict__.get("options")
        if options is not None and hasattr(options, key):
            return getattr(options, key)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    def score(
        self, model: nn.Module, layers: str | Sequence[str], data: Data, seed: int = 0
    ) -> dict[str, np.ndarray]:
        """One finite float64 score per unit of each layer (higher = more important).

        Deterministic given ``seed``; ``model`` is left unchanged.
        """
        layers = [layers] if isinstance(layers, str) else list(layers)
        x, y = as_data(data)
        x, y = to_device(x, model), y.to(device_of(model))  # moved once, to the model
        with _untouched(model), torch.inference_mode(False), torch.enable_grad():
            model.eval()
            found = self._score_layers(model, layers, x, y, seed)
        missing = [layer for layer in layers if layer not in found]
        if missing:
            raise RuntimeError(f"criterion {self.name!r} gave no scores for {missing}")
        return {layer: _checked(found[layer], None, self.name) for layer in layers}

    def _score_layers(
        self, model: nn.Module, layers: list[str], x: torch.Tensor, y: torch.Tensor, seed: int
    ) -> dict[str, np.ndarray]:
        """The multi-layer hook; by default, each layer's units on their own."""
        # all units found first, with one graph: a criterion may leave the parameters
        # without gradients (restored on exit), and torch-pruning's graph skips those
        found = layer_units(model, layers, x[:2].clone())  # tracing needs autograd
        out = {}
        for layer in layers:
            units = found[layer]
            scores = self._score_layer(model, units, x, y, seed)
            out[layer] = _checked(scores, units.n_players, self.name)
        return out

    def _score_layer(
        self, model: nn.Module, units: Units, x: torch.Tensor, y: torch.Tensor, seed: int
    ) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        options = self.__dict__.get("options")
        shown = ", ".join(f"{k}={v!r}" for k, v in vars(options).items()) if options else ""
        return f"{type(self).__name__}({shown})"


def _checked(scores, n: int | None, name: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or (n is not None and scores.shape != (n,)):
        raise RuntimeError(f"criterion {name!r} gave shape {scores.shape}, expected ({n},)")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"criterion {name!r} gave non-finite scores (is the model finite?)")
    return scores


def estimate_scores(est) -> np.ndarray:
    """Scores from an ``Estimate``: its values, or where it settled a set (the k lowest,
    e.g. ``refine``, ``bandit``) the players' positions in its ranking, so that a plan
    cutting k units cuts exactly that set (higher = more important, as for every score)."""
    if est.selected is None:
        return np.asarray(est.values, dtype=np.float64)
    position = np.empty(len(est.values), dtype=np.float64)
    position[est.ranking] = np.arange(len(est.values))
    return position


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Restore every module's train/eval flag and every parameter's requires_grad."""
    training = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for m, flag in training:
            m.training = flag
        for p, flag in grads:
            p.requires_grad_(flag)
