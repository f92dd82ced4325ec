"""LRP canonizers for timm's vision transformers (recognised by module path, so timm is
never imported here): the attention computed by
:func:`~shapprune.criteria.lrp_rules.attention_lrp` with the composite's attention rule,
and the block's two residual additions as zennit ``Sum`` modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from zennit.canonizers import AttributeCanonizer, Canonizer
from zennit.layer import Sum

from shapprune.criteria.lrp_rules import attention_lrp

__all__ = ["timm_canonizers"]


def _is_timm(module: nn.Module, name: str) -> bool:
    return type(module).__module__.startswith("timm.") and type(module).__name__ == name


def _attention_forward(
    self: nn.Module, x: torch.Tensor, attn_mask: Any = None, is_causal: bool = False
) -> torch.Tensor:
    if attn_mask is not None or is_causal or getattr(self, "gate", None) is not None:
        raise NotImplementedError("LRP of timm attention with masks or gates is not supported")
    B, N, _ = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    out = attention_lrp(q, k, v, self.canonizer_attention, self.scale)
    out = out.transpose(1, 2).reshape(B, N, -1)
    out = self.norm(out) if hasattr(self, "norm") else out
    return self.proj_drop(self.proj(out))


def _block_forward(
    self: nn.Module, x: torch.Tensor, attn_mask: Any = None, is_causal: bool = False
) -> torch.Tensor:
    attn = self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)
    x = self.canonizer_sum1(torch.stack([x, self.drop_path1(self.ls1(attn))], dim=-1))
    mlp = self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
    return self.canonizer_sum2(torch.stack([x, mlp], dim=-1))


def timm_canonizers(attention: str) -> list[Canonizer]:
    """Canonizers for timm's ``Attention`` (with the ``attention`` rule) and ViT ``Block``."""

    def attention_attributes(name: str, module: nn.Module) -> dict[str, Any] | None:
        if _is_timm(module, "Attention") and hasattr(module, "qkv"):
            return {"forward": _attention_forward.__get__(module), "canonizer_attention": attention}
        return None

    def block_attributes(name: str, module: nn.Module) -> dict[str, Any] | None:
        if _is_timm(module, "Block") and hasattr(module, "ls1") and hasattr(module, "attn"):
            forward: Callable[..., torch.Tensor] = _block_forward.__get__(module)
            return {"forward": forward, "canonizer_sum1": Sum(), "canonizer_sum2": Sum()}
        return None

    return [AttributeCanonizer(attention_attributes), AttributeCanonizer(block_attributes)]
