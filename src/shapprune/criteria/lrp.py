"""LRP relevance as a pruning criterion (Hatefi et al. 2024), computed with zennit.

A unit's relevance is the LRP relevance that flows through it: the relevance of the tensors
where the unit enters its consumers (the mask points of :func:`shapprune.units.find_units`),
summed over the unit's channels and positions, per example; the score is its absolute value
summed over the reference examples. LRP starts from the true class's logit (relevance of the
output = that logit), so that relevance is conserved down to the layer, up to biases.

Rules come from a zennit composite (:data:`COMPOSITES`), or one rule per depth group from a
:class:`~shapprune.criteria.lrp_spec.CompositeSpec` (what ``tune-lrp`` optimises). Canonizers
make the network fit for LRP without changing its outputs: BatchNorm merged into the
convolution whose output it reads (:mod:`~shapprune.criteria.lrp_batchnorm`; a BatchNorm
that reads anything else passes relevance unchanged), residual additions made explicit
modules (relevance split in proportion to the summands; in other blocks the additions
themselves, :mod:`~shapprune.criteria.lrp_sums`), and attention computed by
:func:`~shapprune.criteria.lrp_rules.attention_lrp`, whose rule the spec chooses (by
default the softmax weights are held constant and relevance reaches the values along them).
LayerNorm passes relevance through unchanged, activations (ReLU, GELU) too; other
operations without a rule (max-pooling, reshapes, matmuls) pass it by their plain gradient.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock as TorchvisionBasicBlock
from torchvision.models.vision_transformer import EncoderBlock
from zennit.canonizers import AttributeCanonizer, Canonizer
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
from shapprune.criteria.lrp_batchnorm import Merge, MergeBatchNorms, batch_norm_merges
from shapprune.criteria.lrp_options import COMPOSITES, LRPOptions, is_spec_file
from shapprune.criteria.lrp_options import check_composite as _check_composite
from shapprune.criteria.lrp_rules import attention_lrp, spec_composite
from shapprune.criteria.lrp_spec import CompositeSpec, load_spec
from shapprune.criteria.lrp_sums import ResidualSums
from shapprune.criteria.lrp_timm import timm_canonizers
from shapprune.devices import device_of, to_device
from shapprune.game.attention import in_projection, mha_call
from shapprune.game.pruning_game import activation_bytes
from shapprune.game.tracing import explicit_mha
from shapprune.game.units import Units, build_graph, find_units, input_batch_dims
from shapprune.zoo import models

__all__ = [
    "COMPOSITES",
    "LRPCriterion",
    "batch_norm_merges",
    "build_composite",
    "canonized",
    "lrp_canonizers",
    "make_composite",
    "relevance",
]


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
    out = attention_lrp(q, k, v, self.canonizer_attention, self.scale)
    return self.proj(out.transpose(1, 2).reshape(B, N, -1))


def _zoo_attention(rule: str) -> Callable[[str, nn.Module], dict[str, Any] | None]:
    def attributes(name: str, module: nn.Module) -> dict[str, Any] | None:
        if isinstance(module, models.Attention):
            return {"forward": _zoo_attention_forward.__get__(module), "canonizer_attention": rule}
        return None

    return attributes


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
    rule = self.canonizer_attention

    def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attention_lrp(q, k, v, rule)

    return mha_call(self, projections, query, key, value, *args, core=core, **kwargs)


def _linear_sharing(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A Linear module computing ``F.linear(x, weight, bias)`` (sharing their storage)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return linear


def _mha_lrp(rule: str) -> Callable[[str, nn.Module], dict[str, Any] | None]:
    def attributes(name: str, module: nn.Module) -> dict[str, Any] | None:
        if not isinstance(module, nn.MultiheadAttention):
            return None
        weights, biases = in_projection(module)
        out: dict[str, Any] = {"forward": _mha_forward.__get__(module)}
        out["canonizer_attention"] = rule
        for key, w, bias in zip("qkv", weights, biases, strict=True):
            out["canonizer_" + key] = _linear_sharing(w, bias)
        return out

    return attributes


def _mha_plain(name: str, module: nn.Module) -> dict[str, Any] | None:
    if isinstance(module, nn.MultiheadAttention):
        return {"forward": lambda *args, **kwargs: explicit_mha(module, *args, **kwargs)}
    return None


def lrp_canonizers(
    canonize: bool = True, attention: str = "weights", merges: Sequence[Merge] = ()
) -> list[Canonizer]:
    """Zennit canonizers that fit a model for LRP without changing its outputs.

    With ``canonize``: the BatchNorms of ``merges`` merged into the layers whose outputs
    they read (:func:`batch_norm_merges`; the others pass relevance), residual additions
    split in proportion to their summands (:class:`ResidualSums`; those of ResNet blocks (zoo
    and torchvision) and transformer blocks (zoo, torchvision and timm ViT) as ``Sum``
    modules), attention computed by :func:`attention_lrp` with the ``attention`` rule
    (default: relevance split by the attention weights, softmax constant). Always:
    ``nn.MultiheadAttention`` written out so that its heads enter ``out_proj`` as a module.
    """
    if not canonize:
        return [AttributeCanonizer(_mha_plain)]
    return [
        MergeBatchNorms(merges),
        ResidualSums(),
        AttributeCanonizer(_basic_block),
        ResNetBottleneckCanonizer(),
        AttributeCanonizer(_residual_block),
        AttributeCanonizer(_zoo_attention(attention)),
        AttributeCanonizer(_mha_lrp(attention)),
        *timm_canonizers(attention),
    ]


@contextmanager
def canonized(
    model: nn.Module, example_inputs: torch.Tensor, canonize: bool = True
) -> Iterator[nn.Module]:
    """Apply :func:`lrp_canonizers` to ``model`` (in eval mode) in place, and revert them on
    exit; its BatchNorms merged as its data flow on ``example_inputs`` allows."""
    merges = batch_norm_merges(model, example_inputs) if canonize else []
    applied: list[Canonizer] = []
    try:
        for canonizer in lrp_canonizers(canonize, merges=merges):
            applied += canonizer.apply(model)
        yield model
    finally:
        for canonizer in reversed(applied):
            canonizer.remove()


# --- the criterion -----------------------------------------------------------------------------


def make_composite(
    composite: str | CompositeSpec,
    model: nn.Module,
    *,
    canonize: bool = True,
    merges: Sequence[Merge] = (),
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    low: float = -3.0,
    high: float = 3.0,
) -> Composite:
    """A fresh zennit composite (with its canonizers) for ``model``: by name
    (:data:`COMPOSITES`), from a :class:`CompositeSpec`, or from a spec's JSON file.

    ``merges``: the BatchNorms to merge into their layers (:func:`batch_norm_merges`, found
    once per model); the others pass relevance."""
    if isinstance(composite, str) and is_spec_file(composite):
        composite = load_spec(composite)
    if isinstance(composite, CompositeSpec):
        canonizers = lrp_canonizers(canonize, composite.attention, merges)
        return spec_composite(composite, model, canonizers)
    rules = {"epsilon": epsilon, "gamma": gamma, "low": low, "high": high}
    return build_composite(composite, canonizers=lrp_canonizers(canonize, merges=merges), **rules)


def relevance(
    model: nn.Module,
    units: Mapping[str, Units],
    x: torch.Tensor,
    y: torch.Tensor,
    composite: Callable[[], Composite],
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """Signed LRP relevance of every unit of every layer, per example ({layer: N x units},
    float64, on the CPU), all layers in one backward pass per batch.

    ``model`` must be in eval mode with parameters not requiring gradients, ``units``
    found on it; ``composite()`` gives a fresh composite per batch (zennit's hooks hold on
    to tensors). LRP starts from the true class's logit.
    """
    parts: dict[str, list[torch.Tensor]] = {layer: [] for layer in units}
    points = [p.module for u in units.values() for p in u.mask_points]
    # the examples' dimension where units enter: 1 inside a sequence-first transformer
    batch_dims = input_batch_dims(model, points, x, lambda: composite().context(model))
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        yb = y[start : start + batch_size].long()
        found = _unit_relevance(
            model, list(units.values()), composite(), xb, yb, start == 0, batch_dims
        )
        for layer, rel in zip(units, found, strict=True):
            parts[layer].append(rel.cpu())
    return {layer: torch.cat(rel) for layer, rel in parts.items()}


class LRPCriterion(Criterion):
    """Units scored by their LRP relevance for the true class (Hatefi et al. 2024).

    ``composite`` names the LRP rules (:data:`COMPOSITES`) or a composite JSON file (from
    ``tune-lrp``); ``batch_size`` bounds memory; ``canonize`` fits the model for LRP first
    (see :func:`lrp_canonizers`); ``epsilon`` and ``gamma`` are the parameters of the
    epsilon and gamma rules of the named composites.
    """

    name = "lrp"
    Options = LRPOptions

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        if is_spec_file(self.composite):  # a global plan compares layers as it was tuned to
            tuned = load_spec(self.composite).info.get("normalisation")
            if tuned is not None:
                self.normalisation = tuned

    def _batch(self, model: nn.Module, x: torch.Tensor) -> int:
        """Examples per LRP pass: ``batch_size``, fewer where their activations would
        exceed ``memory_mb`` (a ResNet-50 at 224 px: about 6 in 2 GB, not 64 in 13 GB)."""
        per = LRP_MEMORY_FACTOR * activation_bytes(model, x[:1])
        return max(1, min(self.batch_size, int(self.memory_mb * 2**20 // per)))

    def _score_layers(
        self, model: nn.Module, layers: list[str], x: torch.Tensor, y: torch.Tensor, seed: int
    ) -> dict[str, np.ndarray]:
        """One score per unit of each layer (higher = more relevant): |R| of the unit, summed
        over the reference examples; LRP started from the true class's output logit.

        The model is scored in eval mode on a copy, every layer in the same backward pass;
        ``seed`` is unused (LRP is deterministic).
        """
        work = copy.deepcopy(model).float().eval().requires_grad_(True)
        # moved to the model's device once; clones are not inference tensors
        x, y = to_device(x, work).clone(), y.to(device_of(work)).clone()
        graph = build_graph(work, x[:2])  # needs trainable parameters; built once
        units = {layer: find_units(work, layer, x[:2], graph) for layer in layers}
        merges = batch_norm_merges(work, graph=graph) if self.canonize else []
        work.requires_grad_(False)
        spec = load_spec(self.composite) if is_spec_file(self.composite) else self.composite
        options = {"epsilon": self.epsilon, "gamma": self.gamma, "merges": merges}
        bounds = {"low": float(x.min()), "high": float(x.max())}

        def composite() -> Composite:
            return make_composite(spec, model, canonize=self.canonize, **options, **bounds)

        found = relevance(work, units, x, y, composite, self._batch(work, x))
        return {layer: rel.abs().sum(0).numpy() for layer, rel in found.items()}


CHECKED = 4
"""Examples on which the canonized model's outputs are compared with the model's."""

LRP_MEMORY_FACTOR = 3
"""Memory of an LRP pass per byte of the forward pass's outputs: the outputs, their
modified gradients and the rules' own copies (ResNet-50 at 224 px: 13 GB for 60 examples,
about twice its 105 MB per example of outputs; 3 leaves room)."""


def _unit_relevance(
    model: nn.Module,
    units: list[Units],
    composite: Composite,
    x: torch.Tensor,
    y: torch.Tensor,
    check: bool,
    batch_dims: Mapping[str, int],
) -> list[torch.Tensor]:
    """Signed relevance of each player of each ``units`` for each example (examples x
    players, float64); ``batch_dims``: the examples' dimension of each mask point's input."""
    modules = dict(model.named_modules())
    probes: dict[str, list[torch.Tensor]] = {p.module: [] for u in units for p in u.mask_points}

    def add_probe(name: str) -> Callable[..., tuple[Any, ...]]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            probe = torch.zeros_like(args[0], requires_grad=True)
            probes[name].append(probe)
            return (args[0] + probe, *args[1:])

        return hook

    reference = None
    if check:  # the canonized model against the model, on a few examples (a pass is dear)
        with torch.no_grad():
            reference = model(x[:CHECKED])
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
            scale = max(1.0, float(reference.abs().max())) if reference is not None else 1.0
            if reference is not None and not torch.allclose(
                out[:CHECKED], reference, rtol=1e-3, atol=1e-3 * scale
            ):
                raise RuntimeError(
                    "the canonized model computes different outputs than the model; "
                    "score with canonize=False"
                )
            logit = out.gather(1, y[:, None])
            start = torch.zeros_like(out).scatter(1, y[:, None], logit.detach())
            tensors = [t for n in probes for t in probes[n]]
            missing = [u.layer for u in units if not any(probes[p.module] for p in u.mask_points)]
            if missing:
                raise RuntimeError(f"the units of {missing[0]!r} were not reached in forward")
            grads = torch.autograd.grad(out, tensors, grad_outputs=start, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    by_module: dict[str, list[torch.Tensor | None]] = {}
    grads_of = iter(grads)
    for name, made in probes.items():
        by_module[name] = [next(grads_of) for _ in made]
    wide = torch.device("cpu") if x.device.type == "mps" else x.device  # MPS: no float64
    found = []
    for u in units:
        rel = torch.zeros(len(x), u.n_players, dtype=torch.float64, device=wide)
        for point in u.mask_points:
            for grad in by_module[point.module]:
                if grad is not None:  # examples first (a linear input's channels are last)
                    grad = grad.movedim(batch_dims.get(point.module, 0), 0)
                    point.per_player(grad, u.n_players, keep=1, out=rel)
        found.append(rel)
    return found
