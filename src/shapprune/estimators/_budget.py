"""A game seen through a budget: counts evaluations, refuses to exceed the budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from shapprune.progress import takes_status


class Game(Protocol):
    """What an estimator needs of a game."""

    n_players: int

    def value(self, masks: torch.Tensor) -> torch.Tensor: ...


class BudgetExceeded(RuntimeError):
    """Raised when an estimator asks for more evaluations than its budget."""


class BudgetedGame:
    """Wraps a game: numpy in and out, evaluation counting, budget and progress.

    Coalitions already evaluated are answered from memory (``memo=True``) and cost nothing;
    ``n_evals`` counts only real evaluations. Estimators plan their samples from the
    budget alone, so memoisation changes the time spent, never the result.

    ``progress(done, budget)`` is called after each batch; a callback with a third
    parameter also gets ``status``, a dict an estimator may fill (the bandit: ``in_doubt``).
    """

    def __init__(
        self,
        game: Game,
        budget: int,
        progress: Callable[..., None] | None = None,
        memo: bool = True,
        memo_limit: int = 1_000_000,
    ) -> None:
        self.game = game
        self.n = int(game.n_players)
        self.budget = int(budget)
        self.n_evals = 0
        self.progress = progress
        self.status: dict[str, Any] = {}
        self._with_status = progress is not None and takes_status(progress)
        self._memo: dict[bytes, float] | None = {} if memo else None
        self._memo_limit = memo_limit

    def values(self, z: np.ndarray) -> np.ndarray:
        """Values of the coalitions in the rows of the boolean matrix ``z`` (m, n)."""
        z = np.ascontiguousarray(z, dtype=bool).reshape(-1, self.n)
        out = np.empty(len(z), dtype=np.float64)
        if self._memo is None:
            todo = np.arange(len(z))
            keys: list[bytes] = []
        else:
            keys = [row.tobytes() for row in np.packbits(z, axis=1)]
            todo_list = []
            first: dict[bytes, int] = {}
            for j, key in enumerate(keys):
                hit = self._memo.get(key)
                if hit is not None:
                    out[j] = hit
                elif key not in first:
                    first[key] = j
                    todo_list.append(j)
            todo = np.asarray(todo_list, dtype=np.int64)
        if len(todo):
            if self.n_evals + len(todo) > self.budget:
                raise BudgetExceeded(
                    f"{self.n_evals + len(todo)} evaluations needed, budget is {self.budget}"
                )
            vals = self.game.value(torch.from_numpy(z[todo]))
            if isinstance(vals, torch.Tensor):  # as_tensor would follow the default device
                vals = vals.detach().cpu()
            vals = np.asarray(vals, dtype=np.float64).reshape(-1)
            out[todo] = vals
            self.n_evals += len(todo)
            if self._memo is not None:
                if len(self._memo) + len(todo) <= self._memo_limit:
                    for j, v in zip(todo, vals, strict=True):
                        self._memo[keys[j]] = float(v)
                # repeated coalitions within this call take the value of their first copy
                for j, key in enumerate(keys):
                    if key in self._memo:
                        out[j] = self._memo[key]
            if self._with_status:
                self.progress(self.n_evals, self.budget, self.status)
            elif self.progress is not None:
                self.progress(self.n_evals, self.budget)
        return out

    def full_and_empty(self) -> tuple[float, float]:
        """v(N) and v(empty set)."""
        v = self.values(np.stack([np.ones(self.n, bool), np.zeros(self.n, bool)]))
        return float(v[0]), float(v[1])
