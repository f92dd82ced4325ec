"""Estimator efficiency: error against a reference for each estimator on a budget ladder,
the evaluations each needs to rank like the reference (Spearman rho >= 0.95), and the
evaluations the default needs for the error plain permutation sampling reaches.

Games (256 validation images, loss payoff): the zoo TinyCNN's conv2 (16 units; reference:
exact Shapley values, 2^16 coalitions) and LeNet-5's conv2 (50 units; reference: an
antithetic permutation run with 100x the largest budget tested, cached in
``benchmarks/results/`` and shared with ``captum_vs.py``).

Run: ``python benchmarks/estimators.py [--quick] [--out FILE.json]``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from common import arguments, write_json

from shapprune.estimators.registry import estimate
from shapprune.evaluation.ranking import agreement
from shapprune.game.pruning_game import PruningGame
from shapprune.zoo.cache import pretrained
from shapprune.zoo.data import load_dataset
from shapprune.zoo.models import build_model

ESTIMATORS = {
    "permutation, plain": dict(method="permutation", antithetic=False, control=False),
    "permutation, antithetic": dict(method="permutation", control=False),
    "permutation, antithetic + control (default)": dict(method="permutation"),
    "kernel (paired)": dict(method="kernel"),
}
DETERMINISTIC = {
    "partial, k=1": dict(method="partial", k=1),
    "partial, k=2": dict(method="partial", k=2),
    "leave-one-out": dict(method="loo"),
}
PLAIN, DEFAULT = "permutation, plain", "permutation, antithetic + control (default)"
RHO = 0.95


def reference_values(
    game: PruningGame, key: str, budget: int, folder: Path, halves: bool = False
) -> tuple[np.ndarray, dict]:
    """Reference Shapley values: exact when ``budget`` is 0, else an antithetic permutation
    run with that budget, kept in ``folder/reference_KEY.json`` for the next run.

    With ``halves`` the budget is spent on two independent runs of half of it (seeds 12345
    and 12346) and the reference is their mean; ``info["halves_spearman"]`` is the
    Spearman rho between the two halves: the reference's own reliability (the mean of the
    two is more precise than either)."""
    if budget == 0:
        start = time.perf_counter()
        est = estimate(game, "exact")
        return est.values, {
            "kind": "exact",
            "evals": est.n_evals,
            "seconds": time.perf_counter() - start,
        }
    path = folder / f"reference_{key}.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if (
            stored["budget"] == budget
            and stored["images"] == len(game.x)
            and stored.get("halves", False) == halves
            and _is_of(game, stored["values"])
        ):
            return np.array(stored["values"]), stored["info"]
    if halves:
        runs = [
            estimate(game, "permutation", budget // 2, seed=seed, control=False)
            for seed in (12345, 12346)
        ]
        values = (runs[0].values + runs[1].values) / 2
        stderr = np.sqrt(runs[0].stderr ** 2 + runs[1].stderr ** 2) / 2
        info = {
            "kind": f"antithetic permutation, two runs of budget {budget // 2:,}, averaged",
            "evals": sum(r.n_evals for r in runs),
            "seconds": sum(r.seconds for r in runs),
            "max_stderr_over_std": float(stderr.max() / values.std()),
            "halves_spearman": agreement(runs[0].values, runs[1].values)["spearman"],
        }
    else:
        est = estimate(game, "permutation", budget, seed=12345, control=False)
        values = est.values
        info = {
            "kind": f"antithetic permutation, budget {budget:,}",
            "evals": est.n_evals,
            "seconds": est.seconds,
            "max_stderr_over_std": float(est.stderr.max() / est.values.std()),
        }
    stored = {"budget": budget, "images": len(game.x), "values": values.tolist(), "info": info}
    if halves:
        stored["halves"] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored))
    return values, info


def _is_of(game: PruningGame, values: list[float]) -> bool:
    """Whether stored reference values are this game's: permutation estimates (without the
    control variate) and exact values sum to v(N) - v(empty), which a game of another
    model (a zoo model trained again elsewhere) or other images does not share."""
    full, empty = game.value(torch.tensor([[True] * game.n_players, [False] * game.n_players]))
    return abs(sum(values) - float(full - empty)) <= 1e-6 * max(1.0, abs(float(full - empty)))


def ladder(game: PruningGame, reference: np.ndarray, budgets: list[int], seeds: int) -> list[dict]:
    """Mean error per (estimator, budget) over seeds, and the deterministic methods once."""
    rows = []
    for label, opts in ESTIMATORS.items():
        for budget in budgets:
            runs = [estimate(game, budget=budget, seed=s, **opts) for s in range(seeds)]
            quality = [agreement(r.values, reference) for r in runs]
            rows.append(
                {
                    "estimator": label,
                    "budget": budget,
                    "evals": float(np.mean([r.n_evals for r in runs])),
                    "nrmse": float(np.mean([q["nrmse"] for q in quality])),
                    "spearman": float(np.mean([q["spearman"] for q in quality])),
                    "spearman_min": float(np.min([q["spearman"] for q in quality])),
                }
            )
    for label, opts in DETERMINISTIC.items():
        r = estimate(game, **opts)
        q = agreement(r.values, reference)
        rows.append(
            {
                "estimator": label,
                "budget": r.n_evals,
                "evals": float(r.n_evals),
                "nrmse": q["nrmse"],
                "spearman": q["spearman"],
                "spearman_min": q["spearman"],
            }
        )
    return rows


def evals_to_rho(rows: list[dict], target: float = RHO) -> float | None:
    """Evaluations at which the mean Spearman first reaches ``target`` (interpolated in
    log-evaluations between ladder steps); None if the ladder never reaches it."""
    prev = None
    for r in rows:
        if r["spearman"] >= target:
            if prev is None:
                return r["evals"]
            t = (target - prev["spearman"]) / (r["spearman"] - prev["spearman"])
            return float(np.exp(np.log(prev["evals"]) + t * np.log(r["evals"] / prev["evals"])))
        prev = r
    return None


def equal_error_ratio(default: list[dict], plain: list[dict]) -> list[float]:
    """At each of the default's ladder steps: its evaluations divided by the evaluations
    plain sampling needs for the same nRMSE. Plain sampling is an average of independent
    walks, so its squared error falls as 1 / evaluations; its constant is fitted on its
    own ladder (geometric mean of nRMSE^2 x evaluations)."""
    c = float(np.exp(np.mean([np.log(r["nrmse"] ** 2 * r["evals"]) for r in plain])))
    return [r["evals"] / (c / r["nrmse"] ** 2) for r in default]


def report(title: str, rows: list[dict], seeds: int) -> dict:
    """Print one game's tables; return its summary."""
    print(f"#### {title}\n")
    print(
        f"Mean over {seeds} seeds: evaluations really run (repeated coalitions are "
        "answered from memory), nRMSE (RMSE / std of the reference) and Spearman rho "
        "(mean, and the worst seed).\n"
    )
    print("| estimator | budget | evals | nRMSE | Spearman | worst |\n|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['estimator']} | {r['budget']:,} | {r['evals']:,.0f} | {r['nrmse']:.3f} "
            f"| {r['spearman']:.3f} | {r['spearman_min']:.3f} |"
        )
    by = {label: [r for r in rows if r["estimator"] == label] for label in ESTIMATORS}
    need = {label: evals_to_rho(rs) for label, rs in by.items()}
    ratios = equal_error_ratio(by[DEFAULT], by[PLAIN])
    print(f"\nEvaluations to reach mean Spearman rho >= {RHO} (interpolated on the ladder):\n")
    print("| estimator | evaluations | vs plain |\n|---|---|---|")
    max_evals = max(r["evals"] for r in rows)  # '> max_evals': not reached on the ladder
    for label, n in need.items():
        vs = f"{n / need[PLAIN]:.2f}" if n and need[PLAIN] else "-"
        print(f"| {label} | {f'{n:,.0f}' if n else f'> {max_evals:,.0f}'} | {vs} |")
    print(
        "\nDefault vs plain permutation at equal nRMSE (plain's error taken to fall as "
        f"1/sqrt(evaluations), fitted on its ladder): the default "
        f"needs {np.median(ratios):.2f}x the evaluations (per ladder step: "
        f"{', '.join(f'{x:.2f}' for x in ratios)}; target <= 0.33).\n"
    )
    return {
        "rows": rows,
        "evals_to_rho": need,
        "equal_error_ratio": ratios,
        "equal_error_ratio_median": float(np.median(ratios)),
    }


