"""The estimators by name, and the one verb: ``estimate(game, method, budget, seed, **options)``.

Every method reads the game through the same budgeted view, so ``n_evals`` is the number
of coalitions really evaluated and never exceeds ``budget``. A new estimator is a subclass
of :class:`~shapprune.estimators.base.Estimator` plus ``register_estimator(...)``; it is then
reachable here, as the criterion ``shapley-<name>``, from the CLI and in experiment files.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from shapprune.estimators._budget import BudgetedGame, Game
from shapprune.estimators.bandit import Bandit
from shapprune.estimators.base import Answer, Estimate
from shapprune.estimators.catalog import (
    ESTIMATORS,
    estimator_options,
    get_estimator,
    register_estimator,
)
from shapprune.estimators.cut import Cut
from shapprune.estimators.exact import Exact
from shapprune.estimators.executors import Executor
from shapprune.estimators.kernel import Kernel
from shapprune.estimators.loo import LeaveOneOut
from shapprune.estimators.partial import Partial
from shapprune.estimators.permutation import Permutation
from shapprune.estimators.refine import Refine
from shapprune.estimators.resume import Checkpoint, RecordedGame, prepared_game
from shapprune.estimators.semivalue import Semivalue
from shapprune.progress import current_progress, staged_progress, using_progress

__all__ = [
    "ESTIMATORS",
    "default_budget",
    "estimate",
    "get_estimator",
    "register_estimator",
    "using_progress",
    "staged_progress",
]

for _builtin in (Exact, Permutation, Kernel, Partial, LeaveOneOut, Semivalue, Refine, Bandit, Cut):
    register_estimator(_builtin)


def __getattr__(name: str) -> Any:
    # METHODS is derived from the registry when read, so later registrations show up
    if name == "METHODS":
        return tuple(ESTIMATORS)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_budget(method: str, n: int, **options: Any) -> int:
    """The budget used when none is given: enough for a usable answer."""
    est = get_estimator(method)
    opts = estimator_options(method, options)
    return max(est.min_budget(n, opts), est.default_budget(n, opts))


def _plain(opts: Any) -> dict[str, Any]:
    return dataclasses.asdict(opts) if dataclasses.is_dataclass(opts) else {}


def estimate(
    game: Game,
    method: str = "permutation",
    budget: int | None = None,
    seed: int = 0,
    *,
    progress: Callable[..., None] | None = None,
    executor: Executor | None = None,
    checkpoint: Checkpoint | None = None,
    **options: Any,
) -> Estimate:
    """Estimate the value of every player of ``game``.

    ``method`` is a registered estimator (``ESTIMATORS``); ``budget`` caps the coalitions
    evaluated (default: ``default_budget``); ``options`` are the method's declared options
    (e.g. permutation: ``antithetic``, ``control``, ``truncation``, ``patience``; partial:
    depth ``k``; bandit: ``k``, ``top``, ``delta``, ...). ``progress(done, budget)`` is called
    after each evaluation batch; a callback with a third parameter also gets a status dict
    (the bandit's ``in_doubt``: players still straddling the cut).
    ``executor`` evaluates the coalitions (default: the one set by ``using_executor``, else
    this process); ``checkpoint`` records them and resumes an interrupted run (default: the
    one set by ``using_checkpoint``, else none): neither changes the values.
    """
    est = get_estimator(method)
    opts = estimator_options(method, options)
    n = int(game.n_players)
    est.check(n, opts)
    need = est.min_budget(n, opts)
    if budget is None:
        budget = max(need, est.default_budget(n, opts))
    if budget < need:
        raise ValueError(
            f"budget {budget} is too small for {method} on {n} players: "
            f"it needs at least {need} evaluations"
        )
    rng = np.random.default_rng(seed)
    key = {"method": method, "seed": seed, "budget": budget, "options": _plain(opts)}
    played = prepared_game(game, key, executor, checkpoint)
    progress = progress if progress is not None else current_progress()
    view = BudgetedGame(played, budget, progress=progress)
    start = time.perf_counter()
    try:
        answer = est(view, rng, opts)
    finally:  # interrupted or not, what was evaluated is kept
        if isinstance(played, RecordedGame):
            played.checkpoint.save()
    seconds = time.perf_counter() - start
    if not isinstance(answer, Answer):
        answer = Answer(*answer)
    values = np.asarray(answer.values, dtype=np.float64)
    if values.shape != (n,):
        raise RuntimeError(f"estimator {method!r} gave {values.shape} values for {n} players")
    stderr = np.zeros(n) if answer.stderr is None else np.asarray(answer.stderr, np.float64)
    selected = answer.selected
    if selected is not None:
        selected = np.asarray(selected, dtype=np.int64)
        if len(np.unique(selected)) != len(selected) or np.any((selected < 0) | (selected >= n)):
            raise RuntimeError(f"estimator {method!r} selected {selected}: not distinct players")
    return Estimate(
        values,
        stderr,
        view.n_evals,
        seconds,
        method,
        budget,
        seed,
        answer.info,
        selected=selected,
        confidence=answer.confidence,
        intervals=None if answer.intervals is None else np.asarray(answer.intervals),
    )
