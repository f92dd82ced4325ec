"""Leave-one-out: each player's value is what the full coalition loses without it."""

from __future__ import annotations

from typing import Any

import numpy as np

from shapprune.estimators._budget import BudgetedGame
from shapprune.estimators.base import Estimator


def loo(game: BudgetedGame) -> tuple[np.ndarray, np.ndarray, dict]:
    """Leave-one-out: v(N) - v(N without i)."""
    n = game.n
    z = np.ones((n + 1, n), dtype=bool)
    z[np.arange(n), np.arange(n)] = False
    v = game.values(z)
    return v[n] - v[:n], np.zeros(n), {}


class LeaveOneOut(Estimator):
    """Leave-one-out values (n + 1 evaluations); as a criterion it is called ``loo``."""

    name = "loo"
    deterministic = True
    criterion = "loo"

    def min_budget(self, n: int, options: Any) -> int:
        return n + 1

    def __call__(self, game: BudgetedGame, rng: np.random.Generator, options: Any):
        return loo(game)
