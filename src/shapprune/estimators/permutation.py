"""Monte Carlo permutation sampling: antithetic pairs, truncated walks, batched rounds."""

from __future__ import annotations

import numpy as np

from ._budget import BudgetedGame


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
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Shapley values from random orderings.

    Each walk starts from the full set and removes the players in a random order; the
    drop in value at each step is that player's marginal contribution. With
    ``antithetic`` every ordering is followed by its reverse and the pair's average is one
    sample. With ``truncation`` a walk stops once |v(S) - v(empty)| has stayed below that
    tolerance for ``patience`` steps, and the rest of its marginals count as zero.
    """
    n = game.n
    v_full, v_empty = game.full_and_empty()
    if n == 1:
        return np.array([v_full - v_empty]), np.zeros(1), {"samples": 0}
    group = 2 if antithetic else 1
    samples: list[np.ndarray] = []
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
        for w, order in enumerate(orders):
            marg[w, order] = walk_values[w, :-1] - walk_values[w, 1:]
        samples.extend(marg.reshape(-1, group, n).mean(axis=1))
    if len(samples) < 2:
        raise ValueError("budget too small for permutation sampling")  # guarded by caller
    s = np.asarray(samples)
    stderr = s.std(axis=0, ddof=1) / np.sqrt(len(s))
    info = {
        "samples": len(s),
        "walks": len(s) * group,
        "antithetic": antithetic,
        "truncation": truncation,
        "skipped_steps": skipped_steps,
    }
    return s.mean(axis=0), stderr, info


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
