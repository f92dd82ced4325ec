"""Cooperative games with known Shapley values, for checking the estimators.

Every game here answers the same protocol as :class:`shapprune.game.PruningGame`:
``n_players`` and ``value(masks)`` on a boolean tensor of shape ``(n,)`` or ``(m, n)``
(True = the player is in the coalition), and knows its own closed-form ``shapley()``.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import torch


class SyntheticGame:
    """Base class: counts evaluations and handles the mask shapes."""

    n_players: int

    def __init__(self, n_players: int) -> None:
        if n_players < 1:
            raise ValueError(f"a game needs at least one player, got n_players={n_players}")
        self.n_players = n_players
        self.n_evals = 0

    @property
    def players(self) -> list[str]:
        return [f"p{i}" for i in range(self.n_players)]

    def value(self, masks: torch.Tensor) -> torch.Tensor:
        """Value of each coalition in ``masks`` (bool, shape (n,) or (m, n))."""
        masks = torch.as_tensor(masks, dtype=torch.bool)
        single = masks.dim() == 1
        masks = masks.reshape(-1, self.n_players)
        self.n_evals += masks.shape[0]
        out = torch.as_tensor(self._values(masks.numpy()), dtype=torch.float64)
        return out[0] if single else out

    def _values(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def shapley(self) -> np.ndarray:
        """The exact Shapley values, in closed form."""
        raise NotImplementedError


class AdditiveGame(SyntheticGame):
    """v(S) = c + sum of w_i over S: the Shapley value of i is w_i."""

    def __init__(self, weights, constant: float = 0.0) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)
        super().__init__(len(self.weights))
        self.constant = constant

    def _values(self, z: np.ndarray) -> np.ndarray:
        return self.constant + z.astype(np.float64) @ self.weights

    def shapley(self) -> np.ndarray:
        return self.weights.copy()


class UnanimityGame(SyntheticGame):
    """v(S) = 1 if S contains every member of T, else 0: each member of T gets 1/|T|."""

    def __init__(self, n_players: int, members) -> None:
        super().__init__(n_players)
        self.members = np.asarray(sorted(set(members)), dtype=np.int64)
        if len(self.members) == 0 or self.members.max() >= n_players or self.members.min() < 0:
            raise ValueError(f"members must be a non-empty subset of 0..{n_players - 1}")

    def _values(self, z: np.ndarray) -> np.ndarray:
        return z[:, self.members].all(axis=1).astype(np.float64)

    def shapley(self) -> np.ndarray:
        phi = np.zeros(self.n_players)
        phi[self.members] = 1.0 / len(self.members)
        return phi


class GloveGame(SyntheticGame):
    """Players 0..n_left-1 hold left gloves, the rest right ones; v(S) = number of pairs."""

    def __init__(self, n_left: int, n_right: int) -> None:
        super().__init__(n_left + n_right)
        self.n_left, self.n_right = n_left, n_right

    def _values(self, z: np.ndarray) -> np.ndarray:
        left = z[:, : self.n_left].sum(axis=1)
        right = z[:, self.n_left :].sum(axis=1)
        return np.minimum(left, right).astype(np.float64)

    def shapley(self) -> np.ndarray:
        # By symmetry each side's players share the side's total; computed by the
        # Shapley formula over the numbers of each side present in S (exact, no sampling).
        nl, nr, n = self.n_left, self.n_right, self.n_players
        phi_left = 0.0
        for a in range(nl):  # other left gloves in S
            for b in range(nr + 1):  # right gloves in S
                s = a + b
                count = math.comb(nl - 1, a) * math.comb(nr, b)
                weight = math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n)
                phi_left += count * weight * (min(a + 1, b) - min(a, b))
        total = float(min(nl, nr))
        phi_right = (total - nl * phi_left) / nr
        return np.array([phi_left] * nl + [phi_right] * nr)


class WeightedVotingGame(SyntheticGame):
    """v(S) = 1 if the weights in S reach the quota, else 0.

    ``shapley()`` is the Shapley-Shubik power index, computed exactly by counting, for each
    player and each coalition size, the coalitions it swings (a small dynamic programme).
    """

    def __init__(self, weights, quota: float) -> None:
        self.weights = np.asarray(weights, dtype=np.int64)
        super().__init__(len(self.weights))
        self.quota = quota

    def _values(self, z: np.ndarray) -> np.ndarray:
        return (z.astype(np.int64) @ self.weights >= self.quota).astype(np.float64)

    def shapley(self) -> np.ndarray:
        n, total = self.n_players, int(self.weights.sum())
        phi = np.zeros(n)
        for i in range(n):
            others = np.delete(self.weights, i)
            # ways[s, w] = number of subsets of the others with size s and weight w
            ways = np.zeros((n, total + 1), dtype=object)
            ways[0, 0] = 1
            for w in others:
                ways[1:, w:] = ways[1:, w:] + ways[:-1, : total + 1 - w]
            for s in range(n):
                for w in range(total + 1):
                    if ways[s, w] and w < self.quota <= w + self.weights[i]:
                        weight = math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n)
                        phi[i] += float(ways[s, w]) * weight
        return phi


class TableGame(SyntheticGame):
    """Any game given by a Python function of the coalition (a frozenset of players).

    ``shapley()`` is computed by brute force over all orderings' subsets, for small n only.
    """

    def __init__(self, n_players: int, fn) -> None:
        super().__init__(n_players)
        self.fn = fn

    def _values(self, z: np.ndarray) -> np.ndarray:
        return np.array([float(self.fn(frozenset(np.flatnonzero(row)))) for row in z])

    def shapley(self) -> np.ndarray:
        n = self.n_players
        phi = np.zeros(n)
        for i in range(n):
            others = [j for j in range(n) if j != i]
            for s in range(n):
                weight = math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n)
                for subset in combinations(others, s):
                    S = frozenset(subset)
                    phi[i] += weight * (self.fn(S | {i}) - self.fn(S))
        return phi
