"""Oracle sets and the regret of a ranking against them (Adamczewski et al., 2024).

For each size k the *oracle set* is the k units whose joint removal keeps the game's
value highest: ``argmax over |R| = k of v(N minus R)``. It is found by exhaustive search
when there are at most ``max_subsets`` subsets of size k, otherwise by beam search
(approximate). A ranking (unit indices, least important first) is scored by how well its
k lowest units match the oracle set of size k (overlap, in
:mod:`shapprune.evaluation.ranking`) and by the value it gives up (regret, here).

Tie rule: among sets of equal value the lexicographically smallest sorted index list wins,
both for the oracle set and for the order of the beam.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations, islice

import numpy as np
import torch

from shapprune.estimators._budget import Game
from shapprune.evaluation.ranking import lowest

Progress = Callable[[int, int], None]
Subset = tuple[int, ...]


@dataclass
class OracleSets:
    """The best set to remove for each size k, its value and how it was found."""

    sets: dict[int, list[int]]
    values: dict[int, float]
    exhaustive: dict[int, bool]
    n_evals: int

    def to_dict(self) -> dict:
        """A JSON-ready record (the sizes k become string keys)."""
        return {
            "sets": {str(k): list(map(int, s)) for k, s in self.sets.items()},
            "values": {str(k): float(v) for k, v in self.values.items()},
            "exhaustive": {str(k): bool(e) for k, e in self.exhaustive.items()},
            "n_evals": int(self.n_evals),
        }

    @classmethod
    def from_dict(cls, record: dict) -> OracleSets:
        """The inverse of :meth:`to_dict`."""
        return cls(
            sets={int(k): [int(u) for u in s] for k, s in record["sets"].items()},
            values={int(k): float(v) for k, v in record["values"].items()},
            exhaustive={int(k): bool(e) for k, e in record["exhaustive"].items()},
            n_evals=int(record["n_evals"]),
        )


def _removal_masks(subsets: Sequence[Subset], n: int) -> torch.Tensor:
    """Masks (m, n) keeping every unit except those of each subset."""
    masks = np.ones((len(subsets), n), dtype=bool)
    for row, subset in enumerate(subsets):
        masks[row, list(subset)] = False
    return torch.from_numpy(masks)


def _best(subsets: list[Subset], values: np.ndarray, width: int) -> list[tuple[Subset, float]]:
    """The ``width`` best (subset, value) pairs: highest value, then earliest in the list."""
    order = np.argsort(-values, kind="stable")[:width]
    return [(subsets[i], float(values[i])) for i in order]


class _Search:
    """Evaluates removal sets through the game, counting evaluations and progress."""

    def __init__(self, game: Game, chunk: int, progress: Progress | None, total: int) -> None:
        self.game, self.n, self.chunk = game, game.n_players, chunk
        self.progress, self.total = progress, total
        self.n_evals = self.done = 0

    def evaluate(self, subsets: list[Subset]) -> np.ndarray:
        """v(N minus R) for each subset R, in one call to the game."""
        if not subsets:
            return np.zeros(0)
        values = self.game.value(_removal_masks(subsets, self.n))
        self.n_evals += len(subsets)
        return np.asarray(torch.as_tensor(values, dtype=torch.float64).reshape(-1))

    def tick(self, work: int) -> None:
        self.done += work
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)

    def exhaustive(self, k: int, width: int) -> list[tuple[Subset, float]]:
        """The ``width`` best subsets of size k among all of them, in chunks."""
        top: list[tuple[Subset, float]] = []
        it = combinations(range(self.n), k)  # lexicographic order: ties keep the earliest
        while batch := list(islice(it, self.chunk)):
            values = self.evaluate(batch)
            subsets = [s for s, _ in top] + batch
            values = np.concatenate([np.array([v for _, v in top]), values])
            top = _best(subsets, values, width)
            self.tick(len(batch))
        return top

    def beam(self, k: int, seeds: list[Subset], width: int) -> list[tuple[Subset, float]]:
        """The ``width`` best one-unit extensions of the seed sets of size k - 1."""
        extensions = {tuple(sorted((*s, u))) for s in seeds for u in range(self.n) if u not in s}
        batch = sorted(extensions)  # lexicographic order: ties keep the smallest
        top = _best(batch, self.evaluate(batch), width)
        self.tick(_beam_cost(self.n, k, width))
        return top


def _beam_cost(n: int, k: int, width: int) -> int:
    """An upper bound on the evaluations of one beam step (for progress reports)."""
    return min(math.comb(n, k), width * (n - k + 1))


def _plan(n: int, ks: list[int], max_subsets: int) -> dict[int, bool]:
    """Sizes to search, 1..max(ks), each mapped to True (exhaustive) or False (beam).

    A size outside ``ks`` is searched only when a later beam step needs it as a seed.
    """
    plan: dict[int, bool] = {}
    wanted = set(ks)
    for k in range(max(ks), 0, -1):
        exhaustive = math.comb(n, k) <= max_subsets
        if k in wanted or plan.get(k + 1) is False:
            plan[k] = exhaustive
    return dict(sorted(plan.items()))


def oracle_sets(
    game: Game,
    ks: Iterable[int] | None = None,
    *,
    max_subsets: int = 20_000,
    beam_width: int = 8,
    chunk: int = 4096,
    progress: Progress | None = None,
) -> OracleSets:
    """The oracle set of each size k in ``ks`` (default 1..n-1): the k units whose joint
    removal keeps ``game.value`` highest.

    Sizes with at most ``max_subsets`` subsets are searched exhaustively (in batches of
    ``chunk`` coalitions); the others by a beam search of width ``beam_width`` grown from the
    best sets of size k - 1. Ties go to the lexicographically smallest sorted index list.
    ``progress(done, total)`` is called as the work advances.
    """
    n = game.n_players
    ks = sorted(set(range(1, n) if ks is None else (int(k) for k in ks)))
    if not ks or ks[0] < 1 or ks[-1] > n:
        raise ValueError(f"ks must be a non-empty set of sizes in 1..{n}, got {ks}")
    if beam_width < 1 or chunk < 1 or max_subsets < 0:
        raise ValueError("beam_width and chunk must be >= 1 and max_subsets >= 0")
    plan = _plan(n, ks, max_subsets)
    total = sum(math.comb(n, k) if ex else _beam_cost(n, k, beam_width) for k, ex in plan.items())
    search = _Search(game, chunk, progress, total)
    out = OracleSets(sets={}, values={}, exhaustive={}, n_evals=0)
    beam: list[tuple[Subset, float]] = [((), math.nan)]
    for k, exhaustive in plan.items():
        if exhaustive:
            beam = search.exhaustive(k, beam_width)
        else:
            beam = search.beam(k, [s for s, _ in beam], beam_width)
        if k in ks:
            out.sets[k], out.values[k] = list(beam[0][0]), beam[0][1]
            out.exhaustive[k] = exhaustive
    out.n_evals = search.n_evals
    return out


def oracle_rank(oracle: OracleSets, n: int) -> np.ndarray:
    """The Oracle rank: unit indices, least important first.

    A unit's place is set by the size k of the smallest oracle set containing it (a unit
    first seen in the oracle set of size 1 is the least important); units first seen in
    the same set are ordered by lower index; units in no oracle set come last, by index.
    """
    first = np.full(n, np.inf)
    for k in sorted(oracle.sets):
        for unit in oracle.sets[k]:
            first[unit] = min(first[unit], k)
    return np.lexsort((np.arange(n), first))


def regret_at_k(game: Game, ranking, oracle: OracleSets, k: int) -> float:
    """oracle.values[k] - v(N minus the k lowest units of ``ranking``); >= 0 if exhaustive."""
    return regrets(game, ranking, oracle, ks=[k])[k]


def regrets(
    game: Game, ranking, oracle: OracleSets, ks: Iterable[int] | None = None
) -> dict[int, float]:
    """:func:`regret_at_k` for every size k of the oracle (or of ``ks``), in one game call."""
    ks = sorted(oracle.sets) if ks is None else list(ks)
    subsets = [tuple(lowest(ranking, k)) for k in ks]
    values = np.asarray(game.value(_removal_masks(subsets, game.n_players)), dtype=np.float64)
    return {k: oracle.values[k] - float(v) for k, v in zip(ks, values.reshape(-1), strict=True)}


def area_under_curve(x, y) -> float:
    """The trapezoid area under y(x) divided by the x range: the curve's mean height."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2 or x[-1] == x[0]:
        raise ValueError("x and y must be 1-d of equal length >= 2, with x[-1] != x[0]")
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))
