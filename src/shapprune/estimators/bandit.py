"""Neuron Shapley's bandit: settle which k players are the lowest (or highest) without
estimating every value precisely.

Pruning needs only the side of the cut each unit falls on. Removal walks over random
permutations (from the full coalition down) give each player a marginal per walk, as in
permutation sampling; but once a player's empirical-Bernstein interval (Maurer and Pontil
2009) no longer contains the threshold between the k-th and the (k+1)-th mean, it is
settled: later walks remove it without an evaluation and record no marginal for it. The
evaluations go to the players near the cut, and the run stops once none is in doubt.

Where this departs from Neuron Shapley's public code: the cut is the midpoint between the
k-th and (k+1)-th means (theirs is the (k+1)-th mean, so one player never settles and
they stop at one in doubt); delta covers all players together (a union bound: each
interval at delta / n); R, the range in the Bernstein bound, is the range of all the
marginals seen (theirs a constant per metric: 1 for accuracy, ln(classes) for the loss).
Walks remove players in the same order and hand over their marginals when they end, as
theirs do; a player removed without an evaluation makes the next one cost two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from shapprune.estimators._budget import BudgetedGame
from shapprune.estimators.base import Answer, Estimator
from shapprune.estimators.permutation import sampling_default_budget
from shapprune.options import option

__all__ = ["Bandit", "BanditOptions", "CutChoice", "bandit", "resolve_k"]


@dataclass
class CutChoice:
    """What a top-/bottom-k estimator settles, and at what confidence: the options the
    bandit and the cut estimator share."""

    k: float | None = option(
        None,
        "players to settle: a count >= 1 or a fraction in (0, 1) (None: the pruning "
        "target's fraction of channels where there is one, else 0.5)",
    )
    top: bool = option(False, "settle the k highest instead of the k lowest")
    delta: float = option(0.1, "failure probability of all the intervals together, in (0, 1)")

    def __post_init__(self) -> None:
        if self.k is not None and not self.k > 0:
            raise ValueError(f"k must be a count >= 1 or a fraction in (0, 1), got {self.k}")
        if self.k is not None and self.k >= 1 and self.k != int(self.k):
            raise ValueError(f"k must be a whole count or a fraction in (0, 1), got {self.k}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be a probability in (0, 1), got {self.delta}")


@dataclass
class BanditOptions(CutChoice):
    """Options of the bandit."""

    truncation: float | None = option(
        None, "stop a walk once |v(S) - v(empty)| stays below this tolerance"
    )
    patience: int = option(3, "steps below the truncation tolerance before a walk stops")
    walks: int = option(8, "walks advanced together: one batch of coalitions per step")
    min_samples: int = option(5, "marginals a player needs before it can settle (>= 2)")
    value_range: float | None = option(
        None, "R of the Bernstein bound, a marginal's range (default: the range seen so far)"
    )
    player_range: bool = option(
        False, "R from each player's own marginals: settles sooner, rare large marginals fool it"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.truncation is not None and self.truncation < 0:
            raise ValueError(f"truncation must be a tolerance >= 0, got {self.truncation}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.walks < 1:
            raise ValueError(f"walks must be >= 1, got {self.walks}")
        if self.min_samples < 2:
            raise ValueError(f"min_samples must be >= 2, got {self.min_samples}")
        if self.value_range is not None and not self.value_range > 0:
            raise ValueError(f"value_range must be > 0, got {self.value_range}")


DEFAULT_K = 0.5


def resolve_k(k: float | None, n: int) -> int:
    """The count that ``k`` (a count, or a fraction of the ``n`` players) stands for."""
    k = DEFAULT_K if k is None else k
    count = int(k) if k >= 1 else max(1, int(round(k * n)))
    if count >= n:
        raise ValueError(f"k must leave players on both sides of the cut: k={k} of {n} players")
    return count


class _Stats:
    """Running marginals per player: counts, sums, squares, and the range seen."""

    def __init__(self, n: int) -> None:
        self.count = np.zeros(n, dtype=np.int64)
        self.total = np.zeros(n)
        self.squares = np.zeros(n)
        self.low = np.full(n, np.inf)
        self.high = np.full(n, -np.inf)

    def add(self, players: np.ndarray, margs: np.ndarray) -> None:
        np.add.at(self.count, players, 1)
        np.add.at(self.total, players, margs)
        np.add.at(self.squares, players, margs * margs)
        np.minimum.at(self.low, players, margs)
        np.maximum.at(self.high, players, margs)

    def mean(self) -> np.ndarray:
        zeros = np.zeros_like(self.total)
        return np.divide(self.total, self.count, out=zeros, where=self.count > 0)

    def var(self) -> np.ndarray:
        """Sample variance (ddof 1), 0 below two samples."""
        c = self.count
        centred = self.squares - self.total * self.mean()
        out = np.divide(centred, c - 1, out=np.zeros_like(self.total), where=c > 1)
        return np.maximum(out, 0.0)


class _Bounds:
    """Empirical-Bernstein half-widths and the cut, from the running statistics."""

    def __init__(
        self, stats: _Stats, k: int, top: bool, value_range: float | None, player_range: bool
    ) -> None:
        self.n = len(stats.count)
        self.count, self.mean, self.var = stats.count, stats.mean(), stats.var()
        if value_range is not None:
            self.range = np.full(self.n, float(value_range))
        elif player_range:
            self.range = np.where(stats.count > 0, stats.high - stats.low, 0.0)
        else:
            seen = stats.high.max() - stats.low.min() if stats.count.any() else 0.0
            self.range = np.full(self.n, seen)
        key = -self.mean if top else self.mean
        order = np.argsort(key, kind="stable")
        self.selected = order[:k]
        self.threshold = float(self.mean[order[k - 1]] + self.mean[order[k]]) / 2

    def halfwidth(self, delta: float) -> np.ndarray:
        """Maurer-Pontil, two-sided, union over the players: each at delta / n."""
        log = np.log(4 * self.n / delta)
        c = np.maximum(self.count, 2)  # below two samples: the trivial bound, the range
        cb = np.sqrt(2 * self.var * log / c) + 7 / 3 * self.range * log / (c - 1)
        return np.where(self.count >= 2, cb, self.range)

    def doubt(self, delta: float, min_samples: int) -> np.ndarray:
        """Players whose interval still contains the threshold, or with too few samples."""
        gap = np.abs(self.mean - self.threshold)
        return (self.count < min_samples) | (gap <= self.halfwidth(delta))

    def confidence(self, min_samples: int) -> float:
        """1 - the smallest delta at which every player would be settled (0 if none)."""
        if np.any(self.count < max(min_samples, 2)):
            return 0.0
        gap = np.abs(self.mean - self.threshold)
        a = np.sqrt(2 * self.var / self.count)  # cb = a sqrt(L) + b L, L = ln(4n / delta)
        b = 7 / 3 * self.range / (self.count - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            root = np.where(
                b > 0,
                (-a + np.sqrt(a * a + 4 * b * gap)) / (2 * np.where(b > 0, b, 1)),
                np.where(a > 0, gap / np.where(a > 0, a, 1), np.inf),
            )
        log_needed = root**2  # the largest L at which each player is settled
        worst = float(np.min(log_needed))
        return float(np.clip(1 - 4 * self.n * np.exp(-worst), 0.0, 1.0))


@dataclass
class _Walk:
    """One removal walk: its order, the next position, who is left, the value there, and
    the marginals it found (handed over when it ends)."""

    order: np.ndarray
    alive: np.ndarray
    base: float | None  # v(alive), when known
    pos: int = 0
    quiet: int = 0
    players: list[int] = field(default_factory=list)
    margs: list[float] = field(default_factory=list)

    def cost_bound(self, doubt: np.ndarray) -> int:
        """Most evaluations the rest of the walk can take, with today's doubt."""
        ahead = int(doubt[self.order[self.pos :]].sum())
        return min(2 * ahead, self.len_left() + 1)

    def len_left(self) -> int:
        return len(self.order) - self.pos


