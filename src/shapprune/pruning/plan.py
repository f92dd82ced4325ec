"""From scores to a plan: which units of which layers go.

A target is a fraction of the model's channels (units), parameters or MACs. Per layer,
every selected layer loses the same fraction of its units (or its own ratio); globally,
units of all selected layers compete on per-layer normalised scores. A layer is never
emptied, and the classifier's outputs are never players. Parameter and MAC targets are
met by bisection on the amount removed, measuring each candidate on a pruned copy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from shapprune.evaluation.measure import count_macs, count_params
from shapprune.evaluation.ranking import positions, ranking_from_scores
from shapprune.game.units import Units, prunable_units
from shapprune.progress import staged_progress
from shapprune.pruning.removal import apply_removals

TARGET_KINDS = ("channels", "params", "macs")
NORMALISATIONS = ("l1", "l2", "max", "rank", "lamp", "none")
COSTS = ("macs", "params")


@dataclass(frozen=True)
class Target:
    """Remove ``fraction`` of the model's ``kind`` (channels, params or macs)."""

    kind: str
    fraction: float

    @classmethod
    def parse(cls, text: str | float) -> Target:
        """``"macs=0.5"``, ``"params=0.3"``, ``"channels=0.5"`` or a bare fraction (channels)."""
        kind, _, value = str(text).rpartition("=")
        kind = kind or "channels"
        if kind not in TARGET_KINDS:
            raise ValueError(f"unknown target {kind!r}; use one of {', '.join(TARGET_KINDS)}")
        try:
            fraction = float(value)
        except ValueError:
            raise ValueError(f"target {text!r} needs a number, like macs=0.5") from None
        if not 0 < fraction < 1:
            raise ValueError(f"the pruning ratio must lie in (0, 1), got {fraction}")
        return cls(kind, fraction)

    def __str__(self) -> str:
        return f"{self.kind}={self.fraction:g}"


@dataclass
class Plan:
    """The units to remove, per layer (indices into each layer's players)."""

    removals: dict[str, list[int]]
    target: str
    achieved: float  # the fraction of the target's quantity that the plan removes
    global_: bool
    info: dict = field(default_factory=dict)

    @property
    def n_removed(self) -> int:
        return sum(len(v) for v in self.removals.values())

    def to_dict(self) -> dict:
        return {
            "removals": self.removals,
            "target": self.target,
            "achieved": self.achieved,
            "global": self.global_,
            **self.info,
        }


def prunable_layers(
    model: nn.Module, example: torch.Tensor, graph: tp.DependencyGraph | None = None
) -> dict[str, Units]:
    """The layers whose units can be removed: one representative per coupled group.

    Convolutions (channels), linear layers (neurons; not the classifier's outputs and not
    the projections inside attention modules) and attention modules (heads). ``graph``:
    the model's dependency graph, if already built.
    """
    return prunable_units(model, example, graph)


def normalise(scores: np.ndarray, how: str) -> np.ndarray:
    """Per-layer normalisation, so that units of different layers can be compared."""
    s = np.asarray(scores, dtype=np.float64)
    if how == "l1":
        return s / max(np.abs(s).sum(), 1e-12)
    if how == "l2":
        return s / max(np.sqrt((s**2).sum()), 1e-12)
    if how == "max":
        return s / max(np.abs(s).max(), 1e-12)
    if how == "rank":
        return (positions(ranking_from_scores(s)) + 1) / len(s)
    if how == "lamp":  # Lee et al. 2021: each unit's share of itself and the units above it
        s = s - min(s.min(), 0.0)  # shifted to be non-negative: a share needs it
        order = np.argsort(s, kind="stable")
        above = np.cumsum(s[order][::-1])[::-1]  # sum over the unit and every later one
        out = np.empty_like(s)
        out[order] = s[order] / np.maximum(above, 1e-12)
        return out
    if how == "none":
        return s
    raise ValueError(f"unknown normalisation {how!r}; use one of {', '.join(NORMALISATIONS)}")


