"""BatchNorm merged into the layer whose output it reads, for LRP, by the data flow.

zennit's ``SequentialMergeBatchNorm`` pairs each BatchNorm with the module before it in
child order. In torchvision's DenseNet a dense layer's last convolution (32 channels) comes
right before the next layer's BatchNorm over the concatenation (96 channels), so it merges
the two and the forward pass fails. Its 1.0 release also sets the merged BatchNorm's
``eps`` to 0, which torch 2.11 refuses even in eval mode (and torch 2.14 in training), and
restores the layer's parameters as plain attributes.

Here the pairs come from torch-pruning's dependency graph (:func:`batch_norm_merges`): a
BatchNorm is merged into a convolution or linear layer only where it reads exactly that
layer's output and that output goes nowhere else. Every other BatchNorm is left as it is
(the composites pass relevance through it). :class:`MergeBatchNorms` gives the layer merged
weight and bias (new parameters) and makes the BatchNorm compute the identity by replacing
its ``forward``: the BatchNorm's parameters, buffers and ``eps`` are never touched, under
any zennit and torch, and removing the canonizer puts the layer's own parameter objects
back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from zennit.canonizers import Canonizer

from shapprune.game.units import build_graph

__all__ = ["Merge", "MergeBatchNorms", "batch_norm_merges"]

Merge = tuple[str, str]
"""The names of a layer and of the BatchNorm merged into it."""

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _out_channels(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.modules.conv._ConvNd) else layer.out_features


def _mergeable(layer: nn.Module, norm: nn.Module) -> bool:
    """Whether ``norm`` (in eval mode, with running statistics) can be folded into
    ``layer``'s output channels."""
    return (
        isinstance(layer, _LAYERS)
        and isinstance(norm, _BatchNorm)
        and not norm.training
        and norm.running_mean is not None
        and norm.running_var is not None
        and norm.num_features == _out_channels(layer)
    )


def batch_norm_merges(
    model: nn.Module,
    example_inputs: torch.Tensor | None = None,
    graph: tp.DependencyGraph | None = None,
) -> list[Merge]:
    """The (layer, BatchNorm) pairs of ``model`` that LRP canonization merges: each
    BatchNorm whose only input is the output of one convolution or linear layer, read by
    that BatchNorm alone, in model order.

    ``graph``: the model's dependency graph (:func:`~shapprune.game.units.build_graph`), if
    already built; otherwise it is built from ``example_inputs`` (gradients enabled and the
    parameters made trainable for the trace, their flags restored).
    """
    if graph is None:
        if example_inputs is None:
            raise ValueError("batch_norm_merges needs example_inputs or a dependency graph")
        flags = [(p, p.requires_grad) for p in model.parameters()]
        try:
            model.requires_grad_(True)  # torch-pruning traces through autograd
            with torch.enable_grad():
                graph = build_graph(model, example_inputs)
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
    names = {m: n for n, m in model.named_modules()}
    found: dict[str, str] = {}
    for norm, node in graph.module2node.items():
        if not isinstance(norm, _BatchNorm) or norm not in names:
            continue
        inputs = list(dict.fromkeys(node.inputs))
        if len(inputs) != 1:
            continue
        source = inputs[0]
        layer = source.module
        if not isinstance(layer, _LAYERS) or layer not in names:
            continue
        if list(dict.fromkeys(source.outputs)) != [node]:  # read elsewhere too: not merged
            continue
        if _out_channels(layer) == norm.num_features:
            found[names[norm]] = names[layer]
    order = {n: i for i, n in enumerate(names.values())}
    return [(found[n], n) for n in sorted(found, key=order.__getitem__)]


def _identity(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return x


class MergeBatchNorms(Canonizer):
    """Merges the BatchNorm of each of ``merges`` (from :func:`batch_norm_merges`) into its
    layer, where both are found (by name) in the module it is applied to, the BatchNorm is in
    eval mode and has running statistics.

    The layer computes ``bn(layer(x))`` with merged weight and bias (parameters of their
    own; a layer without a bias gets one), and the BatchNorm passes its input through.
    """

    def __init__(self, merges: Sequence[Merge] = ()) -> None:
        super().__init__()
        self.merges = tuple(merges)
        self.layer: nn.Module | None = None
        self.norm: nn.Module | None = None
        self.saved: tuple[Any, Any] = (None, None)

    def copy(self) -> MergeBatchNorms:
        return MergeBatchNorms(self.merges)

    def apply(self, root_module: nn.Module) -> list[MergeBatchNorms]:
        modules = dict(root_module.named_modules())
        instances = []
        for layer, norm in self.merges:
            if layer in modules and norm in modules and _mergeable(modules[layer], modules[norm]):
                instance = MergeBatchNorms()
                instance.register(modules[layer], modules[norm])
                instances.append(instance)
        return instances

    def register(self, layer: nn.Module, norm: nn.Module) -> None:  # type: ignore[override]
        self.layer, self.norm = layer, norm
        self.saved = (layer.weight, layer.bias)
        weight, bias = _merged(layer, norm)
        grad = layer.weight.requires_grad
        layer.weight = nn.Parameter(weight, requires_grad=grad)
        layer.bias = nn.Parameter(bias, requires_grad=grad)
        norm.forward = _identity

    def remove(self) -> None:
        if self.layer is None or self.norm is None:
            return
        self.layer.weight, self.layer.bias = self.saved
        del self.norm.forward
        self.layer = self.norm = None
        self.saved = (None, None)


@torch.no_grad()
def _merged(layer: nn.Module, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``norm(layer(x))`` as one layer (in the layer's dtype)."""
    weight = layer.weight.detach()
    scale = (norm.running_var.detach() + norm.eps).rsqrt().to(weight.dtype)
    if norm.weight is not None:
        scale = scale * norm.weight.detach()
    shift = -norm.running_mean.detach().to(weight.dtype) * scale
    if norm.bias is not None:
        shift = shift + norm.bias.detach()
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(shift)
    merged = weight * scale.reshape(-1, *(1,) * (weight.dim() - 1))
    return merged.clone(), (bias * scale + shift).clone()
