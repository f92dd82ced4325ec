"""A toy estimator and a toy criterion, defined and registered from test code alone."""

from dataclasses import dataclass

import numpy as np

from shapprune import Answer, Criterion, Estimator, option, register_criterion, register_estimator
from shapprune.estimators.loo import loo


@dataclass
class ScaledOptions:
    scale: float = option(1.0, "multiplies the leave-one-out values")

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")


class ScaledLoo(Estimator):
    """Leave-one-out values times ``scale``: a known transform of a built-in estimator."""

    name = "toyloo"
    Options = ScaledOptions
    deterministic = True

    def min_budget(self, n, options):
        return n + 1

    def __call__(self, game, rng, options):
        values, stderr, _ = loo(game)
        return Answer(values * options.scale, stderr, {"scale": options.scale})


@dataclass
class IndexOptions:
    factor: float = option(1.0, "multiplies each unit's index")


class IndexCriterion(Criterion):
    """Unit i scores ``factor * i``: the first units are the least important."""

    Options = IndexOptions

    def _score_layer(self, model, units, x, y, seed):
        return np.arange(units.n_players) * self.factor


def register_toys() -> None:
    register_estimator(ScaledLoo)
    register_criterion("toy-index", IndexCriterion)
