"""LRP rules tuned for pruning with Optuna (Hatefi et al. 2024), or tuned to agree with
the Shapley values of the same units.

The search space is one rule per depth group (:mod:`shapprune.criteria.lrp_spec`) with the
epsilon and gamma parameters (log-uniform; always sampled, so the space is static and
both TPE and the Gaussian-process sampler apply), plus the attention rule for
transformers. Objectives, both measured on the reference examples only:

- ``auc``: mean accuracy over the pruning rates 0, 0.05, ..., 0.95 when the units are
  masked globally across layers in the order the composite's relevance gives (the
  paper's area under the accuracy-vs-rate curve; masking computes what removal computes);
- ``shapley``: Spearman correlation between the relevance and the Shapley values of the
  same units in the network game, estimated once and kept in the study.

The study lives in a SQLite file, so an interrupted search resumes where it stopped; the
plain epsilon composite is its first trial, so the tuned one is never worse than it on
the objective.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

from shapprune.criteria.lrp import make_composite, relevance
from shapprune.criteria.lrp_batchnorm import Merge, batch_norm_merges
from shapprune.criteria.lrp_rules import depth_groups
from shapprune.criteria.lrp_spec import (
    ATTENTION_RULES,
    CNN_GROUPS,
    RULES,
    TRANSFORMER_GROUPS,
    CompositeSpec,
    RuleSpec,
)
from shapprune.data import Split, batches
from shapprune.devices import device_of, to_device
from shapprune.estimators.registry import estimate
from shapprune.evaluation.experiments import mean_accuracy
from shapprune.evaluation.ranking import spearman
from shapprune.game.network_game import NetworkGame
from shapprune.game.pruning_game import as_data
from shapprune.game.units import Units, prunable_units
from shapprune.pruning.plan import Target, make_plan, normalise

__all__ = [
    "OBJECTIVES",
    "RATES",
    "UNIT_KINDS",
    "TuneResult",
    "accuracy_auc",
    "check_tune_options",
    "lrp_scores",
    "curve_masks",
    "masked_curve",
    "tune_lrp",
    "unit_layers",
    "unit_scores",
]

UNIT_KINDS = {"filters": "channels", "neurons": "neurons", "heads": "heads"}
OBJECTIVES = ("auc", "shapley")
RATES: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(20))
EPSILON_RANGE = (1e-6, 10.0)
GAMMA_RANGE = (1e-3, 10.0)
Progress = Callable[[int, int, float, float], None]  # (trial, of, value, best)


@dataclass
class TuneResult:
    """The best composite found, its objective value, and the study's history."""

    spec: CompositeSpec
    value: float
    baseline: float  # the plain epsilon composite's value (the study's first trial)
    trials: int  # complete trials in the study
    new_trials: int  # of which this call ran
    layers: list[str]
    seconds: float
    values: list[float] = field(default_factory=list)  # per complete trial, in order


def unit_layers(model: nn.Module, example: torch.Tensor, units: str) -> dict[str, Units]:
    """The prunable layers whose units are of kind ``units`` (filters, neurons, heads)."""
    if units not in UNIT_KINDS:
        raise ValueError(f"unknown units {units!r}; use one of: {', '.join(UNIT_KINDS)}")
    found = {n: u for n, u in prunable_units(model, example).items()}
    chosen = {n: u for n, u in found.items() if u.kind == UNIT_KINDS[units]}
    if not chosen:
        raise ValueError(f"the model has no prunable {units}")
    return chosen


