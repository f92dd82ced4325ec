"""Exact Shapley values by enumeration, and the size-weighted formula it shares."""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import numpy as np

from shapprune.estimators._budget import BudgetedGame
from shapprune.estimators.base import Estimator

MAX_EXACT_PLAYERS = 20


def all_coalitions(n: int, sizes: list[int] | None = None) -> np.ndarray:
    """Boolean matrix of every coalition of n players (or only those of the given sizes)."""
    if sizes is None:
        codes = np.arange(2**n, dtype=np.int64)
        return ((codes[:, None] >> np.arange(n)) & 1).astype(bool)
    rows = [np.zeros((0, n), dtype=bool)]
    for s in sorted(set(sizes)):
        idx = np.array(list(combinations(range(n), s)), dtype=np.int64)
        z = np.zeros((len(idx), n), dtype=bool)
        if s > 0:
            np.put_along_axis(z, idx, True, axis=1)
        rows.append(z)
    return np.concatenate(rows)


def shapley_from_sizes(z: np.ndarray, v: np.ndarray, sizes: list[int]) -> np.ndarray:
    """The Shapley formula restricted to marginals v(S+i) - v(S) with |S| in ``sizes``.

    ``z``/``v`` must hold every coalition of size s and s+1 for each s in ``sizes``. The
    result averages, over those sizes, the mean marginal at each size; with all sizes
    0..n-1 it is the exact Shapley value.
    """
    n = z.shape[1]
    weights = np.zeros(n)
    weights[list(sizes)] = 1.0 / len(sizes)
    return semivalue_from_coalitions(z, v, weights)


def semivalue_from_coalitions(z: np.ndarray, v: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The semivalue sum over s of ``weights[s]`` x (mean marginal v(S+i) - v(S), |S| = s).

    ``weights`` (n,) weighs the sizes s = 0..n-1 of the coalitions S of the *other* players
    (1/n each: Shapley; binomial: Banzhaf). ``z``/``v`` must hold every coalition of size s
    and s+1 for each s of nonzero weight.
    """
    n = z.shape[1]
    t = z.sum(axis=1)
    phi = np.zeros(n)
    for s in np.flatnonzero(weights):
        with_i = t == s + 1  # coalitions S+i, credited to each member i
        without_i = t == s  # coalitions S, debited from each non-member i
        plus = z[with_i].T.astype(np.float64) @ v[with_i]
        minus = (~z[without_i]).T.astype(np.float64) @ v[without_i]
        phi += weights[s] * (plus - minus) / math.comb(n - 1, int(s))
    return phi


def exact(game: BudgetedGame) -> tuple[np.ndarray, np.ndarray, dict]:
    """Exact Shapley values from all 2^n coalitions."""
    n = game.n
    z = all_coalitions(n)
    v = np.concatenate([game.values(chunk) for chunk in np.array_split(z, max(1, len(z) // 4096))])
    values = shapley_from_sizes(z, v, list(range(n)))
    return values, np.zeros(n), {"coalitions": len(z)}


class Exact(Estimator):
    """Enumeration of all 2^n coalitions: no error, refused above ``MAX_EXACT_PLAYERS``."""

    name = "exact"
    deterministic = True

    def check(self, n: int, options: Any) -> None:
        if n > MAX_EXACT_PLAYERS:
            raise ValueError(
                f"exact Shapley needs 2^{n} evaluations for {n} players; it is refused above "
                f"{MAX_EXACT_PLAYERS} players: use method='permutation' or 'kernel'"
            )

    def min_budget(self, n: int, options: Any) -> int:
        return 2**n

    def __call__(self, game: BudgetedGame, rng: np.random.Generator, options: Any):
        return exact(game)
