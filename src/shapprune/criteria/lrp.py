"""LRP relevance as a pruning criterion (Hatefi et al. 2024), computed with zennit.

A unit's relevance is the LRP relevance that flows through it: the relevance of the tensors
where the unit enters its consumers (the mask points of :func:`shapprune.units.find_units`),
summed over the unit's channels and positions, per example; the score is its absolute value
summed over the reference examples. LRP starts from the true class's logit (relevance of the
output = that logit), so that relevance is conserved down to the layer, up to biases.

Rules come from a zennit composite (:data:`COMPOSITES`). Canonizers make the network fit for
LRP without changing its outputs: BatchNorm merged into the preceding convolution, residual
additions made explicit modules (relevance split in proportion to the summands), and for
attention the softmax weights held constant in the backward pass, so that relevance reaches
the values only, along the attention weights (the conservative propagation of Ali et al.
2022; AttnLRP is not available). LayerNorm passes relevance through unchanged, activations
(ReLU, GELU) too; other operations without a rule (max-pooling, reshapes, matmuls) pass it
by their plain gradient.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock as TorchvisionBasicBlock
from torchvision.models.vision_transformer import EncoderBlock
from zennit.canonizers import AttributeCanonizer, Canonizer, SequentialMergeBatchNorm
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    LayerMapComposite,
    layer_map_base,
)
from zennit.core import Composite
from zennit.layer import Sum
from zennit.rules import AlphaBeta, Epsilon, Gamma, Pass, ZPlus
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
from zennit.types import Linear as LinearType

from shapprune.criteria.base import Criterion
from shapprune.criteria.lrp_options import COMPOSITES, LRPOptions
from shapprune.criteria.lrp_options import check_composite as _check_composite
from shapprune.devices import device_of, to_device
from shapprune.game.attention import in_projection, mha_call
from shapprune.game.tracing import explicit_mha
from shapprune.game.units import Units, find_units
from shapprune.zoo import models

__all__ = ["COMPOSITES", "LRPCriterion", "build_composite", "canonized", "lrp_canonizers"]


def build_composite(
    name: str,
    *,
    canonizers: list[Canonizer] | None = None,
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    low: float = -3.0,
    high: float = 3.0,
) -> Composite:
    """The zennit composite ``name``; ``low``/``high`` bound the input for "epsilon-gamma-box".

    The first four apply one rule to every convolution and linear layer; the others are
    zennit's composites. LayerNorm passes relevance unchanged in all of them.
    """
    _check_composite(name)
    # nn.MultiheadAttention is an "activation" for zennit (a pass rule); it gets no rule here:
    # relevance goes through its (canonized) inner computation instead.
    prefix: list[tuple[Any, Any]] = [(nn.MultiheadAttention, None), (nn.LayerNorm, Pass())]
    uniform = {
        "epsilon": lambda: Epsilon(epsilon=epsilon),
        "gamma": lambda: Gamma(gamma=gamma),
        "alpha2-beta1": lambda: AlphaBeta(alpha=2.0, beta=1.0),
        "z-plus": lambda: ZPlus(),
    }
    if name in uniform:
        layer_map = prefix + layer_map_base() + [(LinearType, uniform[name]())]
        return LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    if name == "epsilon-gamma-box":
        return EpsilonGammaBox(
            low=low,
            high=high,
            epsilon=epsilon,
            gamma=gamma,
            layer_map=prefix,
            canonizers=canonizers,
        )
    composite = {
        "epsilon-plus": EpsilonPlus,
        "epsilon-plus-flat": EpsilonPlusFlat,
        "epsilon-alpha2-beta1": EpsilonAlpha2Beta1,
        "epsilon-alpha2-beta1-flat": EpsilonAlpha2Beta1Flat,
    }[name]
    return composite(epsilon=epsilon, layer_map=prefix, canonizers=canonizers)


# --- canonizers --------------------------------------------------------------------------------


def _stack_sum(module: nn.Module, key: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` through a zennit ``Sum`` module, so that an LRP rule applies to the addition."""
    return getattr(module, key)(torch.stack([a, b], dim=-1))


