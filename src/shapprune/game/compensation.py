"""Removal with compensation: a removed unit's mean contribution stays, as a bias.

Zeroing a unit is not a neutral removal: with every unit of a layer zeroed, the BatchNorm
offsets that follow dominate the output, and the empty coalition is far worse than chance.
Compensation removes a unit the way mean-replacement does: each consumer's bias takes, for
every removed input channel ``c``, the channel's mean over the reference data times the
consumer's weights that read it, ``bias[o] += mean[c] * sum_k W[o, c, k]``.

One fact used in two places: the pruning games add ``(1 - mask) @ D`` to each masked
consumer's output (``D = compensation_matrix(...)``), and physical removal folds the same
``D`` rows into the consumer's bias (``fold_means``), so masking still computes exactly what
the pruned network computes. For a linear consumer this is the network with the removed
inputs replaced by their means; for a zero-padded convolution it differs from that at the
borders (a constant input is not constant there after padding), and the bias is what
removal can build, so the bias is what both compute.

``nn.MultiheadAttention`` applies its ``out_proj`` weights inside one fused call and never
calls the module, so the mean of the heads' outputs (what a removed head leaves) is
measured on the same attention written out head by head (``explicit_mha``, which calls
``out_proj`` as a module), run beside the module's own call on the reference data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from shapprune.devices import device_of
from shapprune.game.tracing import explicit_mha
from shapprune.game.units import MaskPoint

_CONSUMERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _consumer(modules: dict[str, nn.Module], name: str) -> nn.Module:
    module = modules[name]
    if not isinstance(module, _CONSUMERS) or getattr(module, "groups", 1) != 1:
        raise ValueError(
            f"cannot compensate removals entering {name!r} ({type(module).__name__}): only "
            "plain convolutions and linear layers take a removed unit's mean as a bias; "
            "prune without compensation"
        )
    return module


def consumer_means(
    model: nn.Module,
    points: Iterable[MaskPoint],
    x: torch.Tensor,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Per consumer of ``points``, the mean of its input over ``x`` for each input channel
    (over every dimension but the point's channel dimension), in float32 on the model's
    device: what a removed channel is replaced by, in effect."""
    modules = dict(model.named_modules())
    dims = {}
    for p in points:
        _consumer(modules, p.module)
        dims.setdefault(p.module, p.channel_dim)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str, dim: int):
        def record(_module, args) -> None:
            inp = args[0].detach()
            cd = dim % inp.dim()
            per_channel = inp.movedim(cd, -1).reshape(-1, inp.shape[cd])
            sums[name] = sums.get(name, 0) + per_channel.double().sum(0)
            counts[name] = counts.get(name, 0) + per_channel.shape[0]

        return record

    handles = [modules[n].register_forward_pre_hook(hook(n, d)) for n, d in dims.items()]
    handles += [
        mha.register_forward_pre_hook(_heads_into_out_proj, with_kwargs=True)
        for mha in _fused_owners(model, dims)
    ]
    device = device_of(model)
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in dims if n not in sums]
    if missing:
        raise ValueError(f"the model never calls {', '.join(missing)} on the reference data")
    return {n: (sums[n] / counts[n]).float() for n in dims}


def _fused_owners(model: nn.Module, consumers: Iterable[str]) -> list[nn.MultiheadAttention]:
    """The ``nn.MultiheadAttention`` modules whose ``out_proj`` is one of ``consumers``: their
    own call applies it without calling it."""
    names = set(consumers)
    return [
        m
        for n, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention) and (f"{n}.out_proj" if n else "out_proj") in names
    ]


def _heads_into_out_proj(mha: nn.MultiheadAttention, args: tuple, kwargs: dict) -> None:
    """Before ``mha``'s own call: the same attention written out, whose call of ``out_proj``
    (a module) its hooks see; the result is dropped, ``mha``'s call is left as it is."""
    explicit_mha(mha, *args, **kwargs)


def compensation_matrix(consumer: nn.Module, mean: torch.Tensor) -> torch.Tensor:
    """``D`` (in channels, out channels): row ``c`` is what removing input channel ``c``
    adds to the consumer's output (its mean times the weights that read it)."""
    weight = consumer.weight.detach()
    summed = weight.reshape(weight.shape[0], weight.shape[1], -1).sum(-1)  # (out, in)
    if summed.shape[1] != mean.shape[0]:
        raise ValueError(
            f"{type(consumer).__name__} reads {summed.shape[1]} channels; {mean.shape[0]} "
            "means given"
        )
    return (summed * mean.to(summed)).t().contiguous()


def matrices(
    model: nn.Module,
    points: Sequence[MaskPoint],
    x: torch.Tensor | Mapping[str, torch.Tensor],
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Per consumer of ``points``, its compensation matrix from the means over ``x``, or
    from ``x`` where it holds the means already (``consumer_means`` of this model: prune
    reads them once for its plans, its removals and its refinement)."""
    modules = dict(model.named_modules())
    if isinstance(x, Mapping):
        means = {p.module: x[p.module] for p in points}
    else:
        means = consumer_means(model, points, x, batch_size)
    return {name: compensation_matrix(modules[name], mean) for name, mean in means.items()}


def fold_means(
    model: nn.Module,
    removed: Sequence[tuple[MaskPoint, Sequence[int]]],
    x: torch.Tensor | Mapping[str, torch.Tensor],
    batch_size: int = 256,
) -> None:
    """Fold each removed unit's mean contribution into its consumers' biases, in place
    (``removed``: per mask point, the players removed there). Means are taken on ``model``
    as it is, before anything is removed (the game takes them on the whole network too),
    over the inputs ``x``; or ``x`` is those means already (``consumer_means`` of this
    model), so that many removals from one model read the data once."""
    points = [p for p, players in removed if len(players)]
    if not points:
        return
    modules = dict(model.named_modules())
    if isinstance(x, Mapping):
        d = {
            p.module: compensation_matrix(_consumer(modules, p.module), x[p.module]) for p in points
        }
    else:
        d = matrices(model, points, x, batch_size)
    with torch.no_grad():
        for point, players in removed:
            if not len(players):
                continue
            consumer = modules[point.module]
            rows = point.channels(list(players), consumer.weight.device)
            delta = d[point.module].index_select(0, rows).sum(0)
            if consumer.bias is None:
                consumer.bias = nn.Parameter(torch.zeros_like(delta))
            consumer.bias.add_(delta.to(consumer.bias))
