"""Tracing a model into a torch.fx graph in which every attention head is visible.

``torch.nn.MultiheadAttention`` computes its heads inside one fused call, so its heads
cannot be masked from outside. The tracer here replaces each call with the same
computation written out (input projection, scaled dot-product attention per head, the
heads' concatenation, then ``out_proj`` called as a module), so that the heads' outputs
are a tensor in the graph, right before the output projection.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn


def explicit_mha(
    mha: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[torch.Tensor, None]:
    """What ``mha(query, key, value, ...)`` computes in eval mode, head by head.

    Attention weights are not returned (None); masks must be None.
    """
    if key_padding_mask is not None or attn_mask is not None or is_causal:
        raise NotImplementedError("attention masks are not supported in explicit attention")
    if mha.bias_k is not None or mha.add_zero_attn:
        raise NotImplementedError("bias_k/add_zero_attn are not supported in explicit attention")
    if not mha.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    e, h = mha.embed_dim, mha.num_heads
    if mha._qkv_same_embed_dim:
        w_q, w_k, w_v = (
            mha.in_proj_weight[:e],
            mha.in_proj_weight[e : 2 * e],
            mha.in_proj_weight[2 * e :],
        )
    else:
        w_q, w_k, w_v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    b = mha.in_proj_bias
    b_q, b_k, b_v = (None, None, None) if b is None else (b[:e], b[e : 2 * e], b[2 * e :])

    def heads(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        y = F.linear(x, w, bias)
        return y.reshape(y.shape[0], y.shape[1], h, -1).transpose(1, 2)

    q, k, v = heads(query, w_q, b_q), heads(key, w_k, b_k), heads(value, w_v, b_v)
    out = F.scaled_dot_product_attention(q, k, v)
    out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)
    out = mha.out_proj(out)
    if not mha.batch_first:
        out = out.transpose(0, 1)
    return out, None


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