def reference_examples(data: Any, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` given, or ``per_class`` seeded examples per class of ``data.val`` (the
    validation split: the test split is never read)."""
    if hasattr(data, "val"):
        from shapprune.data import reference_set

        ref = reference_set(data.val, per_class=per_class, seed=seed)
        return ref.x, ref.y
    return as_data(data)


def lrp_scores(
    model: nn.Module,
    units: dict[str, Units],
    x: torch.Tensor,
    y: torch.Tensor,
    spec: CompositeSpec | str,
    batch_size: int = 64,
    merges: Sequence[Merge] | None = None,
) -> dict[str, np.ndarray]:
    """|R| of every unit, summed over the examples; ``model`` prepared as
    :func:`relevance` wants it (eval mode, no gradients), ``units`` found on it;
    ``merges``: its BatchNorm merges (:func:`batch_norm_merges`), found here if not given."""
    if merges is None:
        merges = batch_norm_merges(model, x[:2])

    def composite():
        return make_composite(spec, model, merges=merges)

    found = relevance(model, units, x, y, composite, batch_size)
    return {layer: r.abs().sum(0).numpy() for layer, r in found.items()}


def unit_scores(
    model: nn.Module, data: Any, units: str, spec: CompositeSpec | str, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """LRP scores (|R| summed over ``data``'s examples) of the ``units`` of every layer that
    has them, by ``spec`` (a :class:`CompositeSpec`, a spec file or a composite's name)."""
    work = copy.deepcopy(model).float().eval().requires_grad_(True)
    x, y = as_data(data)
    x, y = to_device(x, work).clone(), y.to(device_of(work)).clone()
    found = unit_layers(work, x[:2], units)
    work.requires_grad_(False)
    return lrp_scores(work, found, x, y, spec, batch_size)


def accuracy_auc(
    model: nn.Module,
    scores: dict[str, np.ndarray],
    data: Any,
    normalisation: str = "l1",
    chunk: int = 512,
) -> tuple[float, list[float]]:
    """Mean accuracy on ``data`` over :data:`RATES` with units masked globally by
    ``scores`` (the paper's area under accuracy vs pruning rate), and the curve.

    Tensors are one game; a Dataset or DataLoader (an image folder) is read ``chunk``
    examples at a time, one game each with the same masks, so a large test split is never
    held whole; the curve is the example-weighted mean of the chunks'."""
    if isinstance(data, Split | tuple):
        game = NetworkGame(model, data, list(scores), "accuracy")
        curve = masked_curve(game, scores, normalisation)
        return mean_accuracy(curve), curve
    total, n, masks = None, 0, None
    for x, y in batches(data, chunk):
        game = NetworkGame(model, (x, y), list(scores), "accuracy")
        if masks is None:
            masks = curve_masks(game, scores, normalisation)
        values = torch.as_tensor(game.value(masks), dtype=torch.float64) * len(y)
        total = values if total is None else total + values
        n += len(y)
    if total is None:
        raise ValueError("accuracy_auc: the data holds no examples")
    curve = [float(v) for v in total / n]
    return mean_accuracy(curve), curve


def _suggest(trial: optuna.Trial, family: str) -> CompositeSpec:
    groups = CNN_GROUPS if family == "cnn" else TRANSFORMER_GROUPS
    rules = {}
    for g in groups:
        rule = trial.suggest_categorical(f"{g}.rule", RULES)
        eps = trial.suggest_float(f"{g}.epsilon", *EPSILON_RANGE, log=True)
        gamma = trial.suggest_float(f"{g}.gamma", *GAMMA_RANGE, log=True)
        rules[g] = RuleSpec(rule, epsilon=eps, gamma=gamma)
    attention = "cp"
    if family == "transformer":
        attention = trial.suggest_categorical("attention", ATTENTION_RULES)
    return CompositeSpec(rules, attention)


def _baseline_params(family: str) -> dict[str, Any]:
    groups = CNN_GROUPS if family == "cnn" else TRANSFORMER_GROUPS
    params: dict[str, Any] = {}
    for g in groups:
        params.update({f"{g}.rule": "epsilon", f"{g}.epsilon": 1e-6, f"{g}.gamma": 0.25})
    if family == "transformer":
        params["attention"] = "cp"
    return params


class _Objective:
    """Scores one composite: the pruning AUC or the Spearman correlation with Shapley values."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        units: str,
        objective: str,
        normalisation: str,
        batch_size: int,
    ) -> None:
        self.work = copy.deepcopy(model).float().eval().requires_grad_(True)
        self.x, self.y = to_device(x, self.work).clone(), y.to(device_of(self.work)).clone()
        self.units = unit_layers(self.work, self.x[:2], units)
        self.merges = batch_norm_merges(self.work, self.x[:2])
        self.layers = list(self.units)
        self.work.requires_grad_(False)
        self.objective, self.normalisation, self.batch_size = objective, normalisation, batch_size
        metric = "accuracy" if objective == "auc" else "loss"
        self.game = NetworkGame(model, (x, y), self.layers, metric)
        self.shapley: np.ndarray | None = None

    def scores(self, spec: CompositeSpec | str) -> dict[str, np.ndarray]:
        return lrp_scores(self.work, self.units, self.x, self.y, spec, self.batch_size, self.merges)

    def flat(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([normalise(scores[n], self.normalisation) for n in self.layers])

    def curve(self, scores: dict[str, np.ndarray]) -> list[float]:
        return masked_curve(self.game, scores, self.normalisation)

    def __call__(self, spec: CompositeSpec | str) -> float:
        scores = self.scores(spec)
        if self.objective == "auc":
            return mean_accuracy(self.curve(scores))
        assert self.shapley is not None
        rho = spearman(self.flat(scores), self.shapley)
        return -1.0 if np.isnan(rho) else rho


def masked_curve(
    game: NetworkGame,
    scores: dict[str, np.ndarray],
    normalisation: str = "l1",
    rates: tuple[float, ...] = RATES,
) -> list[float]:
    """The game's value (accuracy, for an accuracy game) with the lowest-scored fraction r
    of its units masked globally across its layers (each layer keeps one), for each rate r;
    ``scores`` covers the game's layers."""
    return [float(v) for v in game.value(curve_masks(game, scores, normalisation, rates))]


def curve_masks(
    game: NetworkGame,
    scores: dict[str, np.ndarray],
    normalisation: str = "l1",
    rates: tuple[float, ...] = RATES,
) -> torch.Tensor:
    """One coalition per rate r of :func:`masked_curve`: the game's players kept when the
    lowest-scored fraction r of the units goes (the global plan's removals)."""
    masks = torch.ones(len(rates), game.n_players, dtype=torch.bool)
    columns = torch.arange(game.n_players)
    example = game.x[:2]
    for i, r in enumerate(rates):
        if r == 0:
            continue
        plan = make_plan(
            game.model, scores, Target("channels", float(r)), example,
            global_=True, normalisation=normalisation,
        )  # fmt: skip
        for layer, removed in plan.removals.items():
            masks[i, columns[game.players_of(layer)][removed]] = False
    return masks


def check_tune_options(
    units: str, objective: str, trials: int, sampler: str, normalisation: str
) -> None:
    """One-line ValueErrors for options of :func:`tune_lrp` (before any work starts)."""
    if units not in UNIT_KINDS:
        raise ValueError(f"unknown units {units!r}; use one of: {', '.join(UNIT_KINDS)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; use one of: {', '.join(OBJECTIVES)}")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if sampler not in ("tpe", "gp"):
        raise ValueError(f"unknown sampler {sampler!r}; use tpe or gp")
    normalise(np.zeros(1), normalisation)  # an unknown normalisation fails now


def tune_lrp(
    model: nn.Module,
    data: Any,
    units: str = "filters",
    objective: str = "auc",
    trials: int = 30,
    seed: int = 0,
    storage: str | Path | None = None,
    *,
    sampler: str = "tpe",
    per_class: int = 10,
    normalisation: str = "l1",
    shapley_budget: int | None = None,
    shapley_values: np.ndarray | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> TuneResult:
    """Search the LRP rules per depth group that maximise ``objective`` on the reference
        examples (``per_class`` per class of ``data.val``, or ``data`` = ``(x, y)`` itself).

        ``trials`` counts the study's complete trials: with ``storage`` (a SQLite file) an
        interrupted study resumes and runs only the missing ones. ``sampler``: "tpe" or "gp"
        (Optuna's Gaussian-process sampler, the paper's surrogate), seeded by ``seed``.
        ``normalisation`` is how the global plan compares layers (as ``prune --global``).
        ``shapley_budget``: coalitions for the network game's permutation estimate (objective
        "shapley"; default 4 per unit), or ``shapley_values`` of the units (the network game's
    over the layers of ``units``, in their order) computed already.
    ``progress(trial, trials, value, best)`` is called after each trial.
    """
    check_tune_options(units, objective, trials, sampler, normalisation)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    x, y = reference_examples(data, per_class, seed)
    family, _ = depth_groups(model)
    judge = _Objective(model, x, y, units, objective, normalisation, batch_size)
    study = _study(storage, sampler, seed, family)
    setting = {"units": units, "objective": objective, "layers": judge.layers,
               "normalisation": normalisation, "examples": len(x)}  # fmt: skip
    _check_setting(study, setting, storage)
    if objective == "shapley":
        if shapley_values is not None:
            if len(shapley_values) != judge.game.n_players:
                raise ValueError(
                    f"shapley_values has {len(shapley_values)} values for "
                    f"{judge.game.n_players} units"
                )
            study.set_user_attr("shapley", np.asarray(shapley_values, dtype=float).tolist())
        judge.shapley = _shapley(study, judge.game, shapley_budget, seed)

    def run(trial: optuna.Trial) -> float:
        return judge(_suggest(trial, family))

    done = _complete(study)
    before = len(done)

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if progress is not None and trial.value is not None:
            progress(len(_complete(study)), trials, float(trial.value), float(study.best_value))

    if before < trials:
        study.optimize(run, n_trials=trials - before, callbacks=[report])
    done = _complete(study)
    best = max(done, key=lambda t: t.value)
    spec = _spec_of(best.params, family)
    seconds = time.perf_counter() - start
    info = {**setting, "value": float(best.value), "trials": len(done), "seed": seed,
            "sampler": sampler, "baseline_epsilon": float(done[0].value)}  # fmt: skip
    spec = CompositeSpec(spec.groups, spec.attention, info)
    return TuneResult(
        spec, float(best.value), float(done[0].value), len(done), len(done) - before,
        judge.layers, seconds, [float(t.value) for t in done],
    )  # fmt: skip


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]


def _study(storage: str | Path | None, sampler: str, seed: int, family: str) -> optuna.Study:
    if sampler == "gp":
        chosen: optuna.samplers.BaseSampler = optuna.samplers.GPSampler(seed=seed)
    else:
        chosen = optuna.samplers.TPESampler(seed=seed)
    url = None if storage is None else f"sqlite:///{Path(storage).resolve()}"
    study = optuna.create_study(
        study_name="tune-lrp", storage=url, load_if_exists=True, direction="maximize",
        sampler=chosen,
    )  # fmt: skip
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(_baseline_params(family))  # the plain epsilon rule goes first
    return study


def _check_setting(study: optuna.Study, setting: dict, storage: str | Path | None) -> None:
    """A resumed study must be the same search (units, objective, layers, examples)."""
    known = study.user_attrs.get("setting")
    if known is None:
        study.set_user_attr("setting", setting)
    elif known != setting:
        differ = sorted(k for k in setting if known.get(k) != setting[k])
        raise ValueError(
            f"the study in {storage} searched another setting ({', '.join(differ)} differ); "
            "choose another --out or remove that file"
        )


def _shapley(study: optuna.Study, game: NetworkGame, budget: int | None, seed: int) -> np.ndarray:
    """The network game's Shapley values, estimated once and kept in the study."""
    kept = study.user_attrs.get("shapley")
    if kept is not None and len(kept) == game.n_players:
        return np.asarray(kept, dtype=np.float64)
    budget = budget or 4 * game.n_players
    values = np.asarray(estimate(game, "permutation", budget, seed).values, dtype=np.float64)
    study.set_user_attr("shapley", values.tolist())
    return values


def _spec_of(params: dict[str, Any], family: str) -> CompositeSpec:
    groups = CNN_GROUPS if family == "cnn" else TRANSFORMER_GROUPS
    rules = {
        g: RuleSpec(params[f"{g}.rule"], params[f"{g}.epsilon"], params[f"{g}.gamma"])
        for g in groups
    }
    return CompositeSpec(rules, params.get("attention", "cp"))