def unit_costs(
    model: nn.Module,
    layers: Mapping[str, int],
    example: torch.Tensor,
    kind: str,
    apply: Callable[[nn.Module, dict[str, list[int]]], nn.Module] | None = None,
) -> dict[str, float]:
    """Per layer (-> its number of units), the MACs or parameters that removing one of its
    units saves: measured on a copy with unit 0 removed (a unit's own weights, its
    BatchNorm, and its consumers' input columns; coupled layers together)."""
    if kind not in COSTS:
        raise ValueError(f"unknown cost {kind!r}; use one of {', '.join(COSTS)}")
    measure = count_params if kind == "params" else lambda m: count_macs(m, example)
    apply = apply or (lambda m, r: apply_removals(m, r, example))
    full = measure(model)
    return {name: float(full - measure(apply(model, {name: [0]}))) for name in layers}


def probe_bound(n_amounts: int) -> int:
    """At most this many candidate removals are measured to choose among ``n_amounts``: the
    two ends, then a bisection step at least every other probe, plus the reachability check."""
    return 3 + 2 * math.ceil(math.log2(max(n_amounts - 1, 1)))


def _smallest_meeting(
    reduction: Callable[[float], float], fraction: float, amounts: Sequence[float]
) -> float:
    """The first of ``amounts`` (increasing, each removing a different set of units, the
    last meeting ``fraction``) whose removal meets ``fraction``.

    Each probe prunes a copy and measures it (a dependency graph traced on a real-size
    model: seconds), so the search is regula falsi over the amounts: MACs and parameters
    fall almost linearly with the amount, so the line through the bracket's ends lands
    within a few sets of the answer; a probe that failed to halve the bracket is followed
    by a bisection step, so that it takes at most about twice as many probes as bisection.
    """
    lo, hi = 0, len(amounts) - 1
    r_lo, r_hi = reduction(amounts[lo]), reduction(amounts[hi])
    if r_lo >= fraction:
        return amounts[lo]
    halve = False
    while hi - lo > 1:
        t = 0.5 if halve or r_hi <= r_lo else (fraction - r_lo) / (r_hi - r_lo)
        mid = min(max(lo + round(t * (hi - lo)), lo + 1), hi - 1)
        r, width = reduction(amounts[mid]), hi - lo
        if r >= fraction:
            hi, r_hi = mid, r
        else:
            lo, r_lo = mid, r
        halve = not halve and (hi - lo) > width / 2
    return amounts[hi]


def _amounts(sizes: Mapping[str, int], global_: bool) -> list[float]:
    """One amount inside each interval of amounts over which ``removals_for`` removes the
    same units (the counts are ``round(amount * n)``: they change at half-integers), from
    0 to 1 inclusive."""
    totals = [sum(sizes.values())] if global_ else list(sizes.values())
    edges = sorted({(j + 0.5) / n for n in totals for j in range(n)} | {0.0, 1.0})
    return [0.0, *((a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)), 1.0]


def _lowest(scores: np.ndarray, k: int) -> list[int]:
    return sorted(ranking_from_scores(scores)[:k].tolist())


