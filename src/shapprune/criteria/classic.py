"""Criteria: one interface for every way to score the units of a layer.

Every criterion answers ``score(model, layers, data, seed=...)`` with one finite float64
score per unit of each layer (higher = more important), so criteria are interchangeable.
Activation and gradient criteria read each unit where the rest of the network sees it:
the inputs of the layer's consumers (the game's mask points), summed over the channels a
unit owns, over all mask points and over spatial positions or tokens. Gradients are of
L, the mean cross-entropy over all the data, so per-example sums of ``a * dL/da`` add up
over the data to a first-order estimate of the change of L. The model is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shapprune.criteria.activations import ActivationSums, activation_sums
from shapprune.criteria.base import Criterion
from shapprune.devices import as_float64
from shapprune.game.attention import in_projection, separate_projections
from shapprune.game.units import Units
from shapprune.options import option


class RandomCriterion(Criterion):
    """Uniform random scores from ``numpy.random.default_rng(seed)``."""

    name = "random"

    def _score_layer(self, model, units, x, y, seed) -> np.ndarray:
        return np.random.default_rng(seed).random(units.n_players)


# --- weights ------------------------------------------------------------------------------


@dataclass
class WeightNormOptions:
    p: int = option(1, "order of the norm: 1 or 2")

    def __post_init__(self) -> None:
        if self.p not in (1, 2):
            raise ValueError(f"weight norm order must be 1 or 2, got {self.p}")


class WeightNormCriterion(Criterion):
    """Norm of each unit's outgoing-filter weights in its producer(s) (Li et al. 2017).

    Channels and neurons: row ``i`` of every coupled producer's weight, pooled over the
    producers. Heads: the head's q, k and v rows of the input projection.
    """

    name = "weight-l1"
    Options = WeightNormOptions

    def __init__(self, *args, **options) -> None:
        super().__init__(*args, **options)
        self.name = f"weight-l{self.p}"

    def _score_layer(self, model, units, x, y, seed) -> np.ndarray:
        rows = _unit_rows(model, units)
        if self.p == 1:
            return sum(r.abs().sum(1) for r in rows).cpu().numpy()
        return torch.sqrt(sum((r**2).sum(1) for r in rows)).cpu().numpy()


def _unit_rows(model: nn.Module, units: Units) -> list[torch.Tensor]:
    """Per producer, an (n_players, k) float64 table of each unit's outgoing weights."""
    modules = dict(model.named_modules())
    if units.kind == "heads":
        return [_head_rows(modules[units.layer], units.n_players)]
    rows = []
    for name in units.coupled:
        weight = as_float64(modules[name].weight.detach())
        if weight.shape[0] != units.n_players:
            raise ValueError(
                f"producer {name!r} has {weight.shape[0]} outputs for {units.n_players} "
                f"units of {units.layer!r}; its mapping to the units is not one-to-one"
            )
        rows.append(weight.reshape(units.n_players, -1))
    return rows


def _head_rows(attn: nn.Module, n_heads: int) -> torch.Tensor:
    """(n_heads, 3 * head_dim * in_dim): each head's q, k and v projection rows."""
    if isinstance(getattr(attn, "qkv", None), nn.Linear):
        qkv = as_float64(attn.qkv.weight.detach())
        parts = qkv.chunk(3, dim=0)
    elif isinstance(attn, nn.MultiheadAttention):
        parts = [as_float64(w.detach()) for w in in_projection(attn)[0]]
    elif separate_projections(attn) is not None:  # Hugging Face's q/k/v
        parts = [as_float64(p.weight.detach()) for p in separate_projections(attn)]
    else:
        raise ValueError(
            f"cannot find the q/k/v weights of {type(attn).__name__}: weight norms of heads "
            "need a fused 'qkv' Linear, separate q/k/v ones or an nn.MultiheadAttention"
        )
    per_head = [p.reshape(n_heads, -1) for p in parts]
    return torch.cat(per_head, dim=1)


