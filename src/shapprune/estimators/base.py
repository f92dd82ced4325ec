"""What an estimator is (:class:`Estimator`) and what it answers (:class:`Estimate`).

An estimator declares its options once (a dataclass, see :mod:`shapprune.options`), its
budgets, and whether its answer depends on the seed; its call reads the game through a
budget and a seeded generator. Estimators that settle a set rather than every value (the
k lowest players, with a confidence) answer with ``selected``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from shapprune.estimators._budget import BudgetedGame
from shapprune.options import NoOptions

__all__ = ["Answer", "Estimate", "Estimator"]


@dataclass
class Estimate:
    """Estimated values of the players, with their standard errors and the cost paid.

    A top-/bottom-k estimator also fills ``selected`` (the players settled as the k lowest),
    with its ``confidence`` and, optionally, per-player value ``intervals`` (n, 2).
    """

    values: np.ndarray
    stderr: np.ndarray
    n_evals: int
    seconds: float
    method: str
    budget: int
    seed: int
    info: dict = field(default_factory=dict)
    selected: np.ndarray | None = None
    confidence: float | None = None
    intervals: np.ndarray | None = None

    @property
    def ranking(self) -> np.ndarray:
        """Player indices from least to most valuable (ties broken by index); where a set
        was ``selected``, its members come first (by value), then the others (by value)."""
        order = np.argsort(self.values, kind="stable")
        if self.selected is None:
            return order
        chosen = np.zeros(len(self.values), dtype=bool)
        chosen[self.selected] = True
        return np.concatenate([order[chosen[order]], order[~chosen[order]]])

    def to_dict(self) -> dict:
        """A JSON-ready record."""
        out = asdict(self)
        for key in ("values", "stderr", "selected", "intervals"):
            value = getattr(self, key)
            out[key] = None if value is None else np.asarray(value).tolist()
        out["confidence"] = None if self.confidence is None else float(self.confidence)
        out["ranking"] = self.ranking.tolist()
        return out


@dataclass
class Answer:
    """What an estimator's call returns (a tuple ``(values, stderr, info)`` will do too)."""

    values: np.ndarray
    stderr: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    selected: np.ndarray | None = None
    confidence: float | None = None
    intervals: np.ndarray | None = None


class Estimator:
    """An estimator of the players' values: subclass, declare, register.

    ``name`` is how ``estimate(game, method=name)`` reaches it; ``Options`` declares its
    options; ``deterministic`` says that the seed does not change its answer (experiments
    then run it once); ``criterion`` overrides the criterion name ``shapley-<name>``;
    ``cut`` names the option that a pruning target's fraction of units fills where the user
    left it None (the bandit's ``k``: the set to settle is the set the target cuts), with
    the fraction kept instead where ``cut_keeps`` (a semivalue's or a refinement's
    ``kept``); ``uses_cut`` says whether the options leave it open.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    deterministic: ClassVar[bool] = False
    criterion: ClassVar[str | None] = None
    cut: ClassVar[str | None] = None
    cut_keeps: ClassVar[bool] = False

    def check(self, n: int, options: Any) -> None:
        """Refuse a game this estimator cannot handle (raise ValueError); default: accept."""

    def uses_cut(self, options: dict[str, Any]) -> bool:
        """Whether ``options`` leave the ``cut`` option open for a pruning target to fill."""
        return self.cut is not None and options.get(self.cut) is None

    def fill_cut(self, options: dict[str, Any], fraction: float) -> dict[str, Any]:
        """``options`` aimed at a cut of ``fraction`` of the players, where the user left
        that open: the ``cut`` option set to ``fraction`` (``1 - fraction`` if
        ``cut_keeps``)."""
        if not self.uses_cut(options):
            return options
        return {**options, self.cut: 1 - fraction if self.cut_keeps else fraction}

    def min_budget(self, n: int, options: Any) -> int:
        """The fewest evaluations that give an answer on ``n`` players."""
        raise NotImplementedError

    def default_budget(self, n: int, options: Any) -> int:
        """The budget used when none is given: enough for a usable answer."""
        return self.min_budget(n, options)

    def __call__(
        self, game: BudgetedGame, rng: np.random.Generator, options: Any
    ) -> Answer | tuple[np.ndarray, np.ndarray, dict]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
