"""Semivalues: marginal contributions weighted by the size of the coalition they are taken in.

The Shapley value averages a unit's marginal v(S + i) - v(S) over coalition sizes |S| =
0..n-1 alike; a pruning decision that keeps a fraction of the units only asks about the
coalitions near the kept size. A semivalue puts weights p_s on the sizes instead:

- ``shapley``: p_s = 1/n;
- ``banzhaf``: every coalition alike, p_s = C(n-1, s) / 2^(n-1);
- ``beta``: Beta Shapley (Kwon and Zou, 2022), p_s = C(n-1, s) B(s + beta, n-1-s + alpha)
  / B(beta, alpha): Beta(1, 1) is Shapley, a large ``alpha`` favours small coalitions; given
  ``kept``, (alpha, beta) are set so that the Beta-distributed share of the other players
  in S has mean ``kept`` and standard deviation ``width``;
- ``window``: the sizes within ``width`` (a fraction of the players) of the kept size, alike.

Sampling (:func:`semivalue_stars`) draws "stars": a random coalition S of a random size t
and every single-player change of it, v(S + i) for i outside S and v(S - i) for i inside,
so one star gives *every* player one marginal (non-members at size t, members at t - 1), all
against the same S: the players' estimates are paired, which is what a ranking needs.
Importance weights p_s / q_s (q: the chance that a player's marginal is taken at size s)
make the mean unbiased for any weights; a null player's estimate is exactly zero and the
estimate is linear in the game. ``exact=True`` enumerates the coalitions the weights touch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shapprune.estimators._budget import BudgetedGame
from shapprune.estimators.base import Answer, Estimator
from shapprune.estimators.exact import all_coalitions, semivalue_from_coalitions
from shapprune.estimators.permutation import sampling_default_budget
from shapprune.options import option

__all__ = ["SEMIVALUE_WEIGHTS", "Semivalue", "SemivalueOptions", "semivalue_stars", "size_weights"]

SEMIVALUE_WEIGHTS = ("shapley", "banzhaf", "beta", "window")
MAX_EXACT_COALITIONS = 2**20


def _log_comb(n: int, k: np.ndarray) -> np.ndarray:
    return np.array([math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) for j in k])


def _log_beta(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    a, b = np.atleast_1d(np.asarray(a, float)), np.atleast_1d(np.asarray(b, float))
    lg = np.vectorize(math.lgamma)
    return lg(a) + lg(b) - lg(a + b)


def beta_parameters(kept: float, width: float) -> tuple[float, float]:
    """(alpha, beta) of the Beta distribution of the kept fraction with mean ``kept`` and
    standard deviation ``width`` (alpha weighs the removed side, as in Kwon and Zou)."""
    concentration = kept * (1 - kept) / width**2 - 1
    return (1 - kept) * concentration, kept * concentration


def size_weights(
    n: int,
    weights: str = "shapley",
    alpha: float | None = None,
    beta: float | None = None,
    kept: float | None = None,
    width: float = 0.1,
) -> np.ndarray:
    """p_s, s = 0..n-1: the weight of the marginals taken against s other players (sums to 1)."""
    s = np.arange(n)
    if weights == "shapley":
        p = np.full(n, 1.0 / n)
    elif weights == "banzhaf":
        p = np.exp(_log_comb(n - 1, s) - (n - 1) * math.log(2))
    elif weights == "beta":
        if kept is not None:
            alpha, beta = beta_parameters(kept, width)
        a, b = (1.0 if beta is None else beta), (1.0 if alpha is None else alpha)
        p = np.exp(_log_comb(n - 1, s) + _log_beta(s + a, n - 1 - s + b) - _log_beta(a, b))
    elif weights == "window":
        if kept is None:
            raise ValueError("window weights need kept (the fraction of players kept)")
        centre, half = kept * (n - 1), width * (n - 1)
        inside = np.abs(s - centre) <= half + 1e-9
        if not inside.any():
            inside[int(np.argmin(np.abs(s - centre)))] = True
        p = inside / inside.sum()
    else:
        known = ", ".join(SEMIVALUE_WEIGHTS)
        raise ValueError(f"unknown weights {weights!r}; choose one of: {known}")
    return p / p.sum()


def star_plan(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distribution P(t) of star sizes t = 0..n, and q_s: the chance that a player's
    marginal from one star is taken at size s (P(s)(n-s)/n + P(s+1)(s+1)/n); q > 0 wherever
    p > 0, and q = p for the Shapley weights."""
    n = len(p)
    t = np.arange(n + 1)
    padded = np.concatenate([[0.0], p, [0.0]])  # padded[t] = p_{t-1}, padded[t+1] = p_t
    star = t * padded[:-1] + (n - t) * padded[1:]
    star = star / star.sum()
    q = star[:-1] * (n - t[:-1]) / n + star[1:] * (t[:-1] + 1) / n
    return star, q