def _basic_block(name: str, module: nn.Module) -> dict[str, Any] | None:
    # the zoo's BasicBlock has torchvision's attribute names and computation
    if isinstance(module, models.BasicBlock | TorchvisionBasicBlock):
        forward = ResNetBasicBlockCanonizer.forward
        return {"forward": forward.__get__(module), "canonizer_sum": Sum()}
    return None


def _zoo_block_forward(self: models.Block, x: torch.Tensor) -> torch.Tensor:
    x = _stack_sum(self, "canonizer_sum1", x, self.attn(self.norm1(x)))
    return _stack_sum(self, "canonizer_sum2", x, self.mlp(self.norm2(x)))


def _encoder_block_forward(self: EncoderBlock, input: torch.Tensor) -> torch.Tensor:
    x = self.ln_1(input)
    x, _ = self.self_attention(x, x, x, need_weights=False)
    x = _stack_sum(self, "canonizer_sum1", self.dropout(x), input)
    return _stack_sum(self, "canonizer_sum2", x, self.mlp(self.ln_2(x)))


def _residual_block(name: str, module: nn.Module) -> dict[str, Any] | None:
    forward: Callable[..., torch.Tensor] | None = None
    if isinstance(module, models.Block):
        forward = _zoo_block_forward
    elif isinstance(module, EncoderBlock):
        forward = _encoder_block_forward
    if forward is None:
        return None
    return {"forward": forward.__get__(module), "canonizer_sum1": Sum(), "canonizer_sum2": Sum()}


def _zoo_attention_forward(self: models.Attention, x: torch.Tensor) -> torch.Tensor:
    B, N, _ = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1).detach()
    return self.proj((attn @ v).transpose(1, 2).reshape(B, N, -1))


def _zoo_attention(name: str, module: nn.Module) -> dict[str, Any] | None:
    if isinstance(module, models.Attention):
        return {"forward": _zoo_attention_forward.__get__(module)}
    return None


