"""Monte Carlo permutation sampling: antithetic pairs, a position control variate,
truncated walks, batched rounds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shapprune.estimators._budget import BudgetedGame
from shapprune.estimators.base import Estimator
from shapprune.options import option


def min_budget(n: int, antithetic: bool) -> int:
    """Fewest evaluations that give two independent samples (needed for a stderr)."""
    walks = 4 if antithetic else 2
    return 2 + walks * max(n - 1, 0)


def _walk_masks(order: np.ndarray) -> np.ndarray:
    """Coalitions N minus the first j players of ``order``, for j = 1..n-1 (shape (n-1, n))."""
    n = len(order)
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    return pos[None, :] >= np.arange(1, n)[:, None]


def permutation(
    game: BudgetedGame,
    rng: np.random.Generator,
    antithetic: bool = True,
    truncation: float | None = None,
    patience: int = 3,
    walks_per_round: int = 32,
    control: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Shapley values from random orderings.

    Each walk starts from the full set and removes the players in a random order; the
    drop in value at each step is that player's marginal contribution. With
    ``antithetic`` every ordering is followed by its reverse and the pair's average is one
    sample. With ``truncation`` a walk stops once |v(S) - v(empty)| has stayed below that
    tolerance for ``patience`` steps, and the rest of its marginals count as zero.

    With ``control`` (the position control variate) each player's marginals are regressed
    on the mean marginal at the same positions in the other samples' walks, a quantity
    whose expectation over a random position is known: (v(N) - v(empty)) / n. Much of a
    marginal's spread is where in the walk it falls (removing the last few units costs
    far more than removing the first few, whoever they are); the control variate takes
    that spread out. A null player's marginals are all zero, so its estimate stays exactly
    zero, an additive game is still estimated exactly, and the values still sum to
    v(N) - v(empty).
    """
    n = game.n
    v_full, v_empty = game.full_and_empty()
    if n == 1:
        return np.array([v_full - v_empty]), np.zeros(1), {"samples": 0}
    group = 2 if antithetic else 1
    margs: list[np.ndarray] = []  # (walks, n) marginals per round
    places: list[np.ndarray] = []  # (walks, n) position of each player in its walk
    skipped_steps = 0
    spent = 2  # planned cost so far, as if nothing were memoised: the plan never
    while True:  # depends on what the memo saved, so neither does the result
        remaining = game.budget - spent
        n_walks = min(walks_per_round, remaining // (n - 1)) // group * group
        if n_walks == 0:
            break
        orders = []
        for _ in range(n_walks // group):
            order = rng.permutation(n)
            orders.append(order)
            if antithetic:
                orders.append(order[::-1].copy())
        walk_values, skipped = _run_walks(game, orders, v_full, v_empty, truncation, patience)
        skipped_steps += skipped
        spent += len(orders) * (n - 1) - skipped
        marg = np.zeros((len(orders), n))
        place = np.zeros((len(orders), n), dtype=np.int64)
        for w, order in enumerate(orders):
            marg[w, order] = walk_values[w, :-1] - walk_values[w, 1:]
            place[w, order] = np.arange(n)
        margs.append(marg)
        places.append(place)
    marg, place = np.concatenate(margs), np.concatenate(places)
    if len(marg) < 2 * group:
        raise ValueError("budget too small for permutation sampling")  # guarded by caller
    s = marg.reshape(-1, group, n).mean(axis=1)  # one sample per walk (or antithetic pair)
    if control:
        c = _position_control(marg, place, group).reshape(-1, group, n).mean(axis=1)
        beta = _control_coefficient(s, c)
        s = s - beta * (c - (v_full - v_empty) / n)
        if beta.sum() > 0:  # efficiency: hand the small imbalance back in proportion to beta
            s = s + np.outer(v_full - v_empty - s.sum(axis=1), beta / beta.sum())
    stderr = s.std(axis=0, ddof=1) / np.sqrt(len(s))
    info = {
        "samples": len(s),
        "walks": len(s) * group,
        "antithetic": antithetic,
        "control": control,
        "truncation": truncation,
        "skipped_steps": skipped_steps,
    }
    return s.mean(axis=0), stderr, info


def _position_control(marg: np.ndarray, place: np.ndarray, group: int) -> np.ndarray:
    """For each walk's marginals (W, n), the mean marginal at the same positions in the
    walks of the *other* samples: independent of the walk itself, so subtracting it and
    adding back its known expectation leaves the estimator unbiased."""
    walks = len(marg)
    by_position = np.take_along_axis(marg, np.argsort(place, axis=1), axis=1)  # (W, n)
    own = by_position.reshape(-1, group, marg.shape[1]).sum(axis=1)  # per sample
    others = (by_position.sum(axis=0) - np.repeat(own, group, axis=0)) / (walks - group)
    return np.take_along_axis(others, place, axis=1)


MAX_COEFFICIENT = 2.0


def _control_coefficient(s: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Per player, the regression slope of its samples ``s`` on its controls ``c`` (the
    variance-minimising coefficient), clipped to [0, MAX_COEFFICIENT]: a slope outside
    that range comes from too few samples, not from the game."""
    sc, cc = s - s.mean(axis=0), c - c.mean(axis=0)
    var = (cc**2).sum(axis=0)
    slope = np.divide((sc * cc).sum(axis=0), var, out=np.zeros_like(var), where=var > 0)
    return np.clip(slope, 0.0, MAX_COEFFICIENT)


def _run_walks(
    game: BudgetedGame,
    orders: list[np.ndarray],
    v_full: float,
    v_empty: float,
    truncation: float | None,
    patience: int,
) -> tuple[np.ndarray, int]:
    """Values along each walk: column j is v(N minus the first j players), j = 0..n."""
    n = game.n
    vals = np.empty((len(orders), n + 1))
    vals[:, 0], vals[:, n] = v_full, v_empty
    masks = np.stack([_walk_masks(o) for o in orders])  # (walks, n-1, n)
    if truncation is None:
        vals[:, 1:n] = game.values(masks.reshape(-1, n)).reshape(len(orders), n - 1)
        return vals, 0
    # Truncated: advance all walks together, a chunk of steps at a time.
    chunk = max(1, (n - 1) // 8)
    quiet = np.zeros(len(orders), dtype=np.int64)
    stopped_at = np.full(len(orders), -1)
    evaluated = 0
    for start in range(1, n, chunk):
        active = np.flatnonzero(stopped_at < 0)
        if len(active) == 0:
            break
        stop = min(start + chunk, n)
        got = game.values(masks[active, start - 1 : stop - 1].reshape(-1, n))
        got = got.reshape(len(active), stop - start)
        evaluated += got.size
        for a, w in enumerate(active):
            for j in range(start, stop):
                vals[w, j] = got[a, j - start]
                quiet[w] = quiet[w] + 1 if abs(vals[w, j] - v_empty) < truncation else 0
                if quiet[w] >= patience:
                    stopped_at[w] = j
                    break
    for w in np.flatnonzero(stopped_at >= 0):
        vals[w, stopped_at[w] + 1 :] = vals[w, stopped_at[w]]
    return vals, len(orders) * (n - 1) - evaluated


def sampling_default_budget(n: int) -> int:
    """The default budget of the sampling estimators: 100 evaluations per player, and at
    least four times the fewest that give a standard error."""
    return max(100 * n, 4 * min_budget(n, True))


@dataclass
class PermutationOptions:
    """Options of permutation sampling."""

    antithetic: bool = option(True, "follow each ordering by its reverse (paired samples)")
    control: bool = option(True, "subtract the position control variate")
    truncation: float | None = option(
        None, "stop a walk once |v(S) - v(empty)| stays below this tolerance"
    )
    patience: int = option(3, "steps below the truncation tolerance before a walk stops")

    def __post_init__(self) -> None:
        if self.truncation is not None and self.truncation < 0:
            raise ValueError(f"truncation must be a tolerance >= 0, got {self.truncation}")


class Permutation(Estimator):
    """Monte Carlo permutation sampling (antithetic pairs and a control variate by default:
    together they need several times fewer evaluations than plain sampling)."""

    name = "permutation"
    Options = PermutationOptions

    def min_budget(self, n: int, options: PermutationOptions) -> int:
        return min_budget(n, options.antithetic)

    def default_budget(self, n: int, options: PermutationOptions) -> int:
        return sampling_default_budget(n)

    def __call__(
        self, game: BudgetedGame, rng: np.random.Generator, options: PermutationOptions
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        return permutation(
            game,
            rng,
            antithetic=options.antithetic,
            control=options.control,
            truncation=options.truncation,
            patience=options.patience,
        )
