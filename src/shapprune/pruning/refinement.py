"""Refining a plan at its target: swap units within layers, judged by the whole network.

A criterion scores units one by one; the plan then cuts the lowest. Whether those units can
go *together* is a question about the set, which the network game answers directly: the
value of the network with exactly that set removed, on the reference examples. Refinement
starts from the plan's set and runs the beam search over swaps of
:func:`shapprune.estimators.refine.refine_search` on one :class:`NetworkGame` over the
plan's layers, with swaps kept within a layer: the number of units each layer loses, and so
the MACs and parameters the plan reaches, stay exactly as planned. The scores order the
swaps tried (the unit put back the best scored, the one taken out the worst).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from shapprune.estimators._budget import BudgetedGame
from shapprune.estimators.refine import refine_search
from shapprune.game.network_game import NetworkGame
from shapprune.game.units import Units
from shapprune.progress import staged_progress

__all__ = ["refine_plan"]

STEPS = 8
"""The budget is spread over about this many steps of the search, each trying the
cheapest-looking swaps of the beam's sets: one big step would make at most one swap."""


def refine_plan(
    model: nn.Module,
    removals: Mapping[str, Sequence[int]],
    scores: Mapping[str, np.ndarray],
    data,
    budget: int,
    *,
    units: Mapping[str, Units] | None = None,
    compensate: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
    metric: str = "loss",
    beam: int = 4,
    deadline: float | None = None,
) -> tuple[dict[str, list[int]], dict]:
    """The plan's ``removals`` improved by at most ``budget`` evaluations of whole removal
    sets on ``data`` (the reference examples), each layer losing as many units as planned.

    ``compensate``: the reference inputs whose means removed units leave behind (as the
    removal that follows will do), or those means already read (``consumer_means`` on
    ``model``), else None (zeroed). ``deadline`` (a
    ``time.perf_counter()`` time): the search stops there (a time budget running out).
    Returns the removals and a record (value before and after, sets evaluated, units
    swapped, ``stopped: "time"`` where the deadline ended it).
    """
    if budget < 2:
        raise ValueError(f"refinement needs a budget of at least 2 evaluations, got {budget}")
    layers = [name for name in scores if name in removals]
    if not any(len(removals[name]) for name in layers):  # nothing to swap: no game to build
        return {name: list(removals[name]) for name in removals}, {"sets_evaluated": 0}
    given = {name: units[name] for name in layers} if units else None
    game = NetworkGame(
        model,
        data,
        layers,
        metric=metric,
        units=given,
        compensate=compensate if compensate is not None else False,
    )
    groups = np.concatenate([np.full(len(scores[name]), i) for i, name in enumerate(layers)])
    values = np.concatenate([np.asarray(scores[name], dtype=np.float64) for name in layers])
    start = tuple(
        sorted(game.players_of(name).start + int(u) for name in layers for u in removals[name])
    )
    budgeted = BudgetedGame(game, budget, progress=staged_progress("refining"))
    step = max(4, budget // STEPS)  # candidate swaps per step: several steps of climbing
    best, info = refine_search(
        budgeted, values, len(start), budget, beam=beam, step=step, start=start, groups=groups,
        deadline=deadline,
    )  # fmt: skip
    out: dict[str, list[int]] = {name: list(removals[name]) for name in removals}
    for name in layers:
        sl = game.players_of(name)
        out[name] = sorted(int(p) - sl.start for p in best if sl.start <= p < sl.stop)
    return out, info