class BNScaleCriterion(Criterion):
    """|gamma| of the BatchNorm reading each coupled producer's output, summed (network
    slimming, Liu et al. 2017)."""

    name = "bn-scale"

    def _score_layer(self, model, units, x, y, seed) -> np.ndarray:
        norms = _following_norms(model, units.coupled, x[:2])
        total = torch.zeros(units.n_players, dtype=torch.float64, device="cpu")
        for producer in units.coupled:
            bn = norms.get(producer)
            if bn is None or bn.weight is None or bn.num_features != units.n_players:
                raise ValueError(
                    f"bn-scale needs a BatchNorm after {producer!r} (an affine one, with "
                    f"{units.n_players} features); {units.layer!r} has none there: choose "
                    "another criterion"
                )
            total += as_float64(bn.weight.detach()).abs().cpu()
        return total.numpy()


def _following_norms(
    model: nn.Module, producers: tuple[str, ...], x: torch.Tensor
) -> dict[str, nn.Module]:
    """The BatchNorm whose input is each producer's output, found in one forward pass."""
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    found: dict[str, nn.Module] = {}

    def keep(name: str) -> Callable:
        return lambda _m, _args, out: outputs.__setitem__(name, out)

    def match(bn: nn.Module) -> Callable:
        def hook(_m, args) -> None:
            for name, out in outputs.items():
                if args[0] is out:
                    found.setdefault(name, bn)

        return hook

    handles = [modules[p].register_forward_hook(keep(p)) for p in producers]
    norms = [m for m in modules.values() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    handles += [bn.register_forward_pre_hook(match(bn)) for bn in norms]
    try:
        with torch.no_grad():
            model(x.clone())
    finally:
        for h in handles:
            h.remove()
    return found


# --- activations and gradients at the consumers' inputs -----------------------------------


@dataclass
class ActivationOptions:
    batch_size: int = option(256, "examples per forward (and backward) pass")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class TaylorOptions:
    signed: bool = option(False, "score the signed loss change rather than its magnitude")
    batch_size: int = option(256, "examples per forward and backward pass")

    __post_init__ = ActivationOptions.__post_init__


class _ActivationCriterion(Criterion):
    """A criterion computed from ``ActivationSums`` over the data, in batches of ``batch_size``."""

    needs_grad = True
    Options = ActivationOptions

    def _score_layer(self, model, units, x, y, seed) -> np.ndarray:
        sums = activation_sums(model, units, x, y, self.batch_size, self.needs_grad)
        return self._from_sums(sums)

    def _from_sums(self, sums: ActivationSums) -> np.ndarray:
        raise NotImplementedError


class TaylorCriterion(_ActivationCriterion):
    """First-order Taylor estimate of the loss change when a unit is removed (Molchanov).

    ``-sum(a * dL/da)`` over the data is the estimated increase of the mean loss when the
    unit's activations are set to zero: ``signed=True`` scores that, else its absolute value.
    """

    name = "taylor"
    Options = TaylorOptions

    def __init__(self, *args, **options) -> None:
        super().__init__(*args, **options)
        self.name = "taylor-signed" if self.signed else "taylor"

    def _from_sums(self, sums: ActivationSums) -> np.ndarray:
        return -sums.ag if self.signed else np.abs(sums.ag)


class SensitivityCriterion(_ActivationCriterion):
    """Mean over examples of the summed |d loss / d a| (gradient sensitivity)."""

    name = "sensitivity"

    def _from_sums(self, sums: ActivationSums) -> np.ndarray:
        return sums.abs_g


class APoZCriterion(_ActivationCriterion):
    """1 - the average fraction of zeros in the unit's activation (Hu et al. 2016)."""

    name = "apoz"
    needs_grad = False

    def _from_sums(self, sums: ActivationSums) -> np.ndarray:
        return 1.0 - sums.zeros / np.maximum(sums.entries, 1)
