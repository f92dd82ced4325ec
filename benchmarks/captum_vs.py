"""shapprune against Captum: wall time to Shapley values that rank a LeNet-5 layer's filters
like the reference (Spearman rho >= 0.95), on the same game, for every layer in
``LAYERS``: conv1 (20 filters: the prefix is just conv1, so each evaluation runs nearly
the whole network and prefix caching saves little) and conv2 (50 filters).

The game: LeNet-5 (MNIST 5k), the filters of one layer, payoff minus the mean cross-entropy
on 256 validation images. The references are antithetic permutation runs cached in
``benchmarks/results/reference_lenet5_LAYER.json`` (computed here if absent): for conv2 the
one of ``benchmarks/estimators.py`` (a budget of 300,000); for conv1 (exact values, 2^20
coalitions, would take over an hour at its ~200 evaluations/s) a budget of 60,000 (about
4 minutes at one thread) spent on two independent runs of half of it, averaged, whose
Spearman rho with each other is reported as the reference's reliability.

- Captum: ``captum.attr.ShapleyValueSampling`` on a wrapper whose input is the unit mask,
  as a user would write it: a forward hook zeroes the masked filters of the layer and the
  whole network runs on the images, ``perturbations_per_eval`` masks per pass (tuned to
  its fastest). Captum samples permutations; its running mean is checked every few
  permutations and the clock stops at the first check with rho >= 0.95.
- Captum on shapprune's game: the same sampler with ``PruningGame.value`` as the forward
  function, to separate the evaluation speed-up from the estimator's.
- shapprune: ``PruningGame`` + ``estimate`` with the defaults (antithetic permutations with
  the position control variate), on a ladder of budgets; the time is the game's
  construction plus the first run of the ladder with rho >= 0.95.

fc1 (500 units) is left out, not timed: one Captum permutation there is 501 evaluations,
~20 s at a user's wrapper's ~25 evaluations/s, and conv2's 50 units already need 100-250
permutations: hours for Captum (and for a reference).

Run: ``python benchmarks/captum_vs.py [--quick] [--layers conv1 conv2] [--out FILE.json]``
(needs captum: ``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from captum.attr import ShapleyValueSampling
from common import RESULTS, write_json
from estimators import reference_values

from shapprune.estimators.registry import estimate
from shapprune.evaluation.ranking import agreement
from shapprune.game.pruning_game import PruningGame
from shapprune.zoo.cache import pretrained
from shapprune.zoo.data import load_dataset
from shapprune.zoo.models import build_model

RHO = 0.95
LAYERS = ("conv1", "conv2")
# reference budgets (evaluations): conv2's is the estimators benchmark's (~4.5 minutes);
# conv1's suffix is nearly the whole network, ~10x slower per coalition: ~4 minutes
REFERENCE = {"conv1": 60_000, "conv2": 300_000}
QUICK_REFERENCE = {"conv1": 2000, "conv2": 6000}
HALVES = {"conv1": True, "conv2": False}  # conv2's cached reference is a single run
# Captum with a user's wrapper runs ~25 evaluations/s: three seeds where one takes about a
# minute (conv1), one where it takes about four (conv2)
USER_SEEDS = {"conv1": 3, "conv2": 1}
USER = "Captum ShapleyValueSampling, user's hook wrapper"
ON_GAME = "Captum ShapleyValueSampling on shapprune's game"
DEFAULT = "shapprune default (PruningGame + estimate)"


def masked_model_value(model: torch.nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor):
    """A Captum forward function: (p, n) unit masks -> (p,) minus the mean cross-entropy
    of ``model`` on (x, y) with the masked output channels of ``layer`` zeroed."""
    module = dict(model.named_modules())[layer]
    model.eval()

    def value(masks: torch.Tensor) -> torch.Tensor:
        p = masks.shape[0]
        per_row = masks.repeat_interleave(len(x), dim=0)  # (p * N, n)

        def zero(_module, _inputs, out):
            return out * per_row.reshape(*per_row.shape, *[1] * (out.dim() - 2))

        handle = module.register_forward_hook(zero)
        try:
            with torch.inference_mode():
                logits = model(x.repeat(p, *[1] * (x.dim() - 1)))
        finally:
            handle.remove()
        loss = torch.nn.functional.cross_entropy(logits, y.repeat(p), reduction="none")
        return -loss.reshape(p, len(x)).double().mean(dim=1)

    return value


def captum_time_to_rho(
    forward: Callable,
    n: int,
    reference: np.ndarray,
    seed: int,
    per_eval: int,
    chunk: int,
    max_permutations: int,
) -> dict:
    """Run Captum's sampler ``chunk`` permutations at a time; stop when the running mean
    reaches rho >= RHO. Seconds exclude the checks."""
    torch.manual_seed(seed)
    sampler = ShapleyValueSampling(forward)
    ones, zeros = torch.ones(1, n), torch.zeros(1, n)
    total, done, seconds, rho = np.zeros(n), 0, 0.0, float("nan")
    while done < max_permutations:
        start = time.perf_counter()
        attr = sampler.attribute(
            ones,
            baselines=zeros,
            n_samples=chunk,
            perturbations_per_eval=per_eval,
            show_progress=False,
        )
        seconds += time.perf_counter() - start
        total += attr[0].double().numpy() * chunk
        done += chunk
        rho = agreement(total / done, reference)["spearman"]
        if rho >= RHO:
            break
    return {
        "seed": seed,
        "seconds": seconds,
        "permutations": done,
        "evals": done * (n + 1),
        "spearman": rho,
        "reached": bool(rho >= RHO),
    }


def tune_per_eval(forward: Callable, n: int, options: list[int]) -> tuple[int, dict]:
    """The perturbations_per_eval giving the most evaluations per second."""
    rates = {}
    for p in options:
        sampler = ShapleyValueSampling(forward)
        start = time.perf_counter()
        sampler.attribute(
            torch.ones(1, n),
            baselines=torch.zeros(1, n),
            n_samples=2,
            perturbations_per_eval=p,
            show_progress=False,
        )
        rates[p] = 2 * (n + 1) / (time.perf_counter() - start)
    return max(rates, key=rates.get), rates


def shapprune_time_to_rho(
    make_game: Callable[[], PruningGame], reference: np.ndarray, seed: int, budgets: list[int]
) -> dict:
    """Construction of the game plus the first default run of the ladder with rho >= RHO."""
    start = time.perf_counter()
    game = make_game()
    build = time.perf_counter() - start
    for budget in budgets:
        est = estimate(game, budget=budget, seed=seed)
        rho = agreement(est.values, reference)["spearman"]
        if rho >= RHO:
            break
    return {
        "seed": seed,
        "seconds": build + est.seconds,
        "build_seconds": build,
        "budget": budget,
        "evals": est.n_evals,
        "spearman": rho,
        "reached": bool(rho >= RHO),
    }


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS / "captum_vs.json")
    parser.add_argument(
        "--layers", nargs="+", choices=LAYERS, default=list(LAYERS), help="LeNet-5 layers"
    )
    return parser.parse_args()


def compare(model: torch.nn.Module, layer: str, x, y, quick: bool, folder: Path) -> dict:
    """The three methods on ``layer``'s game; prints its table, returns its results."""

    def make_game() -> PruningGame:
        return PruningGame(model, layer, (x, y))

    game = make_game()
    n = game.n_players
    budget = (QUICK_REFERENCE if quick else REFERENCE)[layer]
    reference, info = reference_values(game, f"lenet5_{layer}", budget, folder, HALVES[layer])
    user_forward = masked_model_value(model, layer, x, y)
    check = torch.rand(8, n, generator=torch.Generator().manual_seed(0)) > 0.3
    gap = (user_forward(check.float()) - game.value(check)).abs().max().item()
    assert gap < 1e-4, f"the Captum wrapper and the game disagree by {gap}"

    seeds = [0, 1] if quick else [0, 1, 2]
    user_seeds = seeds if quick else seeds[: USER_SEEDS[layer]]
    per_eval, rates = tune_per_eval(user_forward, n, [1, 16] if quick else [1, 4, 16, 64])
    cap_limit = 16 if quick else 2000
    runs = {
        USER: [
            captum_time_to_rho(user_forward, n, reference, s, per_eval, 4, cap_limit)
            for s in user_seeds
        ],
        ON_GAME: [
            captum_time_to_rho(lambda m: game.value(m.bool()), n, reference, s, 64, 4, cap_limit)
            for s in seeds
        ],
    }
    low = max(100, 2 + 4 * (n - 1))  # the default estimator's smallest budget, or 100
    budgets = [int(b) for b in np.geomspace(low, 100 * n if not quick else 600, 8)]
    runs[DEFAULT] = [shapprune_time_to_rho(make_game, reference, s, budgets) for s in seeds]

    print(f"#### Time to rho >= {RHO}: LeNet-5 {layer}, {n} filters, {len(x)} images\n")
    reliability = ""
    if "halves_spearman" in info:
        reliability = f"; Spearman rho between its two halves {info['halves_spearman']:.3f}"
    print(
        f"Reference: {info['kind']} ({info['evals']:,} evaluations, {info['seconds']:.0f} s; "
        f"largest standard error {info['max_stderr_over_std']:.3f} of the values' spread"
        f"{reliability}). Median over the seeds "
        f"(min-max); Captum samples the same permutations for a seed whatever its forward "
        f"function. Captum's perturbations_per_eval = {per_eval} (fastest of "
        + ", ".join(f"{p}: {r:.0f} evals/s" for p, r in rates.items())
        + ").\n"
    )
    print("| method | seeds | seconds | evaluations | evals/s | reached | x faster than Captum |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    base = statistics.median(r["seconds"] for r in runs[USER])
    for label, rs in runs.items():
        secs = [r["seconds"] for r in rs]
        evals = statistics.median(r["evals"] for r in rs)
        med = statistics.median(secs)
        reached = sum(r["reached"] for r in rs)
        summary[label] = {"runs": rs, "seconds": med, "speedup": base / med}
        print(
            f"| {label} | {', '.join(str(r['seed']) for r in rs)} "
            f"| {med:.2f} ({min(secs):.2f}-{max(secs):.2f}) | {evals:,.0f} "
            f"| {evals / med:,.0f} | {reached}/{len(rs)} | {base / med:.1f} |"
        )
    print()
    return {
        "players": n,
        "reference": info,
        "per_eval": per_eval,
        "per_eval_rates": rates,
        "methods": summary,
    }


def main() -> None:
    args = arguments()
    data = load_dataset("mnist5k")
    n_images = 32 if args.quick else 256
    x, y = data.val.x[:n_images], data.val.y[:n_images]
    model = (
        build_model("lenet5") if args.quick else pretrained("lenet5", "mnist5k", progress=False)[0]
    )
    model.eval()
    layers = {
        layer: compare(model, layer, x, y, args.quick, args.out.parent)
        for layer in LAYERS
        if layer in args.layers
    }
    write_json(args.out, {"images": n_images, "rho": RHO, "layers": layers})


if __name__ == "__main__":
    main()
