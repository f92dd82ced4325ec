"""The papers' experiments, as plain functions that return numbers.

- Ancona et al. (2020): layer-wise robustness, the test-loss increase as one layer's units
  are removed one by one, least important first, and the normalised area under it.
- Hatefi et al. (2024): test accuracy against the pruning rate, and its mean over the rates.
- Cost against benefit of the Shapley estimators: ranking quality per evaluation spent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from shapprune.data import Split
from shapprune.estimators.registry import estimate, get_estimator
from shapprune.evaluation.measure import evaluate
from shapprune.evaluation.ranking import agreement, positions, spearman
from shapprune.game.pruning_game import PruningGame
from shapprune.game.units import Units, layer_units
from shapprune.pruning.plan import Target, make_plan
from shapprune.pruning.removal import apply_removals

COST_FIELDS = ("n_evals", "seconds", "spearman", "kendall", "nrmse", "oracle_spearman")


# --- Ancona et al.: layer-wise robustness -----------------------------------------------------


def _check_ranking(ranking, n: int) -> np.ndarray:
    order = np.asarray(ranking, dtype=np.int64).ravel()
    if sorted(order.tolist()) != list(range(n)):
        raise ValueError(
            f"ranking must be a permutation of the layer's {n} unit indices "
            f"(least important first); got {order.tolist()}"
        )
    return order


def nested_masks(ranking: np.ndarray) -> torch.Tensor:
    """Row j keeps every unit but the first j of ``ranking``: shape (n, n), True = kept."""
    pos = positions(ranking)
    return torch.as_tensor(pos[None, :] >= np.arange(len(pos))[:, None])


def robustness_curve(
    model: nn.Module,
    layer: str,
    ranking,
    data,
    metric: str = "loss",
    units: Units | None = None,
    compensate: torch.Tensor | None = None,
) -> np.ndarray:
    """Loss increase on ``data`` as ``layer``'s units go one by one in ``ranking`` order.

    ``ranking`` lists the unit indices least important first. ``curve[j]`` is the mean
    cross-entropy with the first j ranked units removed (no fine-tuning) minus that of the
    intact model, for j = 0..n-1 (one unit always stays), so ``curve[0] == 0``. With
    ``metric="accuracy"`` or ``"margin"`` it is the drop in that metric instead.
    ``units``: ``layer``'s units, if already found on ``model``. ``compensate``: reference
    inputs; removed units leave their mean over them behind (``apply_removals``'s way).
    """
    fill = compensate if compensate is not None else False
    game = PruningGame(model, layer, data, metric=metric, units=units, compensate=fill)
    order = _check_ranking(ranking, game.n_players)
    values = game.value(nested_masks(order)).numpy()
    return values[0] - values  # L = -value for the loss: L(j) - L(0) = value(0) - value(j)


def robustness_auc(curve: np.ndarray, normaliser: float | None = None) -> float:
    """Normalised area under a robustness curve (lower is better).

    The area is the trapezoid rule over the fraction removed, x = j/n for j = 0..n-1, and is
    divided by the rectangle ``normaliser * (n-1)/n``: ``normaliser`` is a loss increase
    (default ``curve[-1]``, the increase with all but one unit removed). To compare criteria
    on one layer, pass them all the same normaliser (see :func:`robustness_table`).
    A one-unit curve, or a zero normaliser, gives 0 and nan respectively.
    """
    curve = np.asarray(curve, dtype=np.float64).ravel()
    n = len(curve)
    if n == 0:
        raise ValueError("the curve is empty")
    if n == 1:
        return 0.0
    x = np.arange(n) / n
    area = float(np.sum((curve[1:] + curve[:-1]) / 2 * np.diff(x)))
    height = float(curve[-1]) if normaliser is None else float(normaliser)
    box = height * x[-1]
    return area / box if box != 0 else math.nan


def robustness_table(curves: Mapping[str, np.ndarray]) -> dict[str, float]:
    """AUC of each criterion's curve on one layer, all divided by one shared constant.

    The constant is the largest loss increase seen in any of the curves (max over criteria
    of ``max(curve)``; 1 if no curve rises above 0, so that flat curves get 0, not NaN), so
    each AUC lies in [0, 1] for non-negative curves, and the numbers can be compared across
    criteria (a curve twice another gets twice its AUC). Keys are free: the report passes
    (criterion, seed) pairs.
    """
    if not curves:
        return {}
    shared = max(float(np.max(c)) for c in curves.values()) or 1.0
    return {name: robustness_auc(c, shared) for name, c in curves.items()}


# --- Hatefi et al.: accuracy against the pruning rate -----------------------------------------


def accuracy_vs_rate(
    model: nn.Module,
    scores: Mapping[str, np.ndarray],
    rates: Sequence[float],
    test: Split,
    example: torch.Tensor,
    *,
    global_: bool = False,
    normalisation: str = "l1",
    units: Mapping[str, Units] | None = None,
) -> list[float]:
    """Test accuracy after removing the lowest-scored fraction r of units, for each rate r.

    ``scores`` maps layers to one score per unit (higher = more important), computed once.
    Per layer, each layer loses the fraction r; with ``global_`` units compete across layers
    on ``normalisation``-normalised scores. Units are physically removed, no fine-tuning;
    r = 0 is the intact model. ``units``: the layers' units if already found on ``model``
    (else found once, for every rate).
    """
    accs = []
    for r in rates:
        if not 0 <= r < 1:
            raise ValueError(f"pruning rates must lie in [0, 1), got {r}")
        if r == 0:
            pruned = model
        else:
            units = units or layer_units(model, list(scores), example)
            plan = make_plan(
                model,
                scores,
                Target("channels", float(r)),
                example,
                global_=global_,
                normalisation=normalisation,
                units=units,
            )
            pruned = apply_removals(model, plan.removals, example, mode="remove", units=units)
        accs.append(float(evaluate(pruned, test)["accuracy"]))
    return accs


def mean_accuracy(accs: Sequence[float]) -> float:
    """Hatefi et al.'s area under the accuracy-vs-rate curve: the mean over the rates."""
    if len(accs) == 0:
        raise ValueError("no accuracies given")
    return float(np.mean(accs))


# --- estimators: cost against benefit ---------------------------------------------------------


def cost_benefit(
    game,
    methods: Sequence[str],
    budgets: Sequence[int],
    seeds: Sequence[int],
    reference: np.ndarray,
    oracle_ranking: np.ndarray | None = None,
) -> list[dict]:
    """One record per (method, budget, seed): evaluations and seconds spent, and agreement
    with ``reference`` values (Spearman, Kendall, RMSE / std of the reference).

    With ``oracle_ranking`` (unit indices, least important first) a record also has
    ``oracle_spearman``, the Spearman correlation between the estimated values and the
    oracle positions (i.e. between the two rankings, with tied estimates kept tied, so a
    constant estimate gives nan rather than the index order).
    Deterministic methods (``Estimator.deterministic``) run with the first seed only; a budget
    below a method's minimum is skipped.
    """
    reference = np.asarray(reference, dtype=np.float64)
    oracle_pos = None if oracle_ranking is None else positions(oracle_ranking)
    rows = []
    for method in methods:
        for budget in budgets:
            for seed in seeds[:1] if get_estimator(method).deterministic else seeds:
                try:
                    est = estimate(game, method, budget=int(budget), seed=int(seed))
                except ValueError as err:
                    if "too small" in str(err):
                        break  # the budget is below the method's minimum: no record
                    raise
                row = {
                    "method": method,
                    "budget": int(budget),
                    "seed": int(seed),
                    "n_evals": int(est.n_evals),
                    "seconds": float(est.seconds),
                    **agreement(est.values, reference),
                }
                if oracle_pos is not None:  # tied estimates stay tied: no index tie-break
                    row["oracle_spearman"] = spearman(est.values, oracle_pos)
                rows.append(row)
    return rows


def summarise(rows: Sequence[Mapping]) -> list[dict]:
    """Group records by (method, budget): count, and mean and std of each numeric field.

    Fields come out as ``<field>_mean`` and ``<field>_std`` (population std, 0 for one run),
    in the order the groups first appear.
    """
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["budget"]), []).append(row)
    out = []
    for (method, budget), members in groups.items():
        summary: dict = {"method": method, "budget": budget, "runs": len(members)}
        for key in members[0]:
            if key in ("method", "budget", "seed"):
                continue
            vals = [m[key] for m in members if isinstance(m.get(key), int | float)]
            if not vals:
                continue
            arr = np.asarray(vals, dtype=np.float64)
            summary[f"{key}_mean"] = float(np.mean(arr))
            summary[f"{key}_std"] = float(np.std(arr))
        out.append(summary)
    return out
