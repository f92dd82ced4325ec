"""The Shapley family as a criterion: a unit's value in the layer's pruning game.

Every registered estimator E is the criterion ``shapley-E`` (or ``E.criterion``); its options
are the game's (:class:`GameOptions`) followed by E's declared options.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from shapprune.criteria.base import Criterion, _checked, estimate_scores
from shapprune.estimators.base import Estimate
from shapprune.estimators.catalog import estimator_options
from shapprune.estimators.registry import ESTIMATORS, estimate, get_estimator
from shapprune.game.pruning_game import METRICS, PruningGame
from shapprune.options import option

__all__ = ["GameOptions", "ShapleyCriterion", "shapley_options"]


@dataclass
class GameOptions:
    """Options of the pruning game every Shapley criterion plays."""

    budget: int | None = option(None, "coalition evaluations per layer (default: the method's)")
    metric: str = option("loss", f"the game's payoff: {'|'.join(METRICS)}")
    batch_size: int = option(512, "coalitions evaluated per forward pass")
    compensate: bool = option(
        True, "removed units leave their mean as a bias in their consumers (false: zero)"
    )

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; choose one of: {', '.join(METRICS)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def _split(self: Any) -> None:
    """``__post_init__`` of a combined declaration: each part checks its own fields."""
    values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    game = {f.name for f in dataclasses.fields(GameOptions)}
    GameOptions(**{k: v for k, v in values.items() if k in game})
    type(self).estimator_options(**{k: v for k, v in values.items() if k not in game})


@functools.cache
def _combined(method: str, estimator_decl: type) -> type:
    hints = typing.get_type_hints(estimator_decl)
    game = {f.name for f in dataclasses.fields(GameOptions)}
    game_hints = typing.get_type_hints(GameOptions)
    fields = [
        (f.name, game_hints[f.name], dataclasses.field(default=f.default, metadata=f.metadata))
        for f in dataclasses.fields(GameOptions)
    ]
    for f in dataclasses.fields(estimator_decl):
        if f.name in game:
            raise ValueError(f"estimator {method!r} declares {f.name!r}, an option of the game")
        fields.append((f.name, hints[f.name], f))
    return dataclasses.make_dataclass(
        f"Shapley_{method}_Options",
        fields,
        namespace={
            "__post_init__": _split,
            "__reduce__": _reduce,
            "estimator_options": estimator_decl,
            "method": method,
        },
    )


def _reduce(self: Any) -> tuple:
    """Pickle a combined declaration by how it was made (it is not a module attribute)."""
    values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    return _rebuild, (type(self).method, type(self).estimator_options, values)


def _rebuild(method: str, estimator_decl: type, values: dict[str, Any]) -> Any:
    return _combined(method, estimator_decl)(**values)


def shapley_options(method: str) -> type:
    """The declaration of criterion ``shapley-<method>``: the game's options, then the
    estimator's."""
    est = get_estimator(method)
    return _combined(method, est.Options)


def criterion_names() -> dict[str, str]:
    """``{criterion name: estimator name}`` for every registered estimator, read now."""
    return {est.criterion or f"shapley-{name}": name for name, est in ESTIMATORS.items()}


def with_cut(method: str, options: dict[str, Any], fraction: float | None) -> dict[str, Any]:
    """``options`` aimed at the cut of ``fraction`` of the units (the bandit's k, a
    semivalue's or a refinement's kept size) where the user left that open."""
    if fraction is None:
        return options
    return get_estimator(method).fill_cut(options, fraction)


class ShapleyCriterion(Criterion):
    """Values of the units in each layer's ``PruningGame``, by one of the estimators.

    ``budget`` caps the coalitions evaluated per layer; ``metric`` is the game's payoff;
    the estimator's own options follow. The last ``Estimate`` (stderr, n_evals, ...) is kept
    in ``last_estimate``, every layer's in ``estimates``.
    """

    def __init__(self, method: str = "permutation", *args: Any, **options: Any) -> None:
        get_estimator(method)  # an unknown method fails here, naming the known ones
        self.method = method
        self.name = next((c for c, e in criterion_names().items() if e == method), method)
        super().__init__(*args, **options)
        decl = get_estimator(method).Options
        own = {f.name for f in dataclasses.fields(decl)}
        self.estimator_options = {k: getattr(self.options, k) for k in own}
        self.last_estimate: Estimate | None = None
        self.estimates: dict[str, Estimate] = {}
        self.cut_fraction: float | None = None  # set by prune_model from its target
        self.raised: dict[str, int] = {}  # layer -> the budget it got, above the option

    def _layer_budget(self, layer: str, n_players: int, chosen: dict[str, Any]) -> int | None:
        """The budget for ``layer``: the option, raised to the estimator's least for the
        layer's size where it is below it (layers differ in size; one budget must serve
        all), with a note saying so."""
        budget = self.options.budget
        if budget is None:
            return None
        est = get_estimator(self.method)
        need = est.min_budget(n_players, estimator_options(self.method, chosen))
        if budget < need:
            self.raised[layer] = need
            return need
        return budget

    def uses_cut(self) -> bool:
        """Whether the estimator would aim at a pruning target's cut (``cut_fraction``)."""
        return get_estimator(self.method).uses_cut(self.estimator_options)

    @classmethod
    def declaration_for(cls, method: str = "permutation", **_fixed: Any) -> type:
        return shapley_options(method)

    def declaration(self) -> type:
        return shapley_options(self.method)

    def _score_layers(
        self, model: nn.Module, layers: list[str], x: torch.Tensor, y: torch.Tensor, seed: int
    ) -> dict[str, np.ndarray]:
        """Estimated value of each unit of each layer (each game copies the model)."""
        out = {}
        for layer in layers:
            opts = self.options
            game = PruningGame(
                model,
                layer,
                (x, y),
                metric=opts.metric,
                batch_size=opts.batch_size,
                compensate=opts.compensate,
            )
            chosen = with_cut(self.method, self.estimator_options, self.cut_fraction)
            budget = self._layer_budget(layer, game.n_players, chosen)
            est = estimate(game, self.method, budget=budget, seed=seed, **chosen)
            self.estimates[layer] = self.last_estimate = est
            out[layer] = _checked(estimate_scores(est), game.n_players, self.name)
        if self.raised:
            low, high = min(self.raised.values()), max(self.raised.values())
            span = f"{low}" if low == high else f"{low} to {high}"
            self.notes.append(
                f"budget {opts.budget} is below what {self.method} needs on "
                f"{len(self.raised)} of {len(layers)} layers: they got {span} evaluations "
                "(raise --budget to choose)"
            )
        return out