def bandit(
    game: BudgetedGame,
    rng: np.random.Generator,
    k: int,
    top: bool = False,
    delta: float = 0.1,
    truncation: float | None = None,
    patience: int = 3,
    walks: int = 8,
    min_samples: int = 5,
    value_range: float | None = None,
    player_range: bool = False,
    on_round: Callable[[int, _Bounds], None] | None = None,
) -> Answer:
    """The k lowest (``top``: highest) players, settled by empirical-Bernstein intervals.

    ``walks`` removal walks advance together; each step evaluates, per walk, v(S minus p)
    for its next player p in doubt (and v(S) again when settled players were removed
    since the last evaluation), all in one batch. A walk's marginals count once it ends,
    so that every sample comes from a whole random ordering (a walk's first steps only
    see marginals against nearly full coalitions); a walk starts only while the budget
    can carry it to its end. With ``truncation`` a walk stops once |v(S) - v(empty)| stayed
    below it for ``patience`` evaluated steps; the players in doubt it did not reach get a
    zero marginal. The plan never depends on what the budget's memo saved: evaluations
    asked for are counted, not those paid. ``on_round(spent, bounds)`` sees every update
    of the bounds (for benchmarks).
    """
    n = game.n
    game.status["in_doubt"] = n  # what progress reports show
    v_full, v_empty = game.full_and_empty()
    stats = _Stats(n)
    spent, started, finished, truncated, skipped = 2, 0, 0, 0, 0
    doubt = np.ones(n, dtype=bool)
    bounds = _Bounds(stats, k, top, value_range, player_range)
    slots: list[_Walk | None] = [None] * walks
    while True:
        ended = [w for w in slots if w is not None and w.pos >= n]
        if ended:
            for walk in ended:
                stats.add(np.asarray(walk.players, dtype=np.int64), np.asarray(walk.margs))
            finished += len(ended)
            slots = [None if w is not None and w.pos >= n else w for w in slots]
            bounds = _Bounds(stats, k, top, value_range, player_range)
            doubt = bounds.doubt(delta, min_samples)
            if on_round is not None:
                on_round(spent, bounds)
        if not doubt.any():
            break
        game.status["in_doubt"] = int(doubt.sum())  # what progress reports show
        reserved = sum(w.cost_bound(doubt) for w in slots if w is not None)
        for s in range(walks):
            need = min(2 * int(doubt.sum()), n)
            if slots[s] is None and game.budget - spent - reserved >= need:
                slots[s] = _Walk(rng.permutation(n), np.ones(n, dtype=bool), base=v_full)
                started += 1
                reserved += need
        if all(w is None for w in slots):
            break  # the budget cannot carry another walk to its end
        plans: list[tuple[int, bool, bool]] = []  # (slot, needs v(S), needs v(S minus p))
        for s, walk in enumerate(slots):
            if walk is None:
                continue
            # settled players ahead are removed without an evaluation
            ahead = doubt[walk.order[walk.pos :]]
            step = int(np.argmax(ahead)) if ahead.any() else walk.len_left()
            if step:
                walk.alive[walk.order[walk.pos : walk.pos + step]] = False
                walk.pos += step
                skipped += step
                walk.base = v_empty if walk.pos >= n else None
            if walk.pos < n:
                last = int(walk.alive.sum()) == 1  # then v(S minus p) = v(empty), known
                plans.append((s, walk.base is None, not last))
        cost = np.cumsum([int(a) + int(b) for _, a, b in plans])
        fit = int(np.searchsorted(cost, game.budget - spent, side="right"))
        if fit < len(plans):  # doubt grew since the walks started: whole steps only
            plans = plans[:fit]
            if not plans:
                break
        masks = []
        for s, need_base, need_after in plans:
            walk = slots[s]
            if need_base:
                masks.append(walk.alive.copy())
            if need_after:
                after = walk.alive.copy()
                after[walk.order[walk.pos]] = False
                masks.append(after)
        got = iter(game.values(np.stack(masks)).tolist() if masks else [])
        spent += len(masks)
        for s, need_base, need_after in plans:
            walk = slots[s]
            before = next(got) if need_base else walk.base
            after = next(got) if need_after else v_empty
            p = int(walk.order[walk.pos])
            walk.alive[p] = False
            walk.pos += 1
            walk.players.append(p)
            walk.margs.append(before - after)
            walk.base = after
            if truncation is not None:
                walk.quiet = walk.quiet + 1 if abs(after - v_empty) < truncation else 0
                if walk.quiet >= patience:  # the rest of the walk's marginals count as zero
                    rest = walk.order[walk.pos :]
                    rest = rest[doubt[rest]].tolist()
                    walk.players.extend(rest)
                    walk.margs.extend([0.0] * len(rest))
                    walk.pos = n
                    truncated += 1
    in_doubt = np.flatnonzero(doubt)
    game.status["in_doubt"] = len(in_doubt)
    confidence = bounds.confidence(min_samples)
    cb = bounds.halfwidth(delta)
    info = {
        "k": k,
        "top": top,
        "delta": delta,
        "target_confidence": 1 - delta,
        "settled": len(in_doubt) == 0,
        "in_doubt": len(in_doubt),
        "in_doubt_players": in_doubt.tolist(),
        "threshold": bounds.threshold,
        "walks": finished,
        "walks_unfinished": started - finished,  # the budget ended them: not counted
        "truncation": truncation,
        "truncated_walks": truncated,
        "skipped_steps": skipped,
        "samples": [int(bounds.count.min()), int(np.median(bounds.count)), int(bounds.count.max())],
    }
    stderr = np.sqrt(np.divide(bounds.var, np.maximum(bounds.count, 1)))
    return Answer(
        bounds.mean,
        stderr,
        info,
        selected=bounds.selected,
        confidence=confidence,
        intervals=np.stack([bounds.mean - cb, bounds.mean + cb], axis=1),
    )


