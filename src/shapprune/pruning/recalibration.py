"""BatchNorm's running statistics re-estimated after a removal.

A removal changes what every later BatchNorm layer sees: its inputs lose channels upstream,
and a residual sum loses terms, so the means and variances it stored while training no
longer centre and scale them. On a deep residual network that alone can take a pruned
model to chance while the same model with its statistics re-estimated on a few hundred
examples keeps most of its accuracy (BENCHMARKS.md, "Held-out architectures"). No labels
and no gradient are needed: the reference examples the criterion already used are passed
through once with BatchNorm layers (only those) in training mode.
"""

from __future__ import annotations

import torch
from torch import nn

from shapprune.devices import device_of

__all__ = ["batchnorms", "recalibrate_batchnorm"]

CHUNK = 256
"""Examples per forward pass: the statistics are a cumulative average over the chunks."""


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers (any dimension, SyncBatchNorm included) that keep running
    statistics: the others normalise by each batch's own and have nothing to re-estimate."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: torch.Tensor, chunk: int = CHUNK) -> int:
    """Replace the running statistics of ``model``'s BatchNorm layers by those of
    ``inputs`` (a cumulative average over chunks of at most ``chunk`` examples; a last
    chunk of one example is folded into the one before, since a BatchNorm in training mode
    cannot normalise a single value per channel). Every other layer stays in eval mode
    (dropout off); every module's mode and the layers' momentum are restored. Returns the
    number of layers re-estimated (0: nothing to do, the model untouched)."""
    norms = batchnorms(model)
    if not norms:
        return 0
    if len(inputs) < 2:
        raise ValueError("re-estimating BatchNorm statistics needs at least 2 examples")
    modes = [(m, m.training) for m in model.modules()]
    momenta = [m.momentum for m in norms]
    bounds = list(range(0, len(inputs), chunk)) + [len(inputs)]
    if bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    device = device_of(model)
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: every chunk weighs the same
            m.train()
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            model(inputs[lo:hi].to(device))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        for m, training in modes:
            m.training = training
    return len(norms)
