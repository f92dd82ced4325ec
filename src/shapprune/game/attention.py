"""Multi-head attention whose heads can be removed.

``torch.nn.MultiheadAttention`` ties its number of heads to its embedding width, so a
head cannot be cut out of it. ``SlimMultiheadAttention`` computes the same function with
separate q/k/v projections of width ``num_heads * head_dim`` (which may be less than the
embedding width), so heads can be removed; it is built from a torch module with
:meth:`from_torch` and answers the same call signature (attention weights are not
returned). ``multihead_attention`` is the one written-out attention the package uses
wherever the heads must be visible (tracing, LRP, this module).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

Projection = Callable[[torch.Tensor], torch.Tensor]


def in_projection(
    mha: nn.MultiheadAttention,
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor | None, ...]]:
    """The q, k and v weights and biases of ``mha``'s input projection, as views of its
    parameters: the packed ``in_proj_weight`` split in three, or the separate q/k/v weights
    (when keys or values have their own width); biases are None where it has none. Slices,
    not ``split``: under fx tracing the parameters are proxies, which cannot be iterated."""
    e = mha.embed_dim
    if mha._qkv_same_embed_dim:
        weights = tuple(mha.in_proj_weight[i * e : (i + 1) * e] for i in range(3))
    else:
        weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
    b = mha.in_proj_bias
    biases = (None, None, None) if b is None else tuple(b[i * e : (i + 1) * e] for i in range(3))
    return weights, biases


HEAD_COUNT_NAMES = ("num_heads", "num_attention_heads")  # timm and torch; Hugging Face
SEPARATE_PROJECTIONS = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))


def head_count(attn: nn.Module) -> int | None:
    """The number of heads an attention module declares (``num_heads``, or Hugging Face's
    ``num_attention_heads``), else None."""
    for name in HEAD_COUNT_NAMES:
        value = getattr(attn, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def set_head_count(attn: nn.Module, n: int) -> None:
    """Record ``n`` heads under every name the module declares its count by."""
    for name in HEAD_COUNT_NAMES:
        if isinstance(getattr(attn, name, None), int):
            setattr(attn, name, n)


def separate_projections(attn: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear] | None:
    """The q, k and v ``nn.Linear`` of an attention module that has them apart (Hugging
    Face's ``q_proj``/``k_proj``/``v_proj`` or ``query``/``key``/``value``), else None."""
    for names in SEPARATE_PROJECTIONS:
        mods = tuple(getattr(attn, n, None) for n in names)
        if all(isinstance(m, nn.Linear) for m in mods):
            return mods  # type: ignore[return-value]
    return None


def head_rows(heads: Iterable[int], head_dim: int, parts: int = 1, width: int = 0) -> list[int]:
    """The rows of ``heads`` in a projection whose head h owns rows ``h * head_dim`` to
    ``(h + 1) * head_dim - 1``; with ``parts`` blocks stacked (a fused q/k/v projection:
    3 blocks of ``width`` rows each), those rows in every block, block by block."""
    heads = list(heads)
    return [
        p * width + h * head_dim + j for p in range(parts) for h in heads for j in range(head_dim)
    ]


def refuse_masks(key_padding_mask, attn_mask, is_causal: bool, mha=None) -> None:
    """Written-out attention supports plain calls only: no masks, no extra key/value bias."""
    if key_padding_mask is not None or attn_mask is not None or is_causal:
        raise NotImplementedError("attention masks are not supported in written-out attention")
    if getattr(mha, "bias_k", None) is not None or getattr(mha, "add_zero_attn", False):
        raise NotImplementedError("bias_k/add_zero_attn are not supported in written-out attention")


def multihead_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    projections: tuple[Projection, Projection, Projection],
    out_proj: nn.Module,
    *,
    num_heads: int,
    batch_first: bool,
    constant_softmax: bool = False,
    core: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention, head by head: the heads' concatenated output is the
    input of ``out_proj`` (called as a module, so it can be hooked or masked there).

    ``constant_softmax`` detaches the attention weights (for relevance propagation);
    ``core(q, k, v)``, if given, computes the heads' outputs instead (an LRP rule's).
    """
    if not batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))

    def heads(x: torch.Tensor, project: Projection) -> torch.Tensor:
        y = project(x)
        return y.reshape(y.shape[0], y.shape[1], num_heads, -1).transpose(1, 2)

    q, k, v = (heads(t, p) for t, p in zip((query, key, value), projections, strict=True))
    if core is not None:
        out = core(q, k, v)
    elif constant_softmax:
        attn = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(dim=-1).detach()
        out = attn @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    out = out_proj(out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1))
    return out if batch_first else out.transpose(0, 1)


def mha_call(
    module: nn.Module,
    projections: tuple[Projection, Projection, Projection],
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
    *,
    constant_softmax: bool = False,
    core: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, None]:
    """What ``module(query, key, value, ...)`` returns in eval mode for a module with the
    interface of ``nn.MultiheadAttention`` (``out_proj``, ``num_heads``, ``batch_first``),
    its heads computed by ``multihead_attention`` with ``projections``. The arguments after
    ``value`` are ``nn.MultiheadAttention.forward``'s, so a replacement forward passes its
    own through; masks must be None and no attention weights are returned (None).
    """
    refuse_masks(key_padding_mask, attn_mask, is_causal, module)
    out = multihead_attention(
        query,
        key,
        value,
        projections,
        module.out_proj,
        num_heads=module.num_heads,
        batch_first=module.batch_first,
        constant_softmax=constant_softmax,
        core=core,
    )
    return out, None


class SlimMultiheadAttention(nn.Module):
    """Attention with ``num_heads`` heads of width ``head_dim`` over ``embed_dim`` features."""

    # No packed input projection. torch's TransformerEncoderLayer reads these of its
    # ``self_attn`` to choose its fused fast path, which needs nn.MultiheadAttention's packed
    # weights; without them it takes the path that calls this module.
    in_proj_weight = None
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        batch_first: bool,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        where = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.batch_first = batch_first
        width = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, width, **where)
        self.k_proj = nn.Linear(embed_dim, width, **where)
        self.v_proj = nn.Linear(embed_dim, width, **where)
        self.out_proj = nn.Linear(width, embed_dim, **where)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> SlimMultiheadAttention:
        """The same function as ``mha`` (eval mode, no masks), with separable heads."""
        if mha.bias_k is not None or mha.add_zero_attn or not mha._qkv_same_embed_dim:
            raise NotImplementedError("bias_k, add_zero_attn and kdim/vdim are not supported")
        e = mha.embed_dim
        weight = mha.out_proj.weight
        slim = cls(
            e, mha.num_heads, e // mha.num_heads, mha.batch_first, weight.device, weight.dtype
        )
        projections = (slim.q_proj, slim.k_proj, slim.v_proj)
        with torch.no_grad():
            for proj, weight, bias in zip(projections, *in_projection(mha), strict=True):
                proj.weight.copy_(weight)
                if bias is not None:
                    proj.bias.copy_(bias)
                else:
                    proj.bias.zero_()
            slim.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                slim.out_proj.bias.copy_(mha.out_proj.bias)
            else:
                slim.out_proj.bias.zero_()
        return slim

    def remove_heads(self, heads: list[int]) -> None:
        """Cut the given heads out of the projections."""
        kept = [h for h in range(self.num_heads) if h not in set(heads)]
        keep = torch.tensor(head_rows(kept, self.head_dim), device=self.q_proj.weight.device)
        with torch.no_grad():
            for proj in (self.q_proj, self.k_proj, self.v_proj):
                proj.weight = nn.Parameter(proj.weight[keep].clone())
                proj.bias = nn.Parameter(proj.bias[keep].clone())
                proj.out_features = len(keep)
            self.out_proj.weight = nn.Parameter(self.out_proj.weight[:, keep].clone())
            self.out_proj.in_features = len(keep)
        self.num_heads -= len(set(heads))

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, None]:
        """``nn.MultiheadAttention``'s call (eval mode, no masks; weights are None)."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        return mha_call(self, projections, query, key, value, *args, **kwargs)
