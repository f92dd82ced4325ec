"""``shapprune compare``: criteria x layers x rates x seeds, resumable, with a report.

Every unit of work (a cell: the scores of one criterion on one layer for one seed, one
robustness curve, one accuracy-vs-rate sweep, one layer's oracle sets, one cost-benefit
run) is saved to ``<out>/cells/`` as soon as it is done. Running the same command again
loads finished cells instead of recomputing them, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from shapprune.data import examples, reference_set, split_size, take
from shapprune.devices import resolve_device
from shapprune.evaluation.config import CriterionSpec, ExperimentConfig, preprocessing_of
from shapprune.evaluation.ranking import positions, rank_correlation, ranking_from_scores

Progress = Callable[[str, int, int], None]


class CellStore:
    """Finished cells on disk, one JSON file each."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "cells"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.computed = 0  # cells computed (not loaded) in this run

    def get(self, key: str, compute: Callable[[], dict]) -> dict:
        path = self.folder / (re.sub(r"[^A-Za-z0-9_.=,-]+", "_", key) + ".json")
        if path.is_file():
            return json.loads(path.read_text())
        result = compute()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(path)  # a cell is either complete on disk or absent
        self.computed += 1
        return result


def check_resumable(config: ExperimentConfig, out: Path) -> None:
    """Refuse to mix cells of different experiments in one folder; record this one's identity."""
    identity = {
        "model": config.model,
        "data": config.data,
        "per_class": config.per_class,
        "heldout": config.heldout,
        "global": config.global_,
        "rates": config.rates,
        "oracle_ks": config.oracle_ks,
        "cost_budgets": config.cost_budgets,
        "cost_methods": config.cost_methods,
        "cost_seeds": config.cost_seeds,
        "cost_reference_budget": config.cost_reference_budget,
    }
    if config.compensate:  # (absent from folders written before the key existed)
        identity["compensate"] = True
    source = {"model_args": config.model_args, "weights": config.weights,
              "preprocessing": config.preprocessing, "classes": config.classes}  # fmt: skip
    identity.update({k: v for k, v in source.items() if v})  # likewise, where given
    path = out / "experiment.json"
    if path.is_file():
        before = json.loads(path.read_text())
        changed = sorted(k for k in identity if before.get(k) != identity[k])
        if changed:
            raise ValueError(
                f"{out} holds results of another experiment (differs in: {', '.join(changed)}); "
                "choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity, indent=2))


def run_compare(
    config: ExperimentConfig,
    out: Path,
    progress: Progress | None = None,
    device: str | torch.device | None = None,
) -> dict:
    """Run every cell the config asks for (loading finished ones) and return the results,
    with the model on ``device`` (None / "auto": the first available accelerator, else CPU)."""
    from shapprune.criteria.registry import get_criterion
    from shapprune.pruning.compress import select_layers
    from shapprune.sources.data import load_data
    from shapprune.sources.models import load_model

    model, meta = load_model(
        config.model, config.data, root=config.root, weights=config.weights, **config.model_args
    )
    model = model.to(resolve_device(device))
    data = load_data(
        config.data, model=model, meta=meta, root=config.root, seed=0,
        preprocessing=preprocessing_of(config), classes=config.classes,
    )  # fmt: skip
    example = examples(data.val, 2)
    units = select_layers(model, example, config.layers or None)  # found once, passed on
    layers = list(units)
    heldout = take(data.test, np.arange(min(config.heldout, split_size(data.test))))
    store = CellStore(out)
    total = _n_cells(config, layers)
    done = 0
    say = progress or (lambda _label, _done, _total: None)
    results: dict = {"layers": layers, "scores": {}, "robustness": {}, "rates": {}}

    def step(label: str) -> None:
        nonlocal done
        done += 1
        say(label, done, total)

    for spec in config.criteria:
        for layer in layers:
            for seed in config.seeds:
                key = f"scores/{spec.label}/{layer}/{seed}"
                ref = reference_set(data.val, per_class=config.per_class, seed=seed)

                def compute(spec=spec, layer=layer, seed=seed, ref=ref) -> dict:
                    start = time.perf_counter()
                    crit = get_criterion(spec.name, **spec.options)
                    s = crit.score(model, [layer], (ref.x, ref.y), seed=seed)[layer]
                    est = getattr(crit, "last_estimate", None)
                    return {
                        "scores": np.asarray(s).tolist(),
                        "seconds": time.perf_counter() - start,
                        "n_evals": est.n_evals if est is not None else 0,
                    }

                results["scores"][key] = store.get(key, compute)
                step(f"scores {spec.label} {layer}")
    if "robustness" in config.experiments:
        _robustness(config, model, units, heldout, data.val, store, results, step)
    if "rates" in config.experiments:
        _rates(config, model, units, data.test, example, store, results, step)
    if "oracle" in config.experiments or "cost_benefit" in config.experiments:
        _oracle_and_cost(config, model, units, data, store, results, step)
    results["cells_computed"] = store.computed
    return results


def _n_cells(config: ExperimentConfig, layers: list[str]) -> int:
    """How many cells the config asks for (for the progress bar)."""
    n = len(config.criteria) * len(layers) * len(config.seeds)
    total = n * (1 + ("robustness" in config.experiments))
    if "rates" in config.experiments:
        total += len(config.criteria) * len(config.seeds)
    per_layer = ("oracle" in config.experiments) + ("cost_benefit" in config.experiments)
    if "oracle" in config.experiments:  # the criteria's regrets and correlations
        per_layer += len(config.criteria) * len(config.seeds)
    return total + len(layers) * per_layer


def _scores_of(results: dict, spec: CriterionSpec, layer: str, seed: int) -> np.ndarray:
    return np.asarray(results["scores"][f"scores/{spec.label}/{layer}/{seed}"]["scores"])


def _robustness(config, model, units, heldout, data_val, store, results, step) -> None:
    from shapprune.evaluation.experiments import robustness_curve

    for spec in config.criteria:
        for layer in units:
            for seed in config.seeds:
                fill = None  # removed units' means: over the seed's reference examples
                if config.compensate:
                    fill = reference_set(data_val, per_class=config.per_class, seed=seed).x
                key = f"robustness/{spec.label}/{layer}/{seed}"
                ranking = ranking_from_scores(_scores_of(results, spec, layer, seed))

                def compute(layer=layer, ranking=ranking, fill=fill) -> dict:
                    data = (heldout.x, heldout.y)
                    curve = robustness_curve(
                        model, layer, ranking, data, units=units[layer], compensate=fill
                    )
                    return {"curve": np.asarray(curve).tolist()}

                results["robustness"][key] = store.get(key, compute)
                step(f"robustness {spec.label} {layer}")


def _rates(config, model, units, test, example, store, results, step) -> None:
    from shapprune.evaluation.experiments import accuracy_vs_rate

    for spec in config.criteria:
        for seed in config.seeds:
            key = f"rates/{spec.label}/{seed}"
            scores = {layer: _scores_of(results, spec, layer, seed) for layer in units}

            def compute(scores=scores) -> dict:
                accs = accuracy_vs_rate(
                    model, scores, config.rates, test, example, global_=config.global_, units=units
                )
                return {"rates": list(config.rates), "accuracy": list(map(float, accs))}

            results["rates"][key] = store.get(key, compute)
            step(f"rates {spec.label}")


def _quality(config, game, layer: str, results: dict, store: CellStore, step) -> None:
    """Each criterion's regret against the oracle sets (one batched game call) and its rank
    correlation with the Oracle rank."""
    from shapprune.evaluation.oracle import OracleSets, regrets

    record = results["oracle"][layer]
    oracle = OracleSets.from_dict(record)
    position = positions(record["rank"])  # 0 = least important
    results.setdefault("quality", {})
    for spec in config.criteria:
        for seed in config.seeds:
            key = f"quality/{spec.label}/{layer}/{seed}"
            scores = _scores_of(results, spec, layer, seed)

            def compute(scores=scores) -> dict:
                lost = regrets(game, ranking_from_scores(scores), oracle)
                return {
                    "regret": {str(k): float(v) for k, v in lost.items()},
                    **rank_correlation(scores, position),
                }

            results["quality"][key] = store.get(key, compute)
            step(f"regret {spec.label} {layer}")


def _oracle_and_cost(config, model, units, data, store, results, step) -> None:
    from shapprune.estimators.registry import estimate
    from shapprune.evaluation.experiments import cost_benefit
    from shapprune.evaluation.oracle import oracle_rank, oracle_sets
    from shapprune.game.pruning_game import PruningGame

    ref = reference_set(data.val, per_class=config.per_class, seed=0)
    results["oracle"], results["cost_benefit"] = {}, {}
    for layer in units:
        game = PruningGame(model, layer, (ref.x, ref.y), units=units[layer])
        n = game.n_players
        if "oracle" in config.experiments:

            def compute_oracle(game=game, n=n) -> dict:
                ks = [k for k in config.oracle_ks if 0 < k < n]
                found = oracle_sets(
                    game,
                    ks,
                    max_subsets=config.oracle_max_subsets,
                    beam_width=config.oracle_beam_width,
                )
                return {**found.to_dict(), "rank": oracle_rank(found, n).tolist()}

            results["oracle"][layer] = store.get(f"oracle/{layer}", compute_oracle)
            step(f"oracle {layer}")
            _quality(config, game, layer, results, store, step)
        if "cost_benefit" in config.experiments:

            def compute_cost(game=game, n=n, layer=layer) -> dict:
                if n <= 14:
                    reference = estimate(game, "exact")
                else:
                    budget = config.cost_reference_budget
                    reference = estimate(game, "permutation", budget=budget, seed=12345)
                oracle = results.get("oracle", {}).get(layer)
                rank = np.asarray(oracle["rank"]) if oracle else None
                rows = cost_benefit(
                    game, config.cost_methods, config.cost_budgets, config.cost_seeds,
                    reference.values, rank,
                )  # fmt: skip
                return {"reference": reference.method, "rows": rows}

            results["cost_benefit"][layer] = store.get(f"cost_benefit/{layer}", compute_cost)
            step(f"cost-benefit {layer}")
