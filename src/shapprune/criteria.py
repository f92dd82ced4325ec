"""Criteria: one interface for every way to score the units of a layer.

Every criterion answers ``score(model, layer, data, seed=...)`` with one finite float64
score per unit (higher = more important), so criteria are interchangeable in a loop.
Activation and gradient criteria read each unit where the rest of the network sees it:
the inputs of the layer's consumers (the game's mask points), summed over the channels a
unit owns, over all mask points and over spatial positions or tokens. Gradients are of
L, the mean cross-entropy over all the data, so per-example sums of ``a * dL/da`` add up
over the data to a first-order estimate of the change of L. The model is left as it was.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from .activations import ActivationSums, activation_sums
from .estimators import METHODS, Estimate, estimate
from .game import METRICS, PruningGame, as_data
from .units import Units, find_units

__all__ = [
    "CRITERIA",
    "APoZCriterion",
    "BNScaleCriterion",
    "Criterion",
    "RandomCriterion",
    "SensitivityCriterion",
    "ShapleyCriterion",
    "TaylorCriterion",
    "WeightNormCriterion",
    "get_criterion",
    "score_layers",
]

Data = tuple[torch.Tensor, torch.Tensor]


class Criterion:
    """Scores the units of one layer; subclasses implement ``_score``."""

    name: str = "criterion"

    def score(self, model: nn.Module, layer: str, data: Data, *, seed: int = 0) -> np.ndarray:
        """One finite score per unit of ``layer`` (higher = more important), as float64.

        Deterministic given ``seed``; ``model`` is left unchanged.
        """
        x, y = as_data(data)
        with _untouched(model), torch.inference_mode(False), torch.enable_grad():
            model.eval()
            units = find_units(model, layer, x[:2].clone())  # tracing needs autograd
            scores = self._score(model, units, x, y, seed)
        return _checked(scores, units.n_players, self.name)

    def _score(
        self, model: nn.Module, units: Units, x: torch.Tensor, y: torch.Tensor, seed: int
    ) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _checked(scores, n: int, name: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (n,):
        raise RuntimeError(f"criterion {name!r} gave shape {scores.shape}, expected ({n},)")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"criterion {name!r} gave non-finite scores (is the model finite?)")
    return scores


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Restore every module's train/eval flag and every parameter's requires_grad."""
    training = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for m, flag in training:
            m.training = flag
        for p, flag in grads:
            p.requires_grad_(flag)


class RandomCriterion(Criterion):
    """Uniform random scores from ``numpy.random.default_rng(seed)``."""

    name = "random"

    def _score(self, model, units, x, y, seed) -> np.ndarray:
        return np.random.default_rng(seed).random(units.n_players)


# --- weights ------------------------------------------------------------------------------


class WeightNormCriterion(Criterion):
    """Norm of each unit's outgoing-filter weights in its producer(s) (Li et al. 2017).

    Channels and neurons: row ``i`` of every coupled producer's weight, pooled over the
    producers. Heads: the head's q, k and v rows of the input projection.
    """

    def __init__(self, p: int = 1) -> None:
        if p not in (1, 2):
            raise ValueError(f"weight norm order must be 1 or 2, got {p}")
        self.p = p
        self.name = f"weight-l{p}"

    def _score(self, model, units, x, y, seed) -> np.ndarray:
        rows = _unit_rows(model, units)
        if self.p == 1:
            return sum(r.abs().sum(1) for r in rows).numpy()
        return torch.sqrt(sum((r**2).sum(1) for r in rows)).numpy()


def _unit_rows(model: nn.Module, units: Units) -> list[torch.Tensor]:
    """Per producer, an (n_players, k) float64 table of each unit's outgoing weights."""
    modules = dict(model.named_modules())
    if units.kind == "heads":
        return [_head_rows(modules[units.layer], units.n_players)]
    rows = []
    for name in units.coupled:
        weight = modules[name].weight.detach().double()
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
        qkv = attn.qkv.weight.detach().double()
        parts = qkv.chunk(3, dim=0)
    elif isinstance(attn, nn.MultiheadAttention) and attn.in_proj_weight is not None:
        parts = attn.in_proj_weight.detach().double().chunk(3, dim=0)
    elif isinstance(attn, nn.MultiheadAttention):
        parts = [attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight]
        parts = [p.detach().double() for p in parts]
    else:
        raise ValueError(
            f"cannot find the q/k/v weights of {type(attn).__name__}: weight norms of heads "
            "need a fused 'qkv' Linear or an nn.MultiheadAttention"
        )
    per_head = [p.reshape(n_heads, -1) for p in parts]
    return torch.cat(per_head, dim=1)


