"""LeNet-5 on MNIST 5k, half of each conv layer's filters removed, no fine-tuning: every
criterion.

Run: ``python benchmarks/criteria_lenet.py [--quick] [--out FILE.json]``.
Scores come from 25 validation images per class; accuracy is on the 1,000 test images.
Random and the sampled Shapley estimators are repeated over seeds (mean ± std). Removal is
``prune_model``'s default (``compensate='auto'``: zeroed or mean-compensated, whichever loses
less on the reference examples); "+ refine N": the plan then refined at its target by N
evaluations of whole removal sets (``prune_model(refine=N)``, swaps within layers), as
``shapprune prune`` does by default. The semivalue's window is centred on the kept half.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from report import run_and_report

from shapprune.criteria.registry import get_criterion
from shapprune.pruning.compress import prune_model
from shapprune.zoo.cache import pretrained
from shapprune.zoo.data import load_dataset

CRITERIA = [
    ("random", {}),
    ("weight-l1", {}),
    ("weight-l2", {}),
    ("taylor", {}),
    ("taylor-signed", {}),
    ("sensitivity", {}),
    ("apoz", {}),
    ("lrp", {"composite": "epsilon-plus-flat"}),
    ("loo", {}),
    ("shapley-partial", {}),
    ("shapley-kernel", {"budget": 2000}),
    ("shapley-permutation", {"budget": 2000}),
    ("shapley-semivalue", {"budget": 2000, "weights": "window"}),
]
REFINE = 300
REFINED = [  # the pipelines: criterion, options, then the plan refined at the target
    ("weight-l1", {}),
    ("lrp", {"composite": "epsilon-plus-flat"}),
    ("shapley-permutation", {"budget": 2000}),
    ("shapley-semivalue", {"budget": 2000, "weights": "window"}),
]
SEEDED = {"random", "shapley-kernel", "shapley-permutation", "shapley-semivalue"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/criteria_lenet.json"))
    parser.add_argument(
        "--readme",
        type=Path,
        help="replace the results block of this Markdown file (docs/results.md)",
    )
    args = parser.parse_args()
    run_and_report("criteria_lenet", lambda: _run(args), args.readme)


def _run(args: argparse.Namespace) -> None:
    seeds = [0] if args.quick else [0, 1, 2]
    criteria = [(n, o, 0) for n, o in CRITERIA] + [(n, o, REFINE) for n, o in REFINED]
    if args.quick:
        criteria = criteria[:2] + [("weight-l1", {}, 20)]

    data = load_dataset("mnist5k")
    model, _ = pretrained("lenet5", "mnist5k", progress=False)
    rows, sizes = [], None
    for name, options, refine in criteria:
        label = name + (f" + refine {refine}" if refine else "")
        accs, secs = [], []
        for seed in seeds if name in SEEDED else seeds[:1]:
            start = time.perf_counter()
            _, summary = prune_model(
                model,
                data,
                get_criterion(name, **options),
                "channels=0.5",
                layers=["conv1", "conv2"],
                global_=False,  # half of each layer: the criteria compared on one cut
                seed=seed,
                refine=refine,
            )
            secs.append(time.perf_counter() - start)
            accs.append(summary["after"]["accuracy"])
            sizes = sizes or summary
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append(
            {"criterion": name, "label": label, "options": options, "refine": refine,
             "accuracy": statistics.mean(accs), "std": std, "runs": len(accs),
             "seconds": statistics.median(secs)}
        )  # fmt: skip
        print(f"{label}: {statistics.mean(accs):.4f} ± {std:.4f}", flush=True)

    before, after = sizes["before"], sizes["after"]
    print("\n#### LeNet-5, MNIST 5k: 50% of conv1 and conv2 filters removed, no fine-tuning\n")
    print(f"Unpruned test accuracy: {before['accuracy']:.4f}\n")
    print("| criterion | test accuracy | runs | seconds (score + prune + measure) |")
    print("|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["accuracy"]):
        spread = f" ± {r['std']:.4f}" if r["runs"] > 1 else ""
        print(f"| {r['label']} | {r['accuracy']:.4f}{spread} | {r['runs']} | {r['seconds']:.1f} |")
    print("\n| | original | pruned | ratio |\n|---|---|---|---|")
    for key in ("params", "macs", "latency_ms_b1", "latency_ms_b64"):
        fmt = "{:.3f}" if "latency" in key else "{:,.0f}"
        print(
            f"| {key} | {fmt.format(before[key])} | {fmt.format(after[key])} "
            f"| {after[key] / before[key]:.3f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "before": before, "after": after}, indent=2))


if __name__ == "__main__":
    main()
