"""Tracing a model into a torch.fx graph in which every attention head is visible.

``torch.nn.MultiheadAttention`` computes its heads inside one fused call, so its heads
cannot be masked from outside. The tracer here replaces each call with the same
computation written out (input projection, scaled dot-product attention per head, the
heads' concatenation, then ``out_proj`` called as a module), so that the heads' outputs
are a tensor in the graph, right before the output projection.
"""

from __future__ import annotations

import functools

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from shapprune.game.attention import in_projection, mha_call


def explicit_mha(
    mha: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *args,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """What ``mha(query, key, value, ...)`` computes in eval mode, head by head.

    Attention weights are not returned (None); masks must be None.
    """
    weights, biases = in_projection(mha)
    projections = tuple(
        functools.partial(F.linear, weight=w, bias=bias)
        for w, bias in zip(weights, biases, strict=True)
    )
    return mha_call(mha, projections, query, key, value, *args, **kwargs)


class HeadTracer(fx.Tracer):
    """An fx tracer that writes ``nn.MultiheadAttention`` out as explicit operations."""

    def call_module(self, m, forward, args, kwargs):
        if isinstance(m, nn.MultiheadAttention):
            return explicit_mha(m, *args, **kwargs)
        return super().call_module(m, forward, args, kwargs)


def trace(model: nn.Module) -> fx.GraphModule:
    """An fx GraphModule computing what ``model`` computes in eval mode (shares its weights)."""
    graph = HeadTracer().trace(model)
    return fx.GraphModule(model, graph, class_name=type(model).__name__ + "Traced")
