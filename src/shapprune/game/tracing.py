"""Tracing a model into a torch.fx graph in which every attention head is visible.

``torch.nn.MultiheadAttention`` computes its heads inside one fused call, so its heads
cannot be masked from outside. The tracer here replaces each call with the same
computation written out (input projection, scaled dot-product attention per head, the
heads' concatenation, then ``out_proj`` called as a module), so that the heads' outputs
are a tensor in the graph, right before the output projection. torch's transformer
encoder layers and stacks, which torch.fx can trace neither into (their fast-path checks
branch on the input) nor past (a leaf would hide the attention inside), are written out as
what they compute in eval mode without the fast path: their own blocks, called in order.
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


def explicit_encoder_layer(
    layer: nn.TransformerEncoderLayer,
    src: torch.Tensor,
    src_mask: torch.Tensor | None = None,
    src_key_padding_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """What ``layer(src, ...)`` computes in eval mode: its attention and feed-forward blocks
    with their norms, before (``norm_first``) or after the residual additions."""
    x = src
    if layer.norm_first:
        x = x + layer._sa_block(layer.norm1(x), src_mask, src_key_padding_mask, is_causal)
        return x + layer._ff_block(layer.norm2(x))
    x = layer.norm1(x + layer._sa_block(x, src_mask, src_key_padding_mask, is_causal))
    return layer.norm2(x + layer._ff_block(x))


def explicit_encoder(
    encoder: nn.TransformerEncoder,
    src: torch.Tensor,
    mask: torch.Tensor | None = None,
    src_key_padding_mask: torch.Tensor | None = None,
    is_causal: bool | None = None,
) -> torch.Tensor:
    """What ``encoder(src, ...)`` computes in eval mode: its layers in turn (as module calls),
    then its final norm, if any."""
    out = src
    for layer in encoder.layers:
        out = layer(out, mask, src_key_padding_mask, bool(is_causal))
    return out if encoder.norm is None else encoder.norm(out)


_SDPA = F.scaled_dot_product_attention


def _traced_sdpa(*args, **kwargs):
    """``F.scaled_dot_product_attention`` while a model is traced: a call with a Proxy
    among its arguments is recorded as a call of the function itself. torch before 2.9
    or so refuses a Proxy where it takes a bool (timm's ViT passes its forward's
    ``is_causal`` flag, a placeholder of the trace) instead of dispatching to the Proxy,
    as newer versions do; the graph is the same either way."""
    proxies = [a for a in (*args, *kwargs.values()) if isinstance(a, fx.Proxy)]
    if proxies:
        return proxies[0].tracer.create_proxy("call_function", _SDPA, args, kwargs)
    return _SDPA(*args, **kwargs)


class HeadTracer(fx.Tracer):
    """An fx tracer that writes ``nn.MultiheadAttention`` out as explicit operations (and
    torch's transformer encoders, around it)."""

    def trace(self, root, concrete_args=None) -> fx.Graph:
        F.scaled_dot_product_attention = _traced_sdpa
        try:
            graph = super().trace(root, concrete_args)
        finally:
            F.scaled_dot_product_attention = _SDPA
        for node in graph.nodes:
            # an annotation written as a string (a module with ``from __future__ import
            # annotations``) becomes a string global of the generated code, which torch 2.8
            # cannot pickle (a game sent to a worker process; 2.14 can): dropped
            if isinstance(node.type, str):
                node.type = None
        return graph

    def call_module(self, m, forward, args, kwargs):
        if isinstance(m, nn.MultiheadAttention):
            return explicit_mha(m, *args, **kwargs)
        if isinstance(m, nn.TransformerEncoderLayer):
            return explicit_encoder_layer(m, *args, **kwargs)
        if isinstance(m, nn.TransformerEncoder):
            return explicit_encoder(m, *args, **kwargs)
        return super().call_module(m, forward, args, kwargs)


def trace(model: nn.Module) -> fx.GraphModule:
    """An fx GraphModule computing what ``model`` computes in eval mode (shares its weights)."""
    graph = HeadTracer().trace(model)
    return fx.GraphModule(model, graph, class_name=type(model).__name__ + "Traced")
