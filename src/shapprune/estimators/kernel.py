"""KernelSHAP: paired coalitions from the Shapley kernel, constrained least squares."""

from __future__ import annotations

from typing import Any

import numpy as np

from shapprune.estimators._budget import BudgetedGame
from shapprune.estimators.base import Estimator
from shapprune.estimators.permutation import sampling_default_budget


def min_budget(n: int) -> int:
    """Full and empty set plus enough pairs to pin down n values."""
    return 2 + 2 * max(n, 2)


def kernel_size_distribution(n: int) -> np.ndarray:
    """P(|S| = s) for s = 1..n-1 under the Shapley kernel, proportional to (n-1)/(s(n-s))."""
    s = np.arange(1, n)
    w = (n - 1) / (s * (n - s))
    return w / w.sum()


def kernel(game: BudgetedGame, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Shapley values as the efficiency-constrained least-squares fit of v on the mask.

    Sizes are drawn from the Shapley kernel, so the regression itself is unweighted; each
    coalition is paired with its complement. The standard error is the sandwich estimate
    of the solution's spread (the fitted residuals, projected through the solve).
    """
    n = game.n
    v_full, v_empty = game.full_and_empty()
    total = v_full - v_empty
    if n == 1:
        return np.array([total]), np.zeros(1), {"pairs": 0}
    pairs = (game.budget - 2) // 2
    sizes = rng.choice(np.arange(1, n), size=pairs, p=kernel_size_distribution(n))
    z = np.zeros((pairs, n), dtype=bool)
    for j, s in enumerate(sizes):
        z[j, rng.choice(n, size=s, replace=False)] = True
    both = np.concatenate([z, ~z])
    v = game.values(both) - v_empty
    zf = both.astype(np.float64)
    a_hat = zf.T @ zf / len(zf)
    b_hat = zf.T @ v / len(zf)
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n], kkt[:n, n], kkt[n, :n] = a_hat, 1.0, 1.0
    kkt_inv = np.linalg.pinv(kkt)
    phi = kkt_inv[:n, :n] @ b_hat + kkt_inv[:n, n] * total
    # Sandwich standard error: per-pair score vectors at the solution.
    resid = v - zf @ phi
    u = (zf * resid[:, None]).reshape(2, pairs, n).mean(axis=0)
    m = kkt_inv[:n, :n]
    cov_u = np.cov(u, rowvar=False, ddof=1) / pairs if pairs > 1 else np.zeros((n, n))
    stderr = np.sqrt(np.clip(np.diag(m @ cov_u @ m.T), 0.0, None))
    return phi, stderr, {"pairs": int(pairs)}


class Kernel(Estimator):
    """KernelSHAP with paired coalitions and a sandwich standard error."""

    name = "kernel"

    def min_budget(self, n: int, options: Any) -> int:
        return min_budget(n)

    def default_budget(self, n: int, options: Any) -> int:
        return sampling_default_budget(n)

    def __call__(self, game: BudgetedGame, rng: np.random.Generator, options: Any):
        return kernel(game, rng)
