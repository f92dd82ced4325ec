"""Zennit composites from a :class:`~shapprune.criteria.lrp_spec.CompositeSpec`, and the LRP
rules for attention.

Why not ``lxt``: its 2.x release pulls transformers, accelerate, bitsandbytes and
open_clip_torch into the install, and its rules patch Hugging Face and timm modules, not
the zoo's or torchvision's attention; the two attention rules it adds over zennit (the
softmax rule and the uniform rule for the query-key and attention-value products of
AttnLRP) are a few lines of autograd here (:class:`_AttentionLRP`), and zennit keeps
serving every other layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from zennit.canonizers import Canonizer
from zennit.composites import layer_map_base
from zennit.core import Composite
from zennit.rules import AlphaBeta, Epsilon, Gamma, Pass, ZPlus
from zennit.types import Linear as LinearType

from shapprune.criteria.lrp_spec import CompositeSpec, RuleSpec
from shapprune.game.units import is_attention

__all__ = ["attention_lrp", "depth_groups", "spec_composite", "transformer_blocks"]


# --- attention ---------------------------------------------------------------------------------


def _stabilised(x: torch.Tensor, epsilon: float) -> torch.Tensor:
    return x + epsilon * torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class _AttentionLRP(torch.autograd.Function):
    """``softmax(q k^T * scale) v``, whose backward pass carries relevance by an LRP rule.

    In zennit's scheme the gradient slot carries relevance between modules: the output's
    relevance comes in, the relevance of q, k and v goes out.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale: float, rule: str, epsilon: float):  # type: ignore[override]
        s = (q @ k.transpose(-2, -1)) * scale
        a = s.softmax(dim=-1)
        out = a @ v
        ctx.save_for_backward(q, k, v, s, a, out)
        ctx.scale, ctx.rule, ctx.epsilon = scale, rule, epsilon
        return out

    @staticmethod
    def backward(ctx, r_out):  # type: ignore[override]
        q, k, v, s, a, out = ctx.saved_tensors
        at = a.transpose(-2, -1)
        # zeros, not None, for q and k: a zennit rule on their projection needs a tensor
        none_q, none_k = torch.zeros_like(q), torch.zeros_like(k)
        if ctx.rule == "weights":  # split by the attention weights (rows sum to 1: conserved)
            return none_q, none_k, at @ r_out, None, None, None
        g = r_out / _stabilised(out, ctx.epsilon)
        if ctx.rule == "cp":  # epsilon rule on the value path, attention weights constant
            return none_q, none_k, v * (at @ g), None, None, None
        # AttnLRP: uniform (50/50) epsilon rule for both bilinear products, softmax rule
        # R_s = s * (R_a - a * sum_j R_a) (Achtibat et al. 2024, Propositions 3.1 and 3.3)
        r_v = 0.5 * v * (at @ g)
        r_a = 0.5 * a * (g @ v.transpose(-2, -1))
        r_s = s * (r_a - a * r_a.sum(dim=-1, keepdim=True))
        g_s = r_s / _stabilised(s, ctx.epsilon)
        r_q = 0.5 * ctx.scale * q * (g_s @ k)
        r_k = 0.5 * ctx.scale * k * (g_s.transpose(-2, -1) @ q)
        return r_q, r_k, r_v, None, None, None


def attention_lrp(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rule: str,
    scale: float | None = None,
    epsilon: float = 1e-6,
) -> torch.Tensor:
    """Scaled dot-product attention (heads on dim -3) with the attention LRP ``rule``
    (:data:`~shapprune.criteria.lrp_spec.ATTENTION_RULES`) in its backward pass."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _AttentionLRP.apply(q, k, v, float(scale), rule, float(epsilon))


# --- depth groups ------------------------------------------------------------------------------


def transformer_blocks(model: nn.Module) -> list[str]:
    """The names of ``model``'s transformer blocks, outermost only, in model order: modules
    named ``Block`` (zoo, timm) or ``EncoderBlock`` (torchvision) holding an attention module."""
    found: list[str] = []
    for name, m in model.named_modules():
        if type(m).__name__ not in ("Block", "EncoderBlock"):
            continue
        if any(name.startswith(b + ".") for b in found):
            continue
        if any(is_attention(sub) for sub in m.modules()):
            found.append(name)
    return found


def _cuts(n: int, first: float, last: float) -> tuple[int, int]:
    """Boundaries splitting ``n`` items into a first, middle and last share."""
    a = min(n, max(1 if n else 0, round(n * first)))
    b = max(a, n - max(1 if n > 1 else 0, round(n * last)))
    return a, b


def depth_groups(model: nn.Module) -> tuple[str, dict[str, str]]:
    """The network's family (``"cnn"`` or ``"transformer"``) and the depth group of each
    module that has one (a transformer's blocks: their name -> group; a CNN's convolutions
    and linear layers: their name -> group). See :mod:`shapprune.criteria.lrp_spec`."""
    blocks = transformer_blocks(model)
    out: dict[str, str] = {}
    if blocks:
        a, b = _cuts(len(blocks), 0.25, 0.25)
        for i, name in enumerate(blocks):
            out[name] = "early" if i < a else "middle" if i < b else "late"
        return "transformer", out
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    a, b = _cuts(len(convs), 1 / 3, 1 / 3)
    for i, name in enumerate(convs):
        out[name] = "low" if i < a else "mid" if i < b else "high"
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            out[name] = "fc"
    return "cnn", out


def _rule(spec: RuleSpec) -> Any:
    if spec.rule == "epsilon":
        return Epsilon(epsilon=spec.epsilon)
    if spec.rule == "gamma":
        return Gamma(gamma=spec.gamma)
    if spec.rule == "z-plus":
        return ZPlus()
    return AlphaBeta(alpha=2.0, beta=1.0)


def spec_composite(
    spec: CompositeSpec, model: nn.Module, canonizers: list[Canonizer] | None = None
) -> Composite:
    """The zennit composite giving each convolution and linear layer of ``model`` its depth
    group's rule; activations, BatchNorm and LayerNorm pass relevance, sums and average
    pools split it in proportion (zennit's base map). ``model`` is the uncanonized network
    (modules a canonizer adds inside a block get that block's group)."""
    family, groups = depth_groups(model)
    if family != spec.family:
        raise ValueError(
            f"the composite is for a {spec.family} but the model is a {family}; "
            f"tune one for this model with `shapprune tune-lrp`"
        )
    order = [n for n, _ in model.named_modules()]
    blocks = [n for n in order if n in groups] if family == "transformer" else []
    first = order.index(blocks[0]) if blocks else 0
    rules = {g: _rule(r) for g, r in spec.groups.items()}
    base = [(nn.LayerNorm, Pass()), *layer_map_base()]

    def group_of(name: str) -> str:
        if family == "cnn":
            return groups.get(name, "fc")
        for b in blocks:
            if name == b or name.startswith(b + "."):
                return groups[b]
        return "early" if name in order and order.index(name) < first else "head"

    def mapping(ctx: dict, name: str, module: nn.Module) -> Any:
        if isinstance(module, nn.MultiheadAttention):
            return None  # relevance goes through its canonized computation instead
        if isinstance(module, LinearType):
            return rules[group_of(name)]
        return next((hook for types, hook in base if isinstance(module, types)), None)

    return Composite(module_map=mapping, canonizers=canonizers)
