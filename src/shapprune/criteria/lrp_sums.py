"""Residual additions of any model split relevance in proportion to their summands, for LRP.

Written as ``x + f(x)`` (or ``result += x``), a residual addition passes its output's
relevance by the plain gradient: whole to both summands, so that relevance doubles at each
one. Over the dozens of residual additions of a MaxViT, EfficientNet or Swin the relevance
of the early layers grows by ~10^30 and overflows float32. zennit's remedy (and
:mod:`shapprune.criteria.lrp`'s for ResNet and transformer blocks) is a forward written
anew per block class, with the addition as a ``Sum`` module; :class:`ResidualSums` covers
every other block without one: while the model runs under it, each addition of two
tensors of the same shape that both carry relevance (both computed in the pass, neither a
leaf: not a constant, a parameter or a probe) computes the same sum, and its backward pass
splits the relevance in proportion to the summands (zennit's ``Norm`` rule for ``Sum``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from zennit.canonizers import Canonizer

from shapprune.criteria.lrp_rules import _stabilised

__all__ = ["ResidualSums"]

_ADD = torch.Tensor.add
_IN_PLACE = torch.Tensor.add_
_ADDS = {torch.add, _ADD, _IN_PLACE, torch.Tensor.__add__, torch.Tensor.__iadd__}


class _ProportionalSum(torch.autograd.Function):
    """``a + b`` (into ``a`` where ``in_place``), whose backward pass splits the relevance
    (in the gradient slot, as zennit carries it) in proportion to ``a`` and ``b``."""

    @staticmethod
    def forward(ctx, a, b, in_place: bool, epsilon: float):  # type: ignore[override]
        ctx.epsilon = epsilon
        if in_place:
            ctx.save_for_backward(a.detach().clone(), b)
            ctx.mark_dirty(a)
            return a.add_(b)
        ctx.save_for_backward(a, b)
        return a + b

    @staticmethod
    def backward(ctx, relevance):  # type: ignore[override]
        a, b = ctx.saved_tensors
        ratio = relevance / _stabilised(a + b, ctx.epsilon)
        return a * ratio, b * ratio, None, None


def _carry_relevance(a: Any, b: Any) -> bool:
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.shape == b.shape
        and a.dtype == b.dtype
        and a.is_floating_point()
        and a.grad_fn is not None
        and b.grad_fn is not None
    )


class _Mode(TorchFunctionMode):
    def __init__(self, epsilon: float) -> None:
        super().__init__()
        self.epsilon = epsilon

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ADDS and not kwargs and len(args) == 2 and _carry_relevance(*args):
            in_place = func in (_IN_PLACE, torch.Tensor.__iadd__)
            return _ProportionalSum.apply(args[0], args[1], in_place, self.epsilon)
        return func(*args, **kwargs)


class ResidualSums(Canonizer):
    """While the module it is applied to runs (hooks on it), the additions of tensors that
    both carry relevance split it in proportion (see the module's docstring); ``epsilon``
    stabilises the division as zennit's ``Norm`` rule does. The outputs are unchanged."""

    def __init__(self, epsilon: float = 1e-6) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.handles: list[Any] = []
        self.active: list[_Mode] = []

    def copy(self) -> ResidualSums:
        return ResidualSums(self.epsilon)

    def apply(self, root_module: nn.Module) -> list[ResidualSums]:
        instance = self.copy()
        instance.register(root_module)
        return [instance]

    def register(self, module: nn.Module) -> None:  # type: ignore[override]
        def enter(_module: nn.Module, _args: Any) -> None:
            mode = _Mode(self.epsilon)
            mode.__enter__()
            self.active.append(mode)

        def leave(_module: nn.Module, _args: Any, _out: Any) -> None:
            self.active.pop().__exit__(None, None, None)

        self.handles = [
            module.register_forward_pre_hook(enter),
            module.register_forward_hook(leave),
        ]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        while self.active:  # a forward pass that raised left its mode on
            self.active.pop().__exit__(None, None, None)
