"""Core figures: evaluation throughput with and without prefix caching and stacking,
and each estimator's error against exact Shapley values on a small trained layer.

Run: ``python benchmarks/core.py [--quick] [--out benchmarks/results/core.json]``.
Prints Markdown tables of figures measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from report import run_and_report

from shapprune.data import load_dataset, reference_set
from shapprune.estimators import estimate
from shapprune.game import PruningGame
from shapprune.train import pretrained


def throughput(game: PruningGame, n_coalitions: int, repeats: int) -> tuple[float, float, float]:
    """Coalition evaluations per second: median, min, max over repeats."""
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(n_coalitions, game.n_players, generator=g) > 0.5
    game.value(masks[:2])  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        game.value(masks)
        rates.append(n_coalitions / (time.perf_counter() - start))
    return statistics.median(rates), min(rates), max(rates)


def main() -> None:
    args = _arguments()
    run_and_report("core", lambda: _run(args), args.readme)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/core.json"))
    parser.add_argument("--readme", type=Path, help="replace the results block of this README")
    parser.add_argument("--skip-demo", action="store_true", help="do not time `shapprune demo`")
    return parser.parse_args()


def _run(args: argparse.Namespace) -> None:
    n_coal, repeats, seeds = (20, 1, 2) if args.quick else (400, 3, 5)

    data = load_dataset("mnist5k")
    model, meta = pretrained("lenet5", "mnist5k", progress=False)
    ref = (data.val.x[:256], data.val.y[:256])
    modes = {
        "naive (full forward per coalition)": dict(cache=False, max_stack=1),
        "prefix-cached, one coalition per pass": dict(max_stack=1, decompose=False),
        "prefix-cached + stacked": dict(decompose=False),
        "prefix-cached + stacked + decomposed (default)": dict(),
    }
    rows = []
    for label, opts in modes.items():
        game = PruningGame(model, "conv2", ref, **opts)
        n = max(n_coal // 10, 5) if opts.get("max_stack") == 1 else n_coal
        med, lo, hi = throughput(game, n, repeats)
        rows.append({"mode": label, "evals_per_s": med, "min": lo, "max": hi})
    base = rows[0]["evals_per_s"]
    print("#### LeNet-5 conv2, 256 reference images: coalition evaluations per second\n")
    print("| mode | evals/s (median) | min-max | x naive |\n|---|---|---|---|")
    for r in rows:
        r["speedup"] = r["evals_per_s"] / base
        print(
            f"| {r['mode']} | {r['evals_per_s']:.0f} | {r['min']:.0f}-{r['max']:.0f} "
            f"| {r['speedup']:.1f} |"
        )

    net, _ = pretrained("tinycnn", "mnist5k", progress=False)
    game = PruningGame(net, "conv1", reference_set(data.val, per_class=20, seed=0))
    exact = estimate(game, "exact")
    scale = float(np.abs(exact.values).max())
    print(f"\n#### Error against exact Shapley, tinycnn conv1, {exact.n_evals} coalitions\n")
    print("max |error| / max |exact value|, mean over seeds\n")
    print("| method | budget | evals used | error | mean stderr / scale |\n|---|---|---|---|---|")
    errors = []
    for method, budgets in (("permutation", (100, 1000)), ("kernel", (100, 1000))):
        for budget in budgets:
            runs = [estimate(game, method, budget, seed=s) for s in range(seeds)]
            err = np.mean([np.abs(r.values - exact.values).max() for r in runs]) / scale
            se = np.mean([r.stderr.mean() for r in runs]) / scale
            used = np.mean([r.n_evals for r in runs])
            errors.append({"method": method, "budget": budget, "error": err, "stderr": se})
            print(f"| {method} | {budget} | {used:.0f} | {err:.4f} | {se:.4f} |")
    for k in (1, 2, 3):
        r = estimate(game, "partial", k=k)
        err = np.abs(r.values - exact.values).max() / scale
        errors.append({"method": f"partial k={k}", "budget": r.n_evals, "error": err})
        print(f"| partial k={k} | {r.n_evals} | {r.n_evals} | {err:.4f} | 0 |")
    r = estimate(game, "loo")
    err = np.abs(r.values - exact.values).max() / scale
    errors.append({"method": "loo", "budget": r.n_evals, "error": err})
    print(f"| loo | {r.n_evals} | {r.n_evals} | {err:.4f} | 0 |")

    demo_seconds = None
    if not args.skip_demo:
        with tempfile.TemporaryDirectory() as folder:  # a fresh report folder: nothing resumed
            start = time.perf_counter()
            command = ["shapprune", "demo", "--out", str(Path(folder) / "demo")]
            subprocess.run(command, check=True, capture_output=True)
            demo_seconds = time.perf_counter() - start
        print(
            f"\n`shapprune demo` wall time (LeNet-5 already cached, comparison from scratch): "
            f"{demo_seconds:.1f} s"
        )

    result = {
        "demo_seconds": demo_seconds,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "lenet5_test_accuracy": meta["metrics"]["test_accuracy"],
        "throughput": rows,
        "estimator_error": errors,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nLeNet-5 test accuracy (default recipe): {meta['metrics']['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
