"""The criterion contract: ``score(model, layer, data, seed)`` -> one score per unit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from shapprune.devices import device_of, to_device
from shapprune.game.pruning_game import as_data
from shapprune.game.units import Units, find_units

__all__ = ["Criterion", "Data"]

Data = tuple[torch.Tensor, torch.Tensor]


class Criterion:
    """Scores the units of one layer; subclasses implement ``_score``."""

    name: str = "criterion"

    def score(self, model: nn.Module, layer: str, data: Data, *, seed: int = 0) -> np.ndarray:
        """One finite score per unit of ``layer`` (higher = more important), as float64.

        Deterministic given ``seed``; ``model`` is left unchanged.
        """
        x, y = as_data(data)
        x, y = to_device(x, model), y.to(device_of(model))  # moved once, to the model
        with _untouched(model), torch.inference_mode(False), torch.enable_grad():
            model.eval()
            units = find_units(model, layer, x[:2].clone())  # tracing needs autograd
            scores = self._score(model, units, x, y, seed)
        return _checked(scores, units.n_players, self.name)

    def _score(
        self, model: nn.Module, units: Units, x: torch.Tensor, y: torch.Tensor, seed: int
    ) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _checked(scores, n: int, name: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (n,):
        raise RuntimeError(f"criterion {name!r} gave shape {scores.shape}, expected ({n},)")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"criterion {name!r} gave non-finite scores (is the model finite?)")
    return scores


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