def make_plan(
    model: nn.Module,
    scores: Mapping[str, np.ndarray],
    target: Target | str,
    example: torch.Tensor,
    *,
    global_: bool = False,
    normalisation: str = "l1",
    ratios: Mapping[str, float] | None = None,
    apply: Callable[[nn.Module, dict[str, list[int]]], nn.Module] | None = None,
    baseline: nn.Module | None = None,
    units: Mapping[str, Units] | None = None,
    cost: str | None = None,
    graph: tp.DependencyGraph | None = None,
    headroom: float = 1.0,
) -> Plan:
    """Choose the units to remove from ``scores`` (layer -> one score per unit, higher =
    more important) so that ``target`` is met.

    ``ratios`` gives each layer its own fraction of units instead (per-layer mode).
    ``apply(model, removals)`` returns a pruned copy, on which params/MACs targets are
    measured (default: physical removal, ``prune.apply_removals``);
    ``baseline`` is the model the target's fraction refers to (default: ``model``);
    ``units``: the layers' units found on ``model`` (:func:`layer_units`), passed on to the
    default ``apply`` so that it does not find them again, as ``graph`` (``model``'s
    dependency graph): the default ``apply`` copies it with each copy instead of building one.
    ``cost`` ("macs" or "params", global plans only): units compete on their normalised
    score per MAC or parameter their removal saves (:func:`unit_costs`), so that a cheap
    unit of little value is not cut before an expensive one of less value per cost.
    ``headroom`` (global plans): when the plan removes a fraction ``a`` of all the units,
    no layer loses more than ``a + headroom * (1 - a)`` of its own; 1: no cap (a layer may
    fall to one unit), 0: about the same fraction everywhere, still chosen by score. A
    cap keeps a global cut from starving a narrow layer that everything downstream needs
    (MobileNet-V2's bottlenecks: BENCHMARKS.md section 17).
    """
    target = Target.parse(target) if isinstance(target, str | float) else target
    if normalisation not in NORMALISATIONS:
        normalise(np.zeros(1), normalisation)  # raises the clear error
    sizes = {name: len(s) for name, s in scores.items()}
    for name, n in sizes.items():
        if n < 2:
            raise ValueError(f"layer {name!r} has {n} unit; at least one must stay")
    if ratios is not None:
        removals = {}
        for name, r in ratios.items():
            if name not in scores:
                raise ValueError(f"ratio given for {name!r}, which has no scores")
            if not 0 < r < 1:
                raise ValueError(f"the pruning ratio must lie in (0, 1), got {r} for {name!r}")
            removals[name] = _lowest(scores[name], min(int(r * sizes[name]), sizes[name] - 1))
        return Plan(removals, "per-layer ratios", float("nan"), False, {"ratios": dict(ratios)})

    if cost is not None and not global_:
        raise ValueError("a cost-aware plan ranks units across layers: it needs global_=True")
    if not 0 <= headroom <= 1:
        raise ValueError(f"headroom is a fraction in [0, 1], got {headroom}")
    info = {"normalisation": normalisation, "cost": cost}  # how the plan ranked the units
    if global_:
        info["headroom"] = headroom
    if apply is None:

        def apply(m: nn.Module, removals: dict[str, list[int]]) -> nn.Module:
            known = graph if m is model else None
            return apply_removals(m, removals, example, units=units, graph=known)

    per_unit = unit_costs(model, sizes, example, cost, apply) if cost else {}
    if any(c <= 0 for c in per_unit.values()):
        free = [name for name, c in per_unit.items() if c <= 0]
        raise ValueError(f"removing a unit of {', '.join(free)} saves no {cost}; drop --cost")
    if global_:
        flat = [
            (value / per_unit.get(name, 1.0), name, int(i))
            for name, s in scores.items()
            for i, value in enumerate(normalise(s, normalisation))
        ]
        flat.sort(key=lambda t: (t[0], t[1], t[2]))

        def removals_for(amount: float) -> dict[str, list[int]]:
            k = int(round(amount * sum(sizes.values())))
            share = amount + headroom * (1 - amount)  # of each layer, at most
            cap = {name: min(n - 1, math.ceil(share * n - 1e-9)) for name, n in sizes.items()}
            out: dict[str, list[int]] = {name: [] for name in scores}
            for _, name, i in flat:
                if k == 0:
                    break
                if len(out[name]) < cap[name]:
                    out[name].append(i)
                    k -= 1
            return {name: sorted(v) for name, v in out.items()}
    else:

        def removals_for(amount: float) -> dict[str, list[int]]:
            return {
                name: _lowest(s, min(int(round(amount * sizes[name])), sizes[name] - 1))
                for name, s in scores.items()
            }

    if target.kind == "channels":
        total = sum(sizes.values())
        removals = removals_for(target.fraction)
        achieved = sum(len(v) for v in removals.values()) / total
        return Plan(removals, str(target), achieved, global_, info)

    base = baseline if baseline is not None else model
    measure = count_params if target.kind == "params" else lambda m: count_macs(m, example)
    original = measure(base)

    amounts = _amounts(sizes, global_)  # one per distinct removal set
    bound = probe_bound(len(amounts))
    # a command's display: each candidate removal counted
    report = staged_progress(f"planning to {target}", "candidate removals (at most)")
    tried = [0]

    @functools.cache  # the bisection revisits its end points: measure each amount once
    def reduction(amount: float) -> float:
        pruned = apply(model, removals_for(amount))
        tried[0] += 1
        if report is not None:
            report(tried[0], bound)
        return 1 - measure(pruned) / original

    most = reduction(1.0)
    if most < target.fraction:
        raise ValueError(
            f"target {target} is unreachable: removing all but one unit of each selected "
            f"layer removes only {most:.1%} of the {target.kind}; select more layers or lower "
            "the target"
        )
    hi = _smallest_meeting(reduction, target.fraction, amounts)
    removals = removals_for(hi)
    achieved = reduction(hi)
    return Plan(removals, str(target), achieved, global_, info)