class BNScaleCriterion(Criterion):
    """|gamma| of the BatchNorm reading each coupled producer's output, summed (network
    slimming, Liu et al. 2017)."""

    name = "bn-scale"

    def _score(self, model, units, x, y, seed) -> np.ndarray:
        norms = _following_norms(model, units.coupled, x[:2])
        total = torch.zeros(units.n_players, dtype=torch.float64)
        for producer in units.coupled:
            bn = norms.get(producer)
            if bn is None or bn.weight is None or bn.num_features != units.n_players:
                raise ValueError(
                    f"bn-scale needs a BatchNorm after {producer!r} (an affine one, with "
                    f"{units.n_players} features); {units.layer!r} has none there: choose "
                    "another criterion"
                )
            total += bn.weight.detach().double().abs()
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


class _ActivationCriterion(Criterion):
    """A criterion computed from ``ActivationSums`` over the data, in batches of ``batch_size``."""

    needs_grad = True

    def __init__(self, batch_size: int = 256) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    def _score(self, model, units, x, y, seed) -> np.ndarray:
        sums = activation_sums(model, units, x, y, self.batch_size, self.needs_grad)
        return self._from_sums(sums)

    def _from_sums(self, sums: ActivationSums) -> np.ndarray:
        raise NotImplementedError


class TaylorCriterion(_ActivationCriterion):
    """First-order Taylor estimate of the loss change when a unit is removed (Molchanov).

    ``-sum(a * dL/da)`` over the data is the estimated increase of the mean loss when the
    unit's activations are set to zero: ``signed=True`` scores that, else its absolute value.
    """

    def __init__(self, signed: bool = False, batch_size: int = 256) -> None:
        super().__init__(batch_size)
        self.signed = signed
        self.name = "taylor-signed" if signed else "taylor"

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


# --- the Shapley family -----------------------------------------------------------------------

_ESTIMATOR_OPTIONS = tuple(
    name
    for name, p in inspect.signature(estimate).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
)


class ShapleyCriterion(Criterion):
    """Shapley values of the units in ``PruningGame``, by one of the estimators.

    ``budget`` caps the coalitions evaluated; ``metric`` is the game's payoff; further
    options (antithetic, truncation, patience, k, progress) go to ``estimate``. The last
    ``Estimate`` (stderr, n_evals, ...) is kept in ``last_estimate``.
    """

    def __init__(
        self,
        method: str = "permutation",
        budget: int | None = None,
        metric: str = "loss",
        batch_size: int = 512,
        **estimator_options,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
        unknown = sorted(set(estimator_options) - set(_ESTIMATOR_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown estimator options {unknown}; known: {', '.join(_ESTIMATOR_OPTIONS)}"
            )
        self.method, self.budget, self.metric = method, budget, metric
        self.batch_size = batch_size
        self.options = estimator_options
        self.name = "loo" if method == "loo" else f"shapley-{method}"
        self.last_estimate: Estimate | None = None

    def score(self, model: nn.Module, layer: str, data: Data, *, seed: int = 0) -> np.ndarray:
        """Estimated Shapley value of each unit of ``layer`` (the game copies the model)."""
        game = PruningGame(model, layer, data, metric=self.metric, batch_size=self.batch_size)
        self.last_estimate = estimate(
            game, self.method, budget=self.budget, seed=seed, **self.options
        )
        return _checked(self.last_estimate.values, game.n_players, self.name)


# --- the registry -----------------------------------------------------------------------------


def _lrp(**options) -> Criterion:
    """LRP relevance (zennit), imported only when asked for."""
    from .lrp import LRPCriterion

    return LRPCriterion(**options)


CRITERIA: dict[str, Callable[..., Criterion]] = {
    "random": RandomCriterion,
    "weight-l1": functools.partial(WeightNormCriterion, 1),
    "weight-l2": functools.partial(WeightNormCriterion, 2),
    "taylor": functools.partial(TaylorCriterion, False),
    "taylor-signed": functools.partial(TaylorCriterion, True),
    "sensitivity": SensitivityCriterion,
    "apoz": APoZCriterion,
    "bn-scale": BNScaleCriterion,
    "shapley-exact": functools.partial(ShapleyCriterion, "exact"),
    "shapley-permutation": functools.partial(ShapleyCriterion, "permutation"),
    "shapley-kernel": functools.partial(ShapleyCriterion, "kernel"),
    "shapley-partial": functools.partial(ShapleyCriterion, "partial"),
    "loo": functools.partial(ShapleyCriterion, "loo"),
    "lrp": _lrp,
}


def get_criterion(name: str, **options) -> Criterion:
    """The criterion registered as ``name``, built with ``options``."""
    if name not in CRITERIA:
        raise ValueError(
            f"unknown criterion {name!r}; known criteria: {', '.join(sorted(CRITERIA))}"
        )
    return CRITERIA[name](**options)


def score_layers(
    criterion: Criterion | str,
    model: nn.Module,
    layers: list[str],
    data: Data,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Scores of the units of each layer in ``layers``, by one criterion (or its name)."""
    if isinstance(criterion, str):
        criterion = get_criterion(criterion)
    return {layer: criterion.score(model, layer, data, seed=seed) for layer in layers}
