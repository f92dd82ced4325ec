"""Activations and gradients of a layer's units where their consumers read them.

The activation criteria (Taylor, sensitivity, APoZ) need, per unit, sums over the data of
a, dL/da and the zeros of a, where a is the input of each consumer at the layer's mask
points. Forward pre-hooks hand each such input to its consumer as a fresh leaf tensor, so
that only those tensors collect gradients.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shapprune.devices import as_float64
from shapprune.game.units import MaskPoint, Units


@dataclass
class ActivationSums:
    """Per-player sums over the data of the statistics the activation criteria use."""

    ag: np.ndarray  # sum of a * dL/da (L: mean loss over the data)
    abs_g: np.ndarray  # sum of |dL/da|
    zeros: np.ndarray  # entries with a == 0
    entries: np.ndarray  # entries seen


def activation_sums(
    model: nn.Module, units: Units, x: torch.Tensor, y: torch.Tensor, batch_size: int, grad: bool
) -> ActivationSums:
    """Run the model on the data in batches, reading the units at the mask points."""
    n = units.n_players
    keys = ("ag", "abs_g", "zeros", "entries")
    totals = {k: torch.zeros(n, dtype=torch.float64, device="cpu") for k in keys}
    for p in model.parameters():
        p.requires_grad_(False)  # only the activations need gradients
    with _Recorder(model, units.mask_points, grad) as rec:
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            with torch.set_grad_enabled(grad):
                seen = rec.forward(xb.clone(), yb, len(x))  # any input dtype (token ids)
            for point, a, g in seen:
                _accumulate(totals, point, a, g, n)
    return ActivationSums(**{k: v.numpy() for k, v in totals.items()})


class _Recorder:
    """Forward pre-hooks that hand each mask point's input to the consumer as a leaf."""

    def __init__(self, model: nn.Module, points: tuple[MaskPoint, ...], grad: bool) -> None:
        self.model, self.points, self.grad = model, points, grad
        self.modules = dict(model.named_modules())
        self.inputs: list[list[torch.Tensor]] = [[] for _ in points]
        self.handles: list = []

    def __enter__(self) -> _Recorder:
        for i, point in enumerate(self.points):
            hook = functools.partial(self._hook, i)
            self.handles.append(self.modules[point.module].register_forward_pre_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()

    def _hook(self, i: int, _module: nn.Module, args: tuple):
        leaf = args[0].detach().clone().requires_grad_(self.grad)
        self.inputs[i].append(leaf)
        return (leaf,) + tuple(args[1:])

    def forward(self, x: torch.Tensor, y: torch.Tensor, n_total: int) -> list:
        """(point, activation, dL/d activation or None) for each consumer call on ``x``."""
        self.inputs = [[] for _ in self.points]
        logits = self.model(x)
        for point, calls in zip(self.points, self.inputs, strict=True):
            if not calls:
                raise ValueError(
                    f"the input of {point.module!r} was never seen: it is not called as a "
                    "module (e.g. nn.MultiheadAttention's out_proj), so activation criteria "
                    "cannot read the units there"
                )
        leaves = [(p, a) for p, calls in zip(self.points, self.inputs, strict=True) for a in calls]
        if not self.grad:
            return [(p, a, None) for p, a in leaves]
        loss = F.cross_entropy(logits.float(), y, reduction="sum") / n_total
        grads = torch.autograd.grad(loss, [a for _, a in leaves], allow_unused=True)
        return [
            (p, a.detach(), torch.zeros_like(a) if g is None else g)
            for (p, a), g in zip(leaves, grads, strict=True)
        ]


def _accumulate(totals: dict, point: MaskPoint, a: torch.Tensor, g, n: int) -> None:
    """Add one consumer input's per-player sums (over examples, positions, channels)."""
    a = a.detach()
    wide = as_float64(a)  # on a's device (the CPU for MPS, which has no float64)
    stats = {"zeros": (wide == 0).double(), "entries": torch.ones_like(wide)}
    if g is not None:
        g = as_float64(g)
        stats["ag"], stats["abs_g"] = wide * g, g.abs()
    for key, t in stats.items():
        totals[key] += point.per_player(t, n).cpu()