def _star_cost(p: np.ndarray) -> np.ndarray:
    """Evaluations of a star of each size t: S itself and each change whose size has weight."""
    n = len(p)
    t = np.arange(n + 1)
    up = np.concatenate([p > 0, [False]])  # non-members give size t
    down = np.concatenate([[False], p > 0])  # members give size t - 1
    return 1 + (n - t) * up + t * down


def _plan_stars(p: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Star sizes, systematically sampled from P(t), as many as the budget pays for."""
    star, _ = star_plan(p)
    cost = _star_cost(p)
    cdf = np.cumsum(star)
    offset = rng.random()
    count = budget // int(cost[star > 0].min())
    while count > 0:
        sizes = np.searchsorted(cdf, (offset + np.arange(count)) / count, side="right")
        sizes = np.minimum(sizes, len(p))
        if cost[sizes].sum() <= budget:
            return rng.permutation(sizes)
        count -= max(1, (cost[sizes].sum() - budget) // int(cost.max()))
    return np.zeros(0, dtype=np.int64)


def semivalue_stars(
    game: BudgetedGame, rng: np.random.Generator, p: np.ndarray, stars_per_round: int = 16
) -> Answer:
    """The semivalue with size weights ``p`` from stars (see the module's docstring)."""
    n = game.n
    _, q = star_plan(p)
    ratio = np.divide(p, q, out=np.zeros(n), where=p > 0)
    sizes = _plan_stars(p, game.budget, rng)
    if len(sizes) < 2:
        raise ValueError("budget too small for two stars")  # guarded by min_budget
    samples = np.zeros((len(sizes), n))
    for start in range(0, len(sizes), stars_per_round):
        rows, index = [], []  # index: (star, player, row of S, row of the change)
        for w in range(start, min(start + stars_per_round, len(sizes))):
            t = int(sizes[w])
            base = np.zeros(n, dtype=bool)
            base[rng.permutation(n)[:t]] = True
            base_row = len(rows)
            rows.append(base)
            for i in range(n):
                size = t - 1 if base[i] else t
                if p[size] == 0:
                    continue
                changed = base.copy()
                changed[i] = not base[i]
                index.append((w, i, base_row, len(rows)))
                rows.append(changed)
        values = game.values(np.stack(rows))
        for w, i, b, c in index:
            member = rows[b][i]
            marginal = values[b] - values[c] if member else values[c] - values[b]
            size = sizes[w] - 1 if member else sizes[w]
            samples[w, i] = ratio[size] * marginal
    stderr = samples.std(axis=0, ddof=1) / np.sqrt(len(samples))
    return Answer(samples.mean(axis=0), stderr, {"stars": len(sizes)})


def exact_cost(p: np.ndarray) -> int:
    """Coalitions the exact semivalue with weights ``p`` needs: all of sizes s and s + 1."""
    n = len(p)
    sizes = {int(s) for s in np.flatnonzero(p)} | {int(s) + 1 for s in np.flatnonzero(p)}
    return sum(math.comb(n, s) for s in sizes)


def semivalue_exact(game: BudgetedGame, p: np.ndarray) -> Answer:
    """The semivalue with size weights ``p``, exactly, by enumeration."""
    n = game.n
    sizes = sorted({int(s) for s in np.flatnonzero(p)} | {int(s) + 1 for s in np.flatnonzero(p)})
    z = all_coalitions(n, sizes)
    v = np.concatenate([game.values(c) for c in np.array_split(z, max(1, len(z) // 4096))])
    return Answer(semivalue_from_coalitions(z, v, p), np.zeros(n), {"coalitions": len(z)})


@dataclass
class SemivalueOptions:
    """Options of the semivalue estimator."""

    weights: str = option("shapley", f"size weights: {'|'.join(SEMIVALUE_WEIGHTS)}")
    alpha: float | None = option(
        None, "Beta Shapley alpha, default 1 (weights=beta; a large alpha favours small S)"
    )
    beta: float | None = option(None, "Beta Shapley beta, default 1 (weights=beta)")
    kept: float | None = option(
        None, "fraction of the players kept at the target: centres the window/beta weights"
    )
    width: float = option(
        0.1, "window: half-width; beta with kept: standard deviation (fractions of players)"
    )
    exact: bool = option(False, "enumerate every coalition the weights touch (small games)")

    def __post_init__(self) -> None:
        if self.weights not in SEMIVALUE_WEIGHTS:
            raise ValueError(
                f"unknown weights {self.weights!r}; choose one of: {', '.join(SEMIVALUE_WEIGHTS)}"
            )
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if value is not None and (self.weights != "beta" or value <= 0):
                raise ValueError(f"{name} must be > 0 and goes with weights='beta', got {value}")
        if self.kept is not None and not 0 <= self.kept <= 1:
            raise ValueError(f"kept must be a fraction in [0, 1], got {self.kept}")
        if self.kept is not None and self.weights not in ("window", "beta"):
            raise ValueError(f"kept centres window or beta weights, not {self.weights!r}")
        if self.width < 0:
            raise ValueError(f"width must be >= 0, got {self.width}")
        if self.weights == "beta" and self.kept is not None:
            if self.alpha is not None or self.beta is not None:
                raise ValueError("beta weights take either alpha/beta or kept (with width)")
            if not 0 < self.width**2 < self.kept * (1 - self.kept):
                raise ValueError(
                    f"beta weights around kept={self.kept} need 0 < width < "
                    f"{math.sqrt(self.kept * (1 - self.kept)):.3f}, got {self.width}"
                )


def _weights_of(n: int, options: SemivalueOptions) -> np.ndarray:
    return size_weights(
        n, options.weights, options.alpha, options.beta, options.kept, options.width
    )


class Semivalue(Estimator):
    """Size-weighted marginal contributions (Shapley, Banzhaf, Beta Shapley, a window around
    the kept size), sampled by stars or, with ``exact``, enumerated."""

    name = "semivalue"
    Options = SemivalueOptions
    cut, cut_keeps = "kept", True  # window/beta weights centred on what the cut keeps

    def uses_cut(self, options: dict) -> bool:
        """Window or Beta weights the user did not centre (nor gave Beta's alpha/beta)."""
        free = all(options.get(k) is None for k in ("kept", "alpha", "beta"))
        return options.get("weights") in ("window", "beta") and free

    def check(self, n: int, options: SemivalueOptions) -> None:
        if options.weights == "window" and options.kept is None:
            raise ValueError(
                "window weights need kept (the fraction of players kept; prune fills it "
                "from its target)"
            )
        if options.exact and exact_cost(_weights_of(n, options)) > MAX_EXACT_COALITIONS:
            raise ValueError(
                f"the exact semivalue needs {exact_cost(_weights_of(n, options))} evaluations "
                f"for {n} players; it is refused above {MAX_EXACT_COALITIONS}: drop exact"
            )

    def min_budget(self, n: int, options: SemivalueOptions) -> int:
        p = _weights_of(n, options)
        if options.exact:
            return exact_cost(p)
        return 2 * int(_star_cost(p).max())

    def default_budget(self, n: int, options: SemivalueOptions) -> int:
        return sampling_default_budget(n)

    def __call__(
        self, game: BudgetedGame, rng: np.random.Generator, options: SemivalueOptions
    ) -> Answer:
        p = _weights_of(game.n, options)
        answer = semivalue_exact(game, p) if options.exact else semivalue_stars(game, rng, p)
        answer.info.update(weights=options.weights, exact=options.exact)
        if options.weights == "beta" and options.kept is not None:
            answer.info["alpha"], answer.info["beta"] = beta_parameters(options.kept, options.width)
        return answer
