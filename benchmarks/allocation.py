"""How a plan shares the cut among layers: the allocations that ``prune``'s auto scope
chooses from, each one-shot on the zoo (where choices are made) and on held-out
architectures (where they are judged, never chosen).

Every plan prunes by LRP (the command's criterion, scored once per model), removes a
fraction of the MACs, re-estimates BatchNorm and chooses compensation on the reference
examples, without refinement (``refine=0``: the allocation alone). Variants:

- global l1/MAC: units compete across layers on l1-normalised scores per MAC saved (the
  global candidate before issue 22);
- global LAMP/MAC: the same on LAMP's shares (Lee et al. 2021: a unit's score over the sum
  of its own and its layer's better units' scores), which keep every layer's best units;
- global LAMP: LAMP's shares without the MAC cost (Torch-Pruning's LAMP);
- global l1/MAC, headroom 0.5: l1/MAC with no layer losing more than half of what it
  keeps beyond the overall fraction (``make_plan(headroom=)``);
- per-layer: every layer loses the same fraction.

``auto`` is what ``prune_model(global_="auto")`` keeps: the candidate with the lowest loss
on the reference examples (10 per class as in the head-to-head, seed 0), among {global
l1/MAC, global LAMP, per-layer} today and {global l1/MAC, per-layer} before. Test
accuracy on the 1,000 test images judges them.

Run: ``OMP_NUM_THREADS=1 python benchmarks/allocation.py [--quick] [--out FILE.json]
[--models ...] [--targets 0.3 0.5 0.7]``: about 25 minutes on one thread (ResNet-34 and
MobileNet-V2 trained here on first use, then cached); ``--quick``: LeNet-5 at -50%.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from common import RESULTS, write_json
from held_out_models import RECIPES, trained
from vs_torch_pruning import PER_CLASS, ScoredOnce

from shapprune.criteria.registry import get_criterion
from shapprune.evaluation.measure import evaluate
from shapprune.pruning.compress import prune_model
from shapprune.pruning.defaults import PRUNE_DEFAULTS
from shapprune.zoo.cache import pretrained
from shapprune.zoo.data import Split, load_dataset, reference_set

ZOO = ("lenet5", "resnet20", "vgg", "vit")
HELD_OUT = ("resnet34", "mobilenet_v2")
TARGETS = (0.3, 0.5, 0.7)
QUICK = {"models": ("lenet5",), "targets": (0.5,)}
VARIANTS = {  # label -> prune_model's options
    "global l1/MAC": {"global_": True},
    "global LAMP/MAC": {"global_": True, "normalisation": "lamp"},
    "global LAMP": {"global_": True, "normalisation": "lamp", "cost": None},
    "global l1/MAC, headroom 0.5": {"global_": True, "headroom": 0.5},
    "per-layer": {"global_": False},
}
AUTO = {  # the auto scope's candidates, today and before issue 22
    "auto (today)": ("global l1/MAC", "global LAMP", "per-layer"),
    "auto (before)": ("global l1/MAC", "per-layer"),
}


def _model(name: str, data):
    if name in RECIPES:
        return trained(name, data, RECIPES[name])[0].eval()
    return pretrained(name, data.name, progress=False)[0].eval()


def auto_choice(variants: dict, candidates) -> str:
    """The candidate ``prune_model(global_="auto")`` keeps: the lowest reference loss."""
    return min(candidates, key=lambda c: variants[c]["reference_loss"])


def run_model(name: str, data, targets) -> dict:
    """Every variant at every target on model ``name``; the auto choices derived."""
    model = _model(name, data)
    ref = reference_set(data.val, per_class=PER_CLASS, seed=0, classes=data.classes)
    # prune_model measures on data.test: two images here, the test split is measured below
    two = dataclasses.replace(data, test=Split(data.test.x[:2], data.test.y[:2]))
    criterion = ScoredOnce(get_criterion(PRUNE_DEFAULTS.criterion))
    out = {"model": name, "group": "zoo" if name in ZOO else "held-out",
           "accuracy": evaluate(model, data.test)["accuracy"], "cells": []}  # fmt: skip
    for target in targets:
        cell: dict = {"target": target, "variants": {}}
        for label, options in VARIANTS.items():
            start = time.perf_counter()
            pruned, summary = prune_model(model, two, criterion, f"macs={target}",
                                          per_class=PER_CLASS, seed=0, refine=0,
                                          **options)  # fmt: skip
            removed = summary["removed"]
            sizes = {k: len(v) for k, v in summary["plans"][0]["scores"].items()}
            worst = max(removed, key=lambda k: removed[k] / sizes[k])
            cell["variants"][label] = {
                "accuracy": evaluate(pruned, data.test)["accuracy"],
                "reference_loss": evaluate(pruned, ref)["loss"],
                "macs_ratio": summary["after"]["macs"] / summary["before"]["macs"],
                "most_cut_layer": f"{worst} {removed[worst]}/{sizes[worst]}",
                "seconds": time.perf_counter() - start,
            }
            print(f"  {name} -{target:.0%} {label}: {cell['variants'][label]['accuracy']:.3f}",
                  flush=True)  # fmt: skip
        v = cell["variants"]
        for auto, candidates in AUTO.items():
            chosen = auto_choice(v, candidates)
            cell[auto] = {"chosen": chosen, "accuracy": v[chosen]["accuracy"]}
        best = max(v, key=lambda c: v[c]["accuracy"])
        cell["best"] = {"variant": best, "accuracy": v[best]["accuracy"]}
        out["cells"].append(cell)
    return out


def summary(models: list[dict]) -> dict:
    """Per group: cells where today's auto is better / worse / equal to before's, and where
    it reaches the best variant's test accuracy."""
    groups: dict = {}
    for m in models:
        g = groups.setdefault(m["group"], {"cells": 0, "better": 0, "worse": 0, "best": 0})
        for c in m["cells"]:
            now, was = c["auto (today)"]["accuracy"], c["auto (before)"]["accuracy"]
            g["cells"] += 1
            g["better"] += now > was
            g["worse"] += now < was
            g["best"] += now >= c["best"]["accuracy"]
    return groups


