"""The whole job: score, plan, prune (one-shot or iterative), fine-tune, measure."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from shapprune.criteria.registry import get_criterion
from shapprune.data import DatasetSplits, as_splits, examples, reference_set, split_size
from shapprune.devices import autocast, check_precision, device_of
from shapprune.evaluation.measure import count_macs, evaluate, measure
from shapprune.game.compensation import consumer_means
from shapprune.game.coupling import release
from shapprune.game.units import Units, build_graph, layer_units
from shapprune.pruning.budget import (
    MEASURE_MARGIN,
    Clock,
    forward_seconds,
    measure_seconds,
    parse_duration,
    reference_per_class,
    refine_evaluations,
)
from shapprune.pruning.defaults import PRUNE_DEFAULTS, resolve_cost
from shapprune.pruning.plan import Plan, Target, make_plan, prunable_layers
from shapprune.pruning.recalibration import recalibrate_batchnorm
from shapprune.pruning.refinement import refine_plan
from shapprune.pruning.removal import apply_removals, history
from shapprune.training import train_model


def select_layers(
    model: nn.Module,
    example: torch.Tensor,
    layers: Sequence[str] | None,
    graph: tp.DependencyGraph | None = None,
) -> dict[str, Units]:
    """The layers to prune, with their units: the given ones (checked), else every prunable
    layer (``graph``: the model's dependency graph, if built)."""
    available = prunable_layers(model, example, graph)
    if not layers:
        return available
    unknown = [name for name in layers if name not in available]
    if unknown:
        raise ValueError(
            f"not prunable layer(s): {', '.join(unknown)}; prunable layers: " + ", ".join(available)
        )
    return {name: available[name] for name in layers}


def prune_model(
    model: nn.Module,
    data: DatasetSplits | Any,
    criterion=None,
    target: Target | str | None = None,
    *,
    layers: Sequence[str] | None = None,
    global_: bool | str = PRUNE_DEFAULTS.global_,
    steps: int = PRUNE_DEFAULTS.steps,
    normalisation: str | None = None,
    mode: str = PRUNE_DEFAULTS.mode,
    per_class: int = PRUNE_DEFAULTS.per_class,
    seed: int = PRUNE_DEFAULTS.seed,
    finetune_epochs: int = 0,
    finetune_lr: float = 1e-3,
    compensate: bool | str | None = PRUNE_DEFAULTS.compensate,
    cost: str | None = PRUNE_DEFAULTS.cost,
    refine: int = PRUNE_DEFAULTS.refine,
    time_budget: float | str | Clock | None = None,
    precision: str = PRUNE_DEFAULTS.precision,
    recalibrate: bool = PRUNE_DEFAULTS.recalibrate,
    headroom: float = PRUNE_DEFAULTS.headroom,
    report: Callable[[str], None] | None = None,
) -> tuple[nn.Module, dict]:
    """Prune ``model`` by ``criterion`` until ``target`` is met; return the pruned model and
    a summary of before/after. Called with the model and data alone, it runs what
    ``shapprune prune`` runs: every default is ``PRUNE_DEFAULTS``'s
    (``shapprune.pruning.defaults``), which the command reads too.

    ``criterion``: a registered criterion's name, or an object with
    ``score(model, layers, data, seed)``; default ``PRUNE_DEFAULTS.criterion`` (lrp).
    ``target``: a ``Target`` or its text (``"macs=0.5"``); default ``PRUNE_DEFAULTS.target``.

    ``data``: ``DatasetSplits`` (tensors or streamed), a torch Dataset, a DataLoader,
    ``(x, y)`` tensors or a dict of them (keys train/val/test; see
    ``shapprune.data.as_splits``). Scores come from ``per_class`` reference examples per
    class of the validation split (only those are held in memory).
    With ``steps`` > 1, the target is reached in equal steps and the scores are computed
    anew on the pruned network before each step. The test split measures the result.
    ``normalisation`` (of the scores, for a global plan): default the criterion's own
    (``l1``; ``none`` for a network-wide game's values), and with ``global_="auto"`` a
    second global plan on LAMP's shares alone (``lamp``, no cost) competes too.
    ``compensate``: removed units leave their mean over the reference examples as a bias in
    their consumers (``shapprune.game.compensation``) rather than zero; "auto": both are
    built and the one with the lower loss on the reference examples is kept (per step);
    None: ``PRUNE_DEFAULTS.compensate`` ("auto"). A game criterion values units for its own
    way of removing them (its option ``compensate``): an explicit True/False must agree.
    ``global_``: units compete across layers (True), or each layer loses the same fraction
    (False); "auto": both plans (and LAMP's global plan, see ``normalisation``) are built
    and the one whose removal has the lower loss on
    the reference examples is kept (per step): a global cut can starve a layer that a
    residual network cannot do without.
    ``headroom`` (global plans): when a fraction ``a`` of all units goes, no layer loses
    more than ``a + headroom * (1 - a)`` of its own (1: no cap; ``make_plan``).
    ``cost`` ("macs" or "params", for a global plan): units compete on score per cost
    saved; "auto": the target's kind for a macs or params target; None: score alone.
    ``refine``: evaluations of whole removal sets on the reference examples spent swapping
    units within layers to improve the plan at its target (``refine_plan``); 0: none. They
    are held to what the model's size allows (``shapprune.pruning.budget``: a ResNet-50 at
    224 px gets about 10) or, with ``time_budget``, to what the time allows.
    ``time_budget``: seconds, a duration text (``"90s"``, ``"10m"``) or a started ``Clock``
    (a command starts one before it loads the model, so that loading counts): scoring and
    planning run as they must, measuring is reserved for, and refinement gets the rest and
    stops when it is spent. The summary's ``stages`` holds each stage's seconds.
    ``precision``: "bfloat16" or "float16" (CUDA) run the evaluations of removals (the
    compensation and scope choices, refinement) under autocast; scoring and the measured
    accuracies stay float32 (``shapprune.devices.autocast``).
    ``recalibrate``: every removal built (the ones compared and the one kept) has its
    BatchNorm layers' running statistics re-estimated on the reference examples
    (``shapprune.pruning.recalibration``); refinement's evaluations, on masked copies,
    keep the original statistics.
    """
    if criterion is None or isinstance(criterion, str):
        criterion = get_criterion(criterion or PRUNE_DEFAULTS.criterion)
    target = PRUNE_DEFAULTS.target if target is None else target
    target = Target.parse(target) if isinstance(target, str | float) else target
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if global_ not in (True, False, "auto"):
        raise ValueError(f"global_ must be true, false or 'auto'; got {global_!r}")
    cost = resolve_cost(cost, global_, target.kind)
    if cost is not None and not global_:
        raise ValueError("a cost-aware plan ranks units across layers: it needs global_=True")
    if refine < 0:
        raise ValueError(f"refine is a number of evaluations, >= 0; got {refine}")
    if not 0 <= headroom <= 1:
        raise ValueError(f"headroom is a fraction in [0, 1], got {headroom}")
    if mode == "mask" and steps > 1:
        raise ValueError("iterative pruning (steps > 1) needs mode='remove'")
    check_precision(precision, device_of(model))
    say = report or (lambda _msg: None)
    clock = _clock(time_budget)
    own = getattr(criterion, "normalisation", "l1")
    # auto scope, the criterion's normalisation: LAMP's shares are a third candidate
    lamp_too = normalisation is None and own not in ("lamp", "none")
    normalisation = normalisation or own
    compensate = _compensates(criterion, compensate)
    data = as_splits(data, seed)
    if finetune_epochs > 0 and data.train is None:
        raise ValueError("fine-tuning needs a training split: give data with one (train=...)")
    example = examples(data.val, 2)
    pass_s, measure_s = None, 0.0
    if clock.limit is not None:  # a pass per example, timed: what every stage is counted in
        probe = examples(data.val, 8)
        example_s = forward_seconds(model, probe.to(device_of(model))) / len(probe)
        measure_s = measure_seconds(split_size(data.test), example_s)
        per_class, why = reference_per_class(per_class, data.num_classes, clock,
                                             example_s=example_s, measure_s=measure_s)  # fmt: skip
        if why:
            say(f"time budget: {why}")
    ref = reference_set(data.val, per_class=per_class, seed=seed, classes=data.classes)
    graph = build_graph(model, example)  # one per model pruned: copies are made with it
    units = select_layers(model, example, layers, graph)  # found once per model, passed on
    chosen = list(units)
    pass_macs = count_macs(model, example) * len(ref)  # one reference pass: what refining costs
    if clock.limit is not None:
        pass_s = example_s * len(ref)
        say(_budget_plan(clock, pass_s, len(ref), measure_s / pass_s, refine, steps))
    measure_passes = measure_s / pass_s if pass_s else 0.0
    start = time.perf_counter()
    current, plans = model, []
    for step in range(1, steps + 1):
        step_target = _step_target(target, step, steps)
        say(f"step {step}/{steps}: scoring {', '.join(chosen)}")

        def fraction(current=current, units=units, step_target=step_target, graph=graph):
            return units_fraction(current, units, step_target, example, model, graph)

        with _cut(criterion, step_target, fraction), clock.stage("scoring"):
            scores = criterion.score(current, chosen, (ref.x, ref.y), seed=seed)
        with clock.stage("planning"), autocast(precision, device_of(current)):
            plan, fills, built, means = _best_plan(
                current, scores, step_target, example, global_, normalisation, model, units,
                cost, mode, compensate, ref, say, f"step {step}/{steps}", graph, recalibrate,
                headroom, lamp_too,
            )  # fmt: skip
        evaluations, why = refine_evaluations(
            refine, clock, pass_macs=pass_macs, pass_s=pass_s,
            measure_passes=measure_passes,
        )  # fmt: skip
        if clock.limit is not None:
            evaluations = evaluations // (steps - step + 1)  # the steps left share the time
        if evaluations < refine:
            say(f"step {step}/{steps}: refining with {evaluations} of the {refine} "
                f"evaluations asked ({why})")  # fmt: skip
        if evaluations >= 2:
            say(f"step {step}/{steps}: refining the plan ({evaluations} evaluations)")
            deadline = None
            if clock.limit is not None:  # evaluations slower than one pass: stop in time
                deadline = time.perf_counter() + 1.25 * evaluations * pass_s
            with clock.stage("refining"), autocast(precision, device_of(current)):
                plan.removals, plan.info["refinement"] = refine_plan(
                    current, plan.removals, scores, (ref.x, ref.y), evaluations, units=units,
                    compensate=means if fills else None, deadline=deadline,
                )  # fmt: skip
                if plan.info["refinement"].get("swapped"):  # other units go: build that
                    fill = means if fills else None
                    built = apply_removals(current, plan.removals, example, mode=mode,
                                           units=units, compensate=fill, graph=graph)  # fmt: skip
                    _recalibrated(built, ref, recalibrate)
            plan.info["refinement"]["evaluations_allowed"] = evaluations
        current = built
        release(graph)  # the pruned model's graph, if another step needs one, is its own
        if step < steps:
            graph = build_graph(current, example)
            units = layer_units(current, chosen, example, graph)
        plans.append({**plan.to_dict(), "scores": {k: v.tolist() for k, v in scores.items()}})
    score_seconds = time.perf_counter() - start
    if finetune_epochs > 0:
        say(f"fine-tuning for {finetune_epochs} epochs")
        current.train()
        with clock.stage("fine-tuning"):
            train_model(current, data, epochs=finetune_epochs, lr=finetune_lr, seed=seed)
        current.eval()
    loading = {"batch_size": data.batch_size, "workers": data.workers}
    with clock.stage("measuring"):
        before = measure(model, data.test, stage="measuring the original", **loading)
        after = measure(current, data.test, stage="measuring the pruned model", **loading)
    summary = {
        "target": str(target),
        "criterion": getattr(criterion, "name", type(criterion).__name__),
        "layers": chosen,
        "global": global_,
        "steps": steps,
        "mode": mode,
        "compensate": compensate,
        "cost": cost,
        "refine": refine,
        "precision": precision,
        "recalibrate": recalibrate,
        "headroom": headroom,
        "reference_examples": len(ref),
        "finetune_epochs": finetune_epochs,
        "seconds_scoring_and_planning": score_seconds,
        "time_budget": clock.limit,
        "stages": {name: round(t, 3) for name, t in clock.stages.items()},
        "before": before,
        "after": after,
        "removed": _removed_by_layer(plans),
        "history": history(current),
        "plans": plans,
        "notes": list(dict.fromkeys(getattr(criterion, "notes", []))),
    }
    return current, summary


def _clock(time_budget: float | str | Clock | None) -> Clock:
    """The run's clock: the one given (started by a command before loading), else one
    started now with the budget's limit (None: no limit)."""
    if isinstance(time_budget, Clock):
        return time_budget
    return Clock(None if time_budget is None else parse_duration(time_budget))


def _budget_plan(
    clock: Clock, pass_s: float, n_ref: int, measure_passes: float, refine: int, steps: int
) -> str:
    """The plan a time budget makes, said before the work starts."""
    left = clock.left()
    reserve = MEASURE_MARGIN * measure_passes * pass_s
    return (
        f"time budget {clock.limit:.0f} s ({left:.0f} s left): one forward pass of the {n_ref} "
        f"reference examples takes {pass_s:.2f} s; about {measure_passes:.0f} passes "
        f"({reserve:.0f} s) are kept for measuring; scoring and planning run as they must "
        f"and refinement gets what they leave (at most {refine} evaluations"
        + (f" per step, over {steps} steps)" if steps > 1 else ")")
    )


def _best_plan(
    model: nn.Module,
    scores: dict,
    target: Target,
    example: torch.Tensor,
    global_: bool | str,
    normalisation: str,
    baseline: nn.Module,
    units: dict[str, Units],
    cost: str | None,
    mode: str,
    compensate: bool | str,
    ref,
    say: Callable[[str], None],
    where: str,
    graph: tp.DependencyGraph | None = None,
    recalibrate: bool = False,
    headroom: float = 1.0,
    lamp_too: bool = False,
) -> tuple[Plan, bool, nn.Module, Any]:
    """(plan, whether its removal compensates, the removal built, the consumers' means) for
    this step: with scope "auto", both scopes are planned and built (and, ``lamp_too``, a
    second global plan on LAMP's shares) and the one whose removal loses less on the
    reference examples is kept.

    Why LAMP as a third candidate: a global plan on l1-normalised scores per MAC can cut a
    narrow layer to the bone (MobileNet-V2's bottlenecks) where LAMP's shares keep every
    layer's best units to the last. Of the candidate sets compared on the zoo (where
    choices are made; ``benchmarks/allocation.py``, BENCHMARKS.md section 19), these three
    chosen by reference loss did best and were never below the two-plan choice; LAMP per
    MAC instead of LAMP alone lost a zoo cell."""  # fmt: skip
    means = None  # of the consumers' inputs on this model: read once for every removal
    if compensate in (True, "auto"):
        points = [p for u in units.values() for p in u.mask_points]
        try:
            means = consumer_means(model, points, ref.x)
        except ValueError:  # a consumer that cannot compensate: refused where it matters
            means = ref.x
    # label -> (global?, normalisation, cost), in the order ties are broken
    if global_ != "auto":
        scopes = {"global" if global_ else "per-layer": (bool(global_), normalisation, cost)}
    else:
        scopes = {"global": (True, normalisation, cost)}
        if lamp_too:  # Torch-Pruning's LAMP: the shares alone, no cost per MAC
            scopes["global (lamp)"] = (True, "lamp", None)
        scopes["per-layer"] = (False, normalisation, cost)
    built_plans = {
        label: _plan_and_build(model, scores, target, example, scope, how, baseline, units,
                               price, mode, compensate, means, ref, graph, recalibrate,
                               headroom)
        for label, (scope, how, price) in scopes.items()
    }  # fmt: skip
    plan, fills, built, _ = next(iter(built_plans.values()))
    if len(built_plans) > 1:  # "auto": the scope whose removal loses less on the reference
        losses = {label: evaluate(b, ref)["loss"] if loss is None else loss
                  for label, (_, _, b, loss) in built_plans.items()}  # fmt: skip
        chosen = min(losses, key=losses.get)
        plan, fills, built, _ = built_plans[chosen]
        plan.info["scope"] = {"chosen": chosen, "reference_loss": losses}
        others = ", ".join(f"{label} {loss:.4f}" for label, loss in losses.items()
                           if label != chosen)  # fmt: skip
        say(f"{where}: {chosen} cut kept (reference loss {losses[chosen]:.4f}; {others})")
    return plan, fills, built, means


def _compensates(criterion, compensate: bool | str | None) -> bool | str:
    """Removal as the criterion's game removes (a game that zeroes units values them for
    zeroing); an explicit choice that contradicts it is refused ("auto" never does)."""
    if compensate not in (None, True, False, "auto"):
        raise ValueError(f"compensate must be true, false or 'auto'; got {compensate!r}")
    own = getattr(getattr(criterion, "options", None), "compensate", None)
    if compensate is None:
        return PRUNE_DEFAULTS.compensate
    if compensate != "auto" and own is not None and bool(own) != compensate:
        raise ValueError(
            f"the criterion's game {'compensates' if own else 'zeroes'} removed units but "
            f"removal would {'compensate' if compensate else 'zero'} them; set the criterion's "
            f"option compensate={str(compensate).lower()} too"
        )
    return compensate


def _plan_and_build(
    model: nn.Module,
    scores: dict,
    target: Target,
    example: torch.Tensor,
    global_: bool,
    normalisation: str,
    baseline: nn.Module,
    units: dict[str, Units],
    cost: str | None,
    mode: str,
    compensate: bool | str,
    means,
    ref,
    graph: tp.DependencyGraph | None = None,
    recalibrate: bool = False,
    headroom: float = 1.0,
) -> tuple[Plan, bool, nn.Module, float | None]:
    """(plan, whether its removal compensates, the removal built, its loss on ``ref`` where
    already measured) for one scope: the plan is bisected on copies removed as
    ``compensate`` says; for "auto", which then keeps the better of both removals, on
    compensated copies where the consumers' means were read: the biases compensation gives
    consumers that had none cost MACs and parameters, so a plan meeting the target
    compensated meets it zeroed too (not the other way round: 0.3% short on a ResNeXt)."""
    read = isinstance(means, dict)  # not the reference inputs standing in where reading failed
    fill = means if compensate is True or (compensate == "auto" and read) else None

    def apply(m: nn.Module, removals: dict) -> nn.Module:
        known = graph if m is model else None  # copies are made with the graph (one build)
        return apply_removals(m, removals, example, mode=mode, units=units, compensate=fill,
                              graph=known)  # fmt: skip

    plan = make_plan(model, scores, target, example, global_=global_,
                     normalisation=normalisation, apply=apply, baseline=baseline, units=units,
                     cost=cost if global_ else None, headroom=headroom)  # fmt: skip
    if compensate == "auto":
        fills, built, loss = _better_removal(
            model, plan.removals, example, mode, units, ref, means, graph, recalibrate
        )
        plan.info["compensated"] = fills
        return plan, fills, built, loss
    built = apply_removals(model, plan.removals, example, mode=mode, units=units,
                           compensate=means if compensate else None, graph=graph)  # fmt: skip
    return plan, compensate, _recalibrated(built, ref, recalibrate), None


def _better_removal(
    model: nn.Module,
    removals: dict,
    example,
    mode: str,
    units,
    ref,
    means,
    graph=None,
    recalibrate: bool = False,
) -> tuple[bool, nn.Module, float]:
    """Whether the removal compensated (by ``means``, the consumers' on ``model``) has a
    lower loss on the reference examples (never the test split) than the removal zeroed,
    that better removal (kept: no rebuild) and its loss (both recalibrated first where
    ``recalibrate``: compared as they would be kept)."""  # fmt: skip
    zeroed = apply_removals(model, removals, example, mode=mode, units=units, graph=graph)
    filled = apply_removals(model, removals, example, mode=mode, units=units, compensate=means,
                            graph=graph)  # fmt: skip
    _recalibrated(zeroed, ref, recalibrate)
    _recalibrated(filled, ref, recalibrate)
    losses = evaluate(filled, ref)["loss"], evaluate(zeroed, ref)["loss"]
    if losses[0] < losses[1]:
        return True, filled, losses[0]
    return False, zeroed, losses[1]


def _recalibrated(model: nn.Module, ref, recalibrate: bool) -> nn.Module:
    """``model`` with its BatchNorm statistics re-estimated on the reference inputs, where
    ``recalibrate`` (in place: every removal is a copy of its own)."""
    if recalibrate:
        recalibrate_batchnorm(model, ref.x)
    return model


@contextmanager
def _cut(criterion, target: Target, fraction: Callable[[], float]) -> Iterator[None]:
    """Tell a criterion that can use it (``cut_fraction``: the bandit's k, the kept size of
    a semivalue's window or of a refinement) which fraction of the units the target cuts:
    a channels target says it; for params and MACs, ``fraction()`` finds it (it prunes
    copies: asked only of a criterion whose ``uses_cut()``, where it has one, says so)."""
    uses = getattr(criterion, "uses_cut", lambda: True)
    if not hasattr(criterion, "cut_fraction") or (target.kind != "channels" and not uses()):
        yield
        return
    cut = target.fraction if target.kind == "channels" else fraction()
    before, criterion.cut_fraction = criterion.cut_fraction, cut
    try:
        yield
    finally:
        criterion.cut_fraction = before


def units_fraction(
    model: nn.Module,
    units: dict[str, Units],
    target: Target,
    example,
    baseline: nn.Module,
    graph: tp.DependencyGraph | None = None,
) -> float:
    """The fraction of the units that the same cut in every layer removes to meet a params
    or MACs ``target`` (``baseline``: the model its fraction refers to; ``graph``:
    ``model``'s dependency graph, if built)."""
    flat = {name: np.zeros(u.n_players) for name, u in units.items()}
    plan = make_plan(model, flat, target, example, baseline=baseline, units=units, graph=graph)
    return plan.n_removed / sum(u.n_players for u in units.values())


def _step_target(target: Target, step: int, steps: int) -> Target:
    """The cumulative target after ``step`` of ``steps``: for params and MACs a fraction of
    the original model; for channels, the fraction of the current units that leaves the
    overall fraction after the last step."""
    if steps == 1:
        return target
    if target.kind == "channels":
        return Target("channels", 1 - (1 - target.fraction) ** (1 / steps))
    return Target(target.kind, target.fraction * step / steps)


def _removed_by_layer(plans: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for plan in plans:
        for layer, units in plan["removals"].items():
            out[layer] = out.get(layer, 0) + len(units)
    return out
