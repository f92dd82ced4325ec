"""Shapley-value estimators: one verb, ``estimate(game, method, budget, seed)``.

Every method reads the game through the same budgeted view, so ``n_evals`` is the
number of coalitions really evaluated and never exceeds ``budget``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from shapprune.estimators import kernel as _kernel
from shapprune.estimators import permutation as _permutation
from shapprune.estimators._budget import BudgetedGame, BudgetExceeded, Game
from shapprune.estimators.exact import MAX_EXACT_PLAYERS, exact
from shapprune.estimators.partial import deepest_affordable, loo, partial, partial_cost

METHODS = ("exact", "permutation", "kernel", "partial", "loo")

__all__ = ["METHODS", "BudgetExceeded", "Estimate", "Game", "default_budget", "estimate"]


@dataclass
class Estimate:
    """Estimated values of the players, with their standard errors and the cost paid."""

    values: np.ndarray
    stderr: np.ndarray
    n_evals: int
    seconds: float
    method: str
    budget: int
    seed: int
    info: dict = field(default_factory=dict)

    @property
    def ranking(self) -> np.ndarray:
        """Player indices from least to most valuable (ties broken by index)."""
        return np.argsort(self.values, kind="stable")

    def to_dict(self) -> dict:
        """A JSON-ready record."""
        out = asdict(self)
        out["values"] = self.values.tolist()
        out["stderr"] = self.stderr.tolist()
        out["ranking"] = self.ranking.tolist()
        return out


def default_budget(method: str, n: int) -> int:
    """The budget used when none is given: enough for a usable answer."""
    if method == "exact":
        return 2**n
    if method == "loo":
        return n + 1
    if method == "partial":
        return partial_cost(n, 1)
    return max(100 * n, 4 * _permutation.min_budget(n, True))


def _min_budget(method: str, n: int, antithetic: bool) -> int:
    return {
        "exact": 2**n,
        "permutation": _permutation.min_budget(n, antithetic),
        "kernel": _kernel.min_budget(n),
        "partial": partial_cost(n, 1),
        "loo": n + 1,
    }[method]


def estimate(
    game: Game,
    method: str = "permutation",
    budget: int | None = None,
    seed: int = 0,
    *,
    antithetic: bool = True,
    control: bool = True,
    truncation: float | None = None,
    patience: int = 3,
    k: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Estimate:
    """Estimate the Shapley value of every player of ``game``.

    ``method`` is one of ``METHODS``; ``budget`` caps the coalitions evaluated (default:
    ``default_budget``). Permutation options: ``antithetic`` pairs and the position
    ``control`` variate (both on by default: together they need several times fewer
    evaluations than plain sampling for the same error), ``truncation`` tolerance and
    ``patience``; partial: depth ``k`` (default: the deepest that fits the budget).
    ``progress(done, budget)`` is called after each evaluation batch.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    n = int(game.n_players)
    if method == "exact" and n > MAX_EXACT_PLAYERS:
        raise ValueError(
            f"exact Shapley needs 2^{n} evaluations for {n} players; it is refused above "
            f"{MAX_EXACT_PLAYERS} players: use method='permutation' or 'kernel'"
        )
    if method == "partial" and k is not None:
        if k < 1:
            raise ValueError(f"partial needs depth k >= 1, got k={k}")
        need = partial_cost(n, k)
    else:
        need = _min_budget(method, n, antithetic)
    if budget is None:
        budget = max(need, default_budget(method, n))
    if budget < need:
        raise ValueError(
            f"budget {budget} is too small for {method} on {n} players: "
            f"it needs at least {need} evaluations"
        )
    if truncation is not None and truncation < 0:
        raise ValueError(f"truncation must be a tolerance >= 0, got {truncation}")

    rng = np.random.default_rng(seed)
    view = BudgetedGame(game, budget, progress=progress)
    start = time.perf_counter()
    if method == "exact":
        values, stderr, info = exact(view)
    elif method == "permutation":
        values, stderr, info = _permutation.permutation(
            view,
            rng,
            antithetic=antithetic,
            control=control,
            truncation=truncation,
            patience=patience,
        )
    elif method == "kernel":
        values, stderr, info = _kernel.kernel(view, rng)
    elif method == "partial":
        values, stderr, info = partial(view, k if k is not None else deepest_affordable(n, budget))
    else:
        values, stderr, info = loo(view)
    seconds = time.perf_counter() - start
    return Estimate(values, stderr, view.n_evals, seconds, method, budget, seed, info)