def _mha_forward(
    self: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *args,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """``self(query, key, value)`` in eval mode with projections as modules and constant softmax."""
    projections = (self.canonizer_q, self.canonizer_k, self.canonizer_v)
    return mha_call(self, projections, query, key, value, *args, constant_softmax=True, **kwargs)


def _linear_sharing(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A Linear module computing ``F.linear(x, weight, bias)`` (sharing their storage)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return linear


def _mha_lrp(name: str, module: nn.Module) -> dict[str, Any] | None:
    if not isinstance(module, nn.MultiheadAttention):
        return None
    weights, biases = in_projection(module)
    attributes: dict[str, Any] = {"forward": _mha_forward.__get__(module)}
    for key, w, bias in zip("qkv", weights, biases, strict=True):
        attributes["canonizer_" + key] = _linear_sharing(w, bias)
    return attributes


def _mha_plain(name: str, module: nn.Module) -> dict[str, Any] | None:
    if isinstance(module, nn.MultiheadAttention):
        return {"forward": lambda *args, **kwargs: explicit_mha(module, *args, **kwargs)}
    return None


def lrp_canonizers(canonize: bool = True) -> list[Canonizer]:
    """Zennit canonizers that fit a model for LRP without changing its outputs.

    With ``canonize``: BatchNorm merged into the preceding linear layer, residual additions
    of ResNet blocks (zoo and torchvision) and transformer blocks (zoo and torchvision ViT)
    as ``Sum`` modules, attention softmax held constant in the backward pass. Always:
    ``nn.MultiheadAttention`` written out so that its heads enter ``out_proj`` as a module.
    """
    if not canonize:
        return [AttributeCanonizer(_mha_plain)]
    return [
        SequentialMergeBatchNorm(),
        AttributeCanonizer(_basic_block),
        ResNetBottleneckCanonizer(),
        AttributeCanonizer(_residual_block),
        AttributeCanonizer(_zoo_attention),
        AttributeCanonizer(_mha_lrp),
    ]


@contextmanager
def canonized(model: nn.Module, canonize: bool = True) -> Iterator[nn.Module]:
    """Apply :func:`lrp_canonizers` to ``model`` in place, and revert them on exit."""
    applied: list[Canonizer] = []
    try:
        for canonizer in lrp_canonizers(canonize):
            applied += canonizer.apply(model)
        yield model
    finally:
        for canonizer in reversed(applied):
            canonizer.remove()


# --- the criterion -----------------------------------------------------------------------------


class LRPCriterion(Criterion):
    """Units scored by their LRP relevance for the true class (Hatefi et al. 2024).

    ``composite`` names the LRP rules (:data:`COMPOSITES`); ``batch_size`` bounds memory;
    ``canonize`` fits the model for LRP first (see :func:`lrp_canonizers`); ``epsilon`` and
    ``gamma`` are the parameters of the epsilon and gamma rules.
    """

    name = "lrp"
    Options = LRPOptions

    def _score_layers(
        self, model: nn.Module, layers: list[str], x: torch.Tensor, y: torch.Tensor, seed: int
    ) -> dict[str, np.ndarray]:
        """One score per unit of each layer (higher = more relevant): |R| of the unit, summed
        over the reference examples; LRP started from the true class's output logit.

        The model is scored in eval mode on a copy; ``seed`` is unused (LRP is deterministic).
        """
        return {layer: self._score(model, layer, x, y) for layer in layers}

    def _score(self, model: nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        work = copy.deepcopy(model).float().eval().requires_grad_(True)
        # moved to the model's device once; clones are not inference tensors
        x, y = to_device(x, work).clone(), y.to(device_of(work)).clone()
        units = find_units(work, layer, x[:2])  # needs trainable parameters
        work.requires_grad_(False)
        rules = {"epsilon": self.epsilon, "gamma": self.gamma}
        bounds = {"low": float(x.min()), "high": float(x.max())}
        totals = np.zeros(units.n_players)
        for start in range(0, len(x), self.batch_size):
            xb = x[start : start + self.batch_size]
            yb = y[start : start + self.batch_size].long()
            check = start == 0
            # a fresh composite (and canonizers) per batch: zennit's hooks hold on to tensors
            composite = build_composite(
                self.composite, canonizers=lrp_canonizers(self.canonize), **rules, **bounds
            )
            relevance = _unit_relevance(work, units, composite, xb, yb, check=check)
            totals += relevance.abs().sum(0).cpu().numpy()
        return totals


def _unit_relevance(
    model: nn.Module,
    units: Units,
    composite: Composite,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    check: bool,
) -> torch.Tensor:
    """Signed relevance of each player for each example (examples x players, float64)."""
    modules = dict(model.named_modules())
    probes: dict[str, list[torch.Tensor]] = {p.module: [] for p in units.mask_points}

    def add_probe(name: str) -> Callable[..., tuple[Any, ...]]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            probe = torch.zeros_like(args[0], requires_grad=True)
            probes[name].append(probe)
            return (args[0] + probe, *args[1:])

        return hook

    reference = None
    if check:
        with torch.no_grad():
            reference = model(x)
    # registered before the composite's hooks, so the probe is added before the rule applies:
    # the (modified) gradient at the probe is then the relevance entering the module
    handles = [modules[n].register_forward_pre_hook(add_probe(n)) for n in probes]
    try:
        with composite.context(model), torch.enable_grad():
            out = model(x)
            if out.ndim != 2 or int(y.max()) >= out.shape[1] or int(y.min()) < 0:
                raise ValueError(
                    f"labels must index the model's outputs (shape {tuple(out.shape)}), "
                    f"got labels in [{int(y.min())}, {int(y.max())}]"
                )
            if reference is not None and not torch.allclose(
                out, reference, rtol=1e-3, atol=1e-3 * max(1.0, float(reference.abs().max()))
            ):
                raise RuntimeError(
                    "the canonized model computes different outputs than the model; "
                    "score with canonize=False"
                )
            logit = out.gather(1, y[:, None])
            start = torch.zeros_like(out).scatter(1, y[:, None], logit.detach())
            tensors = [t for n in probes for t in probes[n]]
            if not tensors:
                raise RuntimeError(f"the units of {units.layer!r} were not reached in forward")
            grads = torch.autograd.grad(out, tensors, grad_outputs=start, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    wide = torch.device("cpu") if x.device.type == "mps" else x.device  # MPS: no float64
    rel = torch.zeros(len(x), units.n_players, dtype=torch.float64, device=wide)
    grads_of = iter(grads)
    for point in units.mask_points:
        for _probe in probes[point.module]:
            grad = next(grads_of)
            if grad is not None:
                point.per_player(grad, units.n_players, keep=1, out=rel)
    return rel
