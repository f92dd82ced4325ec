"""Physical removal of units through torch-pruning's dependency graph."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from .units import build_graph, find_units


def remove_units(
    model: nn.Module, layer: str, units: Sequence[int], example_inputs: torch.Tensor
) -> nn.Module:
    """A copy of ``model`` with the given units of ``layer`` physically removed.

    Channels and neurons are removed with every coupled producer and consumer (the
    dependency graph's group); attention heads are removed from the fused ``qkv``
    projection and the output projection, and the module's ``num_heads`` is updated.
    """
    model = copy.deepcopy(model).eval()
    spec = find_units(model, layer, example_inputs)
    idxs = sorted({int(u) for u in units})
    if not idxs:
        return model
    if idxs[0] < 0 or idxs[-1] >= spec.n_players:
        raise ValueError(f"{layer!r} has units 0..{spec.n_players - 1}; got {idxs}")
    if len(idxs) == spec.n_players:
        raise ValueError(f"removing all {spec.n_players} units would empty {layer!r}")
    dg = build_graph(model, example_inputs)
    module = dict(model.named_modules())[layer]
    if spec.kind == "heads":
        _remove_heads(dg, module, idxs)
    else:
        is_conv = isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)
        fn = tp.prune_conv_out_channels if is_conv else tp.prune_linear_out_channels
        dg.get_pruning_group(module, fn, idxs=idxs).prune()
    return model


def _remove_heads(dg: tp.DependencyGraph, attn: nn.Module, heads: list[int]) -> None:
    qkv = getattr(attn, "qkv", None)
    if not isinstance(qkv, nn.Linear):
        raise NotImplementedError(
            f"physical head removal needs a fused 'qkv' projection; {type(attn).__name__} has none"
        )
    n_heads = int(attn.num_heads)
    width = qkv.out_features // 3
    head_dim = width // n_heads
    rows = [
        part * width + h * head_dim + j for part in range(3) for h in heads for j in range(head_dim)
    ]
    dg.get_pruning_group(qkv, tp.prune_linear_out_channels, idxs=rows).prune()
    attn.num_heads = n_heads - len(heads)
    if hasattr(attn, "attn_dim"):  # timm keeps the concatenated heads' width
        attn.attn_dim = attn.num_heads * head_dim
