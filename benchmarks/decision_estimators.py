"""Estimation aimed at the decision: which k units of a layer to remove, judged against the
oracle sets (regret and overlap at each k) and by test accuracy after removing them.

Games: the zoo LeNet-5's conv1 (20 filters; B = 1,000) and conv2 (50 filters; B = 5,000)
on MNIST 5k, 10 validation images per class, loss payoff. Oracle sets: exhaustive search
where a size has at most ``MAX_SUBSETS`` subsets, a width-8 beam search otherwise (so a
regret can be negative there). Methods, each with the same budget B of coalition
evaluations per decision:

- ``shapley (permutation)``: the default estimator, one estimate for every k;
- ``banzhaf``: the semivalue with Banzhaf weights, one estimate for every k;
- ``beta @ k``: Beta Shapley centred on the kept fraction (n - k) / n, width 0.1;
- ``window @ k``: the sizes within 0.1 x n of the kept size, alike;
- ``refine (shapley)``: B/2 on a permutation estimate, then B/2 on the swap beam search at
  k (the registry's ``refine`` with its default split; the base estimate is computed once
  per seed and shared by the ks, which gives the same answer as one ``refine`` call per k);
- ``refine (window @ k)``: the same, seeded by the window semivalue at k (B/2 each).

Accuracy after removal is measured on the 1,000 test images with the units masked
(masking computes what the physically pruned network computes; tested in tests/game).
Run: ``python benchmarks/decision_estimators.py [--quick] [--out FILE.json]``.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from common import arguments, write_json

from shapprune.estimators._budget import BudgetedGame
from shapprune.estimators.refine import refine_search
from shapprune.estimators.registry import estimate
from shapprune.evaluation.oracle import oracle_sets
from shapprune.game.pruning_game import PruningGame
from shapprune.zoo.cache import pretrained
from shapprune.zoo.data import load_dataset, reference_set

MAX_SUBSETS = 2_000
WIDTH = 0.1
LAYERS = {  # layer: (budget per decision, sizes k)
    "conv1": (1_000, [2, 4, 6, 8, 10, 12, 14, 16, 18]),
    "conv2": (5_000, [5, 10, 15, 20, 25, 30, 35, 40, 45]),
}


def _removal_mask(n: int, removed) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[list(removed)] = False
    return mask


def choices(game: PruningGame, ks: list[int], budget: int, seed: int) -> dict[str, dict]:
    """Each method's removal set for each k: ``{method: {k: (units, evaluations)}}``."""
    n = game.n_players
    out: dict[str, dict] = {}
    for label, options in (
        ("shapley (permutation)", {"method": "permutation"}),
        ("banzhaf", {"method": "semivalue", "weights": "banzhaf"}),
    ):
        est = estimate(game, budget=budget, seed=seed, **options)
        out[label] = {k: (est.ranking[:k].tolist(), est.n_evals) for k in ks}
    for label, weights in (("beta @ k", "beta"), ("window @ k", "window")):
        out[label] = {}
        for k in ks:
            kept = (n - k) / n
            est = estimate(game, "semivalue", budget, seed, weights=weights, kept=kept, width=WIDTH)
            out[label][k] = (est.ranking[:k].tolist(), est.n_evals)
    base = estimate(game, "permutation", budget - budget // 2, seed)
    out["refine (shapley)"] = {k: _refined(game, base, k, budget) for k in ks}
    out["refine (window @ k)"] = {}
    for k in ks:
        kept = (n - k) / n
        window = estimate(game, "semivalue", budget - budget // 2, seed, weights="window",
                          kept=kept, width=WIDTH)  # fmt: skip
        out["refine (window @ k)"][k] = _refined(game, window, k, budget)
    return out


def _refined(game: PruningGame, base, k: int, budget: int) -> tuple[list[int], int]:
    """What ``refine`` answers at k from the base estimate ``base``, with budget // 2 left."""
    view = BudgetedGame(game, budget // 2)
    best, _ = refine_search(view, base.values, k, budget // 2)
    return list(best), base.n_evals + view.n_evals


def _run(quick: bool, layer: str) -> dict:
    data = load_dataset("mnist5k")
    model, _ = pretrained("lenet5", "mnist5k", progress=False)
    budget, ks = LAYERS[layer]
    per_class, seeds = (10, [0, 1])
    if quick:
        per_class, seeds, budget, ks = 2, [0], 200, [4, 10]
    ref = reference_set(data.val, per_class, seed=0)
    game = PruningGame(model, layer, (ref.x, ref.y))
    test = PruningGame(model, layer, (data.test.x, data.test.y), metric="accuracy")
    n = game.n_players

    start = time.perf_counter()
    oracle = oracle_sets(game, ks, max_subsets=200 if quick else MAX_SUBSETS)
    oracle_seconds = time.perf_counter() - start
    masks = [_removal_mask(n, oracle.sets[k]) for k in ks] + [np.ones(n, bool)]
    accs = test.value(np.stack(masks)).numpy()
    oracle_acc, unpruned = dict(zip(ks, accs[:-1].tolist(), strict=True)), float(accs[-1])
    print(f"oracle sets: {oracle.n_evals} evaluations, {oracle_seconds:.0f} s", flush=True)

    rows = []
    for seed in seeds:
        start = time.perf_counter()
        chosen = choices(game, ks, budget, seed)
        print(f"seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
        for method, by_k in chosen.items():
            removal = np.stack([_removal_mask(n, by_k[k][0]) for k in ks])
            values = game.value(removal).numpy()
            accuracy = test.value(removal).numpy()
            for j, k in enumerate(ks):
                units, evals = by_k[k]
                rows.append(
                    {
                        "method": method,
                        "seed": seed,
                        "k": k,
                        "removed": units,
                        "evals": int(evals),
                        "regret": float(oracle.values[k] - values[j]),
                        "overlap": len(set(units) & set(oracle.sets[k])) / k,
                        "accuracy": float(accuracy[j]),
                    }
                )
    methods = list(dict.fromkeys(r["method"] for r in rows))
    summary = {
        m: {
            key: {
                k: statistics.mean(r[key] for r in rows if r["method"] == m and r["k"] == k)
                for k in ks
            }
            for key in ("regret", "overlap", "accuracy")
        }
        for m in methods
    }
    print(f"\n#### Which k of LeNet-5's {n} {layer} filters to remove\n")
    _print(ks, methods, summary, oracle, oracle_acc, unpruned, budget, len(seeds), per_class)
    return {
        "game": {"model": "lenet5", "layer": layer, "players": n, "reference": len(ref.x)},
        "budget": budget,
        "seeds": seeds,
        "ks": ks,
        "oracle": {**oracle.to_dict(), "seconds": oracle_seconds, "accuracy": oracle_acc},
        "unpruned_accuracy": unpruned,
        "rows": rows,
        "summary": summary,
    }


def _print(ks, methods, summary, oracle, oracle_acc, unpruned, budget, seeds, per_class):
    print(
        f"Budget {budget:,} evaluations per decision; {per_class} validation "
        f"images per class; mean over {seeds} seeds. Oracle sets exhaustive for "
        f"k in {sorted(k for k in ks if oracle.exhaustive[k])}, beam search otherwise.\n"
    )
    head = "| method | " + " | ".join(f"k={k}" for k in ks) + " | mean |"
    rule = "|---" * (len(ks) + 2) + "|"
    for key, title, fmt in (
        ("regret", "Regret (loss above the oracle set's; lower is better)", "{:.3f}"),
        ("overlap", "Overlap with the oracle set", "{:.2f}"),
        ("accuracy", f"Test accuracy after removal (unpruned {unpruned:.4f})", "{:.3f}"),
    ):
        print(f"{title}:\n\n{head}\n{rule}")
        for m in methods:
            cells = [fmt.format(summary[m][key][k]) for k in ks]
            mean = fmt.format(statistics.mean(summary[m][key].values()))
            print(f"| {m} | " + " | ".join(cells) + f" | {mean} |")
        if key == "accuracy":
            cells = [fmt.format(oracle_acc[k]) for k in ks]
            mean = fmt.format(statistics.mean(oracle_acc.values()))
            print("| oracle set | " + " | ".join(cells) + f" | {mean} |")
        print()


def main() -> None:
    args = arguments(__doc__, "decision_estimators")
    layers = ["conv1"] if args.quick else list(LAYERS)
    write_json(args.out, {"layers": [_run(args.quick, layer) for layer in layers]})


if __name__ == "__main__":
    main()