def main() -> None:
    args = arguments(__doc__, "estimators")
    data = load_dataset("mnist5k")
    n_images, seeds = (64, 2) if args.quick else (256, 5)
    ref_data = (data.val.x[:n_images], data.val.y[:n_images])
    games = [  # (model, layer, budgets, reference budget: 0 = exact)
        (
            "tinycnn",
            "conv1" if args.quick else "conv2",
            [60, 200] if args.quick else [100, 300, 1000, 3000],
            0,
        ),
        (
            "lenet5",
            "conv2",
            [300, 600] if args.quick else [300, 1000, 3000],
            6000 if args.quick else 300_000,
        ),
    ]
    results = {}
    for name, layer, budgets, ref_budget in games:
        model = build_model(name) if args.quick else pretrained(name, "mnist5k", progress=False)[0]
        game = PruningGame(model, layer, ref_data)
        reference, info = reference_values(game, f"{name}_{layer}", ref_budget, args.out.parent)
        rows = ladder(game, reference, budgets, seeds)
        title = (
            f"{name} {layer}: {game.n_players} units, {n_images} images; reference: "
            f"{info['kind']} ({info['evals']:,} evaluations)"
        )
        results[f"{name}_{layer}"] = {"reference": info, **report(title, rows, seeds)}
    write_json(args.out, results)


if __name__ == "__main__":
    main()
