"""Partial Shapley values (Adamczewski et al.) and leave-one-out."""

from __future__ import annotations

import math

import numpy as np

from shapprune.estimators._budget import BudgetedGame
from shapprune.estimators.exact import all_coalitions, shapley_from_sizes


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


def loo(game: BudgetedGame) -> tuple[np.ndarray, np.ndarray, dict]:
    """Leave-one-out: v(N) - v(N without i)."""
    n = game.n
    z = np.ones((n + 1, n), dtype=bool)
    z[np.arange(n), np.arange(n)] = False
    v = game.values(z)
    return v[n] - v[:n], np.zeros(n), {}
