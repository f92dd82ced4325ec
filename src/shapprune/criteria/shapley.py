"""The Shapley family as a criterion: a unit's value in the layer's pruning game."""

from __future__ import annotations

import inspect

import numpy as np
from torch import nn

from shapprune.criteria.base import Criterion, Data, _checked
from shapprune.estimators import METHODS, Estimate, estimate
from shapprune.game.pruning_game import METRICS, PruningGame

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
