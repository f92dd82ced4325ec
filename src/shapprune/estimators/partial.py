"""Partial Shapley values (Adamczewski et al.)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shapprune.estimators._budget import BudgetedGame
from shapprune.estimators.base import Estimator
from shapprune.estimators.exact import all_coalitions, shapley_from_sizes
from shapprune.options import option


def partial_sizes(n: int, k: int) -> list[int]:
    """Sizes |S| of the coalitions S whose marginals the partial value of depth k uses."""
    return sorted(set(range(min(k, n))) | set(range(max(n - k, 0), n)))


def partial_cost(n: int, k: int) -> int:
    """Coalitions evaluated by the partial value of depth k: every size <= k and >= n - k."""
    sizes = set(range(min(k, n) + 1)) | set(range(max(n - k, 0), n + 1))
    return sum(math.comb(n, s) for s in sizes)


def deepest_affordable(n: int, budget: int) -> int:
    """The largest depth k whose partial value fits the budget (0 if none does)."""
    k = 0
    while k < (n + 1) // 2 and partial_cost(n, k + 1) <= budget:
        k += 1
    return k


def partial(game: BudgetedGame, k: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Average marginal over coalition sizes < k and >= n - k, weighted as in Shapley."""
    n = game.n
    sizes = partial_sizes(n, k)
    coalition_sizes = sorted({s for s in sizes} | {s + 1 for s in sizes})
    z = all_coalitions(n, coalition_sizes)
    v = game.values(z)
    return shapley_from_sizes(z, v, sizes), np.zeros(n), {"k": k, "sizes": sizes}


@dataclass
class PartialOptions:
    """Options of the partial Shapley value."""

    k: int | None = option(
        None, "depth (coalition sizes < k and >= n - k); default: deepest that fits"
    )

    def __post_init__(self) -> None:
        if self.k is not None and self.k < 1:
            raise ValueError(f"partial needs depth k >= 1, got k={self.k}")


class Partial(Estimator):
    """The Shapley average restricted to the smallest and largest coalitions."""

    name = "partial"
    Options = PartialOptions
    deterministic = True

    def min_budget(self, n: int, options: PartialOptions) -> int:
        return partial_cost(n, options.k if options.k is not None else 1)

    def default_budget(self, n: int, options: PartialOptions) -> int:
        return partial_cost(n, 1)

    def __call__(self, game: BudgetedGame, rng: np.random.Generator, options: PartialOptions):
        k = options.k if options.k is not None else deepest_affordable(game.n, game.budget)
        return partial(game, k)
