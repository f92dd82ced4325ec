"""What ``shapprune prune``'s speed costs: reference examples and refinement budget against
wall time and test accuracy, with every other setting at prune's defaults.

The job: ``prune_model`` on the zoo VGG (MNIST 5k), target 50% of the MACs removed, LRP
scores, the scope of the cut chosen on the reference loss, the cut per MAC saved,
compensation where it helps (prune's defaults), one-shot. The grid: ``per_class``
reference examples per class (the scores, the choices on the reference loss and the
refinement all read them) and ``refine`` (evaluations of whole removal sets). Seconds:
scoring + planning + removal as ``prune_model`` reports them (``torch.get_num_threads()``
threads, printed), one run per cell (seed 0); accuracy on the 1,000 test images.

Run: ``python benchmarks/prune_tradeoffs.py [--quick] [--out FILE.json]`` (a few minutes;
``--quick``: LeNet-5, two cells).
"""

from __future__ import annotations

import sys

import torch
from common import arguments, write_json

from shapprune.criteria.registry import get_criterion
from shapprune.pruning.compress import prune_model
from shapprune.zoo.cache import pretrained
from shapprune.zoo.data import load_dataset

PER_CLASS = (5, 10, 25, 50)
REFINE = (0, 300, 1000)
TARGET = "macs=0.5"
QUICK = {"model": "lenet5", "per_class": (5,), "refine": (0, 20)}


def main() -> None:
    args = arguments(__doc__, "prune_tradeoffs")
    name = QUICK["model"] if args.quick else "vgg"
    per_classes = QUICK["per_class"] if args.quick else PER_CLASS
    refines = QUICK["refine"] if args.quick else REFINE
    data = load_dataset("mnist5k")
    model, _ = pretrained(name, "mnist5k", progress=False)
    model.eval()
    cells = []
    for per_class in per_classes:
        for refine in refines:
            _, summary = prune_model(
                model,
                data,
                get_criterion("lrp"),
                TARGET,
                global_="auto",
                cost="macs",
                compensate="auto",
                refine=refine,
                per_class=per_class,
                seed=0,
            )
            scope = summary["plans"][0].get("scope", {}).get("chosen", "?")
            cell = {
                "per_class": per_class,
                "reference_examples": summary["reference_examples"],
                "refine": refine,
                "seconds": summary["seconds_scoring_and_planning"],
                "accuracy": summary["after"]["accuracy"],
                "macs_ratio": summary["after"]["macs"] / summary["before"]["macs"],
                "scope": scope,
            }
            cells.append(cell)
            print(f"  per_class {per_class}, refine {refine}: {cell['accuracy']:.3f} in "
                  f"{cell['seconds']:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
    unpruned = summary["before"]["accuracy"]
    print(f"#### {name}, {TARGET}: prune's defaults, reference examples x refinement budget\n")
    print(
        f"One run per cell (seed 0), {torch.get_num_threads()} torch thread(s); unpruned test "
        f"accuracy {unpruned:.3f}. Cells: test accuracy after one-shot pruning / seconds of "
        "scoring + planning + removal; the cut's scope kept in brackets.\n"
    )
    print("| reference examples per class | " + " | ".join(f"refine {r}" for r in refines) + " |")
    print("|---|" + "---|" * len(refines))
    for per_class in per_classes:
        row = [c for c in cells if c["per_class"] == per_class]
        text = " | ".join(f"{c['accuracy']:.3f} / {c['seconds']:.1f} s ({c['scope']})" for c in row)
        print(f"| {per_class} ({row[0]['reference_examples']} images) | {text} |")
    write_json(args.out, {"model": name, "target": TARGET, "unpruned": unpruned, "cells": cells})


if __name__ == "__main__":
    main()
