"""Pruning by explaining (Hatefi et al. 2024) on the zoo: LRP rules tuned for pruning, and
LRP tuned to agree with the Shapley values of the same units.

For each setting (model, unit kind) and seed: ``PER_CLASS`` validation images per class
(drawn by the seed) are the reference examples; every criterion scores the units on them
(LRP: |relevance| for the true class summed over them); units are masked globally across
layers (l1-normalised scores; the network game's values as they are) at rates 0, 0.05, ...,
0.95 and the mean accuracy on the 1,000 test images is the area under the curve (AUC,
higher is better). Criteria: LRP with the rules ``tune_lrp`` found (objective: the same AUC
on the reference examples, ``--trials`` trials of TPE), LRP-epsilon (epsilon 1e-6 in every
group), z-plus in every group, random, and the network game's Shapley values (permutation
sampling, 4 coalitions per unit, loss metric). Transformers use the CP-LRP attention rule
for the fixed composites; the tuned one chooses its own.

Shapley-calibrated LRP: ``tune_lrp(objective="shapley")`` on the same reference examples
and Shapley values; Spearman between LRP scores and the Shapley values before (plain
epsilon, the study's first trial) and after tuning, its test AUC, and the seconds: one
LRP scoring pass against the Shapley estimate.

Run: ``OMP_NUM_THREADS=1 python benchmarks/lrp_tuning.py [--quick] [--out FILE.json]
[--settings vgg:filters vit:neurons vit:heads] [--seeds 0 1 2] [--trials 30]``.
``--quick``: tinycnn filters, one seed, 3 trials (under a minute). The stored results
(``results/lrp_tuning.md``) are 3 seeds with 20 trials (VGG filters) and 15 (ViT neurons,
ViT heads), run in pieces (each seeded, so pieces equal one run) on 2 CPU cores shared
with other work (2026-11-22): about 25 minutes in all, most of it the network game's
Shapley values of the VGG filters and the searches; the default of 30 trials was not run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from common import RESULTS, write_json
from report import run_and_report

from shapprune.criteria.lrp_rules import depth_groups
from shapprune.criteria.lrp_spec import CompositeSpec
from shapprune.criteria.lrp_tune import accuracy_auc, tune_lrp, unit_scores
from shapprune.estimators.registry import estimate
from shapprune.evaluation.ranking import spearman
from shapprune.game.network_game import NetworkGame
from shapprune.pruning.plan import normalise
from shapprune.zoo.cache import pretrained
from shapprune.zoo.data import load_dataset, reference_set

PER_CLASS = 10
SETTINGS = ["vgg:filters", "vit:neurons", "vit:heads"]
CRITERIA = ["LRP tuned (AUC)", "LRP-epsilon", "z-plus", "random", "Shapley (network game)",
            "LRP tuned (Shapley)"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS / "lrp_tuning.json")
    parser.add_argument("--readme", type=Path, help="replace the results block of this file")
    parser.add_argument("--settings", nargs="+", default=None, help="model:units ...")
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--trials", type=int, default=None)
    args = parser.parse_args()
    run_and_report("lrp_tuning", lambda: _run(args), args.readme)


def _one(model, data, setting: str, seed: int, trials: int) -> dict:
    name, units = setting.split(":")
    ref = reference_set(data.val, per_class=PER_CLASS, seed=seed)
    xy = (ref.x, ref.y)
    family, _ = depth_groups(model)
    rows: dict[str, dict] = {}

    def score(label: str, scores: dict, seconds: float, normalisation: str = "l1") -> None:
        auc, curve = accuracy_auc(model, scores, data.test, normalisation)
        rows[label] = {"auc": auc, "curve": curve, "seconds": seconds}
        print(f"  {label}: test AUC {auc:.4f} ({seconds:.1f} s)", flush=True)

    start = time.perf_counter()
    tuned = tune_lrp(model, xy, units, "auc", trials, seed)
    tune_s = time.perf_counter() - start
    print(f"{setting} seed {seed}: tuned {tuned.spec.describe()} (reference AUC "
          f"{tuned.value:.4f}, epsilon {tuned.baseline:.4f})", flush=True)  # fmt: skip
    start = time.perf_counter()
    scores = unit_scores(model, xy, units, tuned.spec)
    lrp_s = time.perf_counter() - start
    score("LRP tuned (AUC)", scores, tune_s + lrp_s)
    rows["LRP tuned (AUC)"].update(
        spec=tuned.spec.to_dict()["groups"], attention=tuned.spec.attention,
        reference_auc=tuned.value, reference_epsilon=tuned.baseline,
    )  # fmt: skip
    fixed = {}
    for label, rule in (("LRP-epsilon", "epsilon"), ("z-plus", "z-plus")):
        start = time.perf_counter()
        scores = fixed[label] = unit_scores(model, xy, units, CompositeSpec.uniform(rule, family))
        score(label, scores, time.perf_counter() - start)
    rng = np.random.default_rng(seed)
    score("random", {k: rng.random(len(v)) for k, v in scores.items()}, 0.0)

    start = time.perf_counter()
    game = NetworkGame(model, xy, list(scores), "loss")
    values = estimate(game, "permutation", 4 * game.n_players, seed).values
    shapley_s = time.perf_counter() - start
    score("Shapley (network game)", game.scores(values), shapley_s, "none")

    start = time.perf_counter()
    calibrated = tune_lrp(model, xy, units, "shapley", trials, seed, shapley_values=values)
    calib_s = time.perf_counter() - start
    scores = unit_scores(model, xy, units, calibrated.spec)
    score("LRP tuned (Shapley)", scores, calib_s)
    flat = np.concatenate([normalise(scores[k], "l1") for k in scores])
    by_layer = game.scores(values)

    def per_layer(found: dict) -> float:  # mean over layers of the Spearman within each
        return float(np.mean([spearman(found[k], by_layer[k]) for k in found]))

    rows["LRP tuned (Shapley)"].update(
        spearman_before=calibrated.baseline, spearman_after=calibrated.value,
        spearman_check=spearman(flat, np.asarray(values)),
        per_layer_before=per_layer(fixed["LRP-epsilon"]), per_layer_after=per_layer(scores),
        lrp_seconds=lrp_s, shapley_seconds=shapley_s, spec=calibrated.spec.to_dict()["groups"],
    )  # fmt: skip
    print(f"  Spearman with Shapley: epsilon {calibrated.baseline:.3f} -> tuned "
          f"{calibrated.value:.3f}; one LRP pass {lrp_s:.2f} s, Shapley {shapley_s:.1f} s",
          flush=True)  # fmt: skip
    return {"setting": setting, "model": name, "units": units, "seed": seed,
            "n_units": game.n_players, "trials": trials, "rows": rows}  # fmt: skip


def _run(args: argparse.Namespace) -> None:
    quick = args.quick
    settings = args.settings or (["tinycnn:filters"] if quick else SETTINGS)
    seeds = args.seeds or ([0] if quick else [0, 1, 2])
    trials = args.trials or (3 if quick else 30)
    data = load_dataset("mnist5k")
    runs = []
    models = {}
    for setting in settings:
        name = setting.split(":")[0]
        if name not in models:
            models[name] = pretrained(name, "mnist5k", progress=False)[0]
        for seed in seeds:
            runs.append(_one(models[name], data, setting, seed, trials))
    summary = _summary(runs)
    write_json(args.out, {"settings": settings, "seeds": seeds, "trials": trials,
                          "per_class": PER_CLASS, "runs": runs, "summary": summary})  # fmt: skip
    _table(summary, seeds, trials)


def _summary(runs: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for setting in dict.fromkeys(r["setting"] for r in runs):
        mine = [r for r in runs if r["setting"] == setting]
        out[setting] = {}
        for label in CRITERIA:
            aucs = [r["rows"][label]["auc"] for r in mine]
            secs = [r["rows"][label]["seconds"] for r in mine]
            out[setting][label] = {"auc": statistics.mean(aucs), "auc_std": _std(aucs),
                                   "seconds": statistics.median(secs)}  # fmt: skip
        cal = [r["rows"]["LRP tuned (Shapley)"] for r in mine]
        out[setting]["spearman"] = {
            k: statistics.mean(c[k] for c in cal)
            for k in (
                "spearman_before",
                "spearman_after",
                "per_layer_before",
                "per_layer_after",
                "lrp_seconds",
                "shapley_seconds",
            )
        }
    return out


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def _table(summary: dict, seeds: list[int], trials: int) -> None:
    print(f"\n#### Area under test accuracy vs global pruning rate (0-0.95), mean ± std over "
          f"{len(seeds)} seed(s), {trials} trials\n")  # fmt: skip
    print("| criterion | " + " | ".join(summary) + " |")
    print("|---|" + "---:|" * len(summary))
    for label in CRITERIA:
        cells = [f"{s[label]['auc']:.4f} ± {s[label]['auc_std']:.4f} ({s[label]['seconds']:.0f} s)"
                 for s in summary.values()]  # fmt: skip
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\n#### Spearman between LRP and the network game's Shapley values\n")
    print("All units ranked together (l1-normalised per layer, as the global plan ranks them);"
          " per layer: the mean over layers of the Spearman within each.\n")  # fmt: skip
    print("| setting | epsilon | tuned for Shapley | per layer: epsilon | per layer: tuned "
          "| one LRP pass (s) | Shapley (s) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for setting, s in summary.items():
        sp = s["spearman"]
        print(f"| {setting} | {sp['spearman_before']:.3f} | {sp['spearman_after']:.3f} | "
              f"{sp['per_layer_before']:.3f} | {sp['per_layer_after']:.3f} | "
              f"{sp['lrp_seconds']:.2f} | {sp['shapley_seconds']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