def candidate_sets(result: dict) -> list[dict]:
    """Every set of two or three variants with per-layer among them, as an auto scope of
    those candidates would choose (lowest reference loss): mean test accuracy per group.
    The zoo's column is what chose today's set."""
    names = [v for v in result["variants"] if v != "per-layer"]
    sets = [(v, "per-layer") for v in names]
    sets += [(a, b, "per-layer") for i, a in enumerate(names) for b in names[i + 1 :]]
    rows = []
    for candidates in sets:
        row: dict = {"candidates": list(candidates)}
        for group in ("zoo", "held-out"):
            accs = [c["variants"][auto_choice(c["variants"], candidates)]["accuracy"]
                    for m in result["models"] if m["group"] == group
                    for c in m["cells"]]  # fmt: skip
            row[group] = sum(accs) / len(accs) if accs else None
        rows.append(row)
    return rows


def print_report(result: dict) -> None:
    print("#### How the allocations were compared\n")
    print(f"LRP scores (once per model), -{' / -'.join(f'{t:.0%}' for t in result['targets'])}"
          f" MACs, one-shot, refine 0, BatchNorm re-estimated, compensation auto, "
          f"{result['per_class']} reference images per class (seed 0); test accuracy on "
          "1,000 images. Auto: the candidate with the lowest reference loss, among "
          + "; ".join(f"{k}: {', '.join(v)}" for k, v in result["auto"].items())
          + ". The zoo is where choices are made; the held-out models only judge "
          "them.")  # fmt: skip
    for group in ("zoo", "held-out"):
        models = [m for m in result["models"] if m["group"] == group]
        if not models:
            continue
        targets = [c["target"] for c in models[0]["cells"]]
        print(f"\n#### {group}: one-shot test accuracy, " + " / ".join(f"-{t:.0%}" for t in targets)
              + " MACs\n")  # fmt: skip
        print("| variant | " + " | ".join(f"{m['model']} ({m['accuracy']:.3f})" for m in models)
              + " |")  # fmt: skip
        print("|---|" + "---|" * len(models))
        for label in (*VARIANTS, *AUTO):
            row = []
            for m in models:
                if label in AUTO:
                    row.append(" / ".join(f"{c[label]['accuracy']:.3f}" for c in m["cells"]))
                else:
                    row.append(" / ".join(f"{c['variants'][label]['accuracy']:.3f}"
                                          for c in m["cells"]))  # fmt: skip
            print(f"| {label} | " + " | ".join(row) + " |")
        print("\nauto (today) chose: " + "; ".join(
            f"{m['model']} -{c['target']:.0%} {c['auto (today)']['chosen']}"
            for m in models for c in m["cells"]))  # fmt: skip
        s = result["summary"][group]
        print(
            f"\n{group}: today's auto better than before's in {s['better']} of {s['cells']}"
            f" cells, worse in {s['worse']}; it reaches the best variant in {s['best']}."
        )
    print("\n#### Candidate sets for the auto scope (mean one-shot test accuracy over the cells)\n")
    print("| candidates (lowest reference loss kept) | zoo | held-out |")
    print("|---|---|---|")
    for row in sorted(candidate_sets(result), key=lambda r: -r["zoo"]):
        held = "" if row["held-out"] is None else f"{row['held-out']:.3f}"
        print(f"| {', '.join(row['candidates'])} | {row['zoo']:.3f} | {held} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS / "allocation.json")
    parser.add_argument("--models", nargs="+", choices=(*ZOO, *HELD_OUT))
    parser.add_argument("--targets", nargs="+", type=float)
    args = parser.parse_args()
    models = args.models or (QUICK["models"] if args.quick else (*ZOO, *HELD_OUT))
    targets = args.targets or (QUICK["targets"] if args.quick else TARGETS)
    data = load_dataset("mnist5k")
    start = time.perf_counter()
    done = [run_model(name, data, targets) for name in models]
    result = {"quick": args.quick, "targets": list(targets), "per_class": PER_CLASS,
              "variants": VARIANTS, "auto": AUTO, "models": done, "summary": summary(done),
              "seconds": time.perf_counter() - start}  # fmt: skip
    print_report(result)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