class Bandit(Estimator):
    """Neuron Shapley's bandit: the k lowest players (``top``: highest), settled with a
    confidence, in the set-valued ``Estimate`` (``selected``, ``confidence``, ``intervals``).

    Where the budget ends before every player is settled, ``selected`` is the best guess
    (the k lowest means), ``confidence`` falls below 1 - delta and ``info["in_doubt"]``
    says how many players still straddle the cut (near-ties are reported, not hidden;
    ``info["in_doubt_players"]`` names them). ``confidence`` is 1 minus the smallest
    failure probability at which every player would be settled. With ``top`` the k
    highest are ``selected`` and, as for any selected set, listed first by ``ranking``.
    Kept as Neuron Shapley's reference method: ``cut`` settles the same question with far
    fewer evaluations (BENCHMARKS.md, section 18).
    """

    name = "bandit"
    Options = BanditOptions
    cut = "k"  # a pruning target's fraction of channels fills k when it was left None

    def check(self, n: int, options: BanditOptions) -> None:
        resolve_k(options.k, n)

    def min_budget(self, n: int, options: BanditOptions) -> int:
        return 2 + 2 * max(n - 1, 0)  # two whole walks: a variance for every player

    def default_budget(self, n: int, options: BanditOptions) -> int:
        return sampling_default_budget(n)  # permutation's: the bandit stops once settled

    def __call__(self, game: BudgetedGame, rng: np.random.Generator, options: BanditOptions):
        return bandit(
            game,
            rng,
            resolve_k(options.k, game.n),
            top=options.top,
            delta=options.delta,
            truncation=options.truncation,
            patience=options.patience,
            walks=options.walks,
            min_samples=options.min_samples,
            value_range=options.value_range,
            player_range=options.player_range,
        )
