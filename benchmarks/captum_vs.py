"""shapprune against Captum: wall time to Shapley values that rank LeNet-5's conv2 filters
like the reference (Spearman rho >= 0.95), on the same game.

The game: LeNet-5 (MNIST 5k), the 50 filters of conv2, payoff minus the mean
cross-entropy on 256 validation images. The reference is the one of
``benchmarks/estimators.py`` (an antithetic permutation run of 300,000 evaluations,
computed here if absent).

- Captum: ``captum.attr.ShapleyValueSampling`` on a wrapper whose input is the unit mask,
  as a user would write it: a forward hook zeroes the masked filters of conv2 and the
  whole network runs on the images, ``perturbations_per_eval`` masks per pass (tuned to
  its fastest). Captum samples permutations; its running mean is checked every few
  permutations and the clock stops at the first check with rho >= 0.95.
- Captum on shapprune's game: the same sampler with ``PruningGame.value`` as the forward
  function, to separate the evaluation speed-up from the estimator's.
- shapprune: ``PruningGame`` + ``estimate`` with the defaults (antithetic permutations with
  the position control variate), on a ladder of budgets; the time is the game's
  construction plus the first run of the ladder with rho >= 0.95.

Run: ``python benchmarks/captum_vs.py [--quick] [--out FILE.json]`` (needs captum:
``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from captum.attr import ShapleyValueSampling
from common import arguments, write_json
from estimators import reference_values

from shapprune.estimators.registry import estimate
from shapprune.evaluation.ranking import agreement
from shapprune.game.pruning_game import PruningGame
from shapprune.zoo.cache import pretrained
from shapprune.zoo.data import load_dataset
from shapprune.zoo.models import build_model

RHO = 0.95


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


def main() -> None:
    args = arguments(__doc__, "captum_vs")
    data = load_dataset("mnist5k")
    n_images = 32 if args.quick else 256
    x, y = data.val.x[:n_images], data.val.y[:n_images]
    model = (
        build_model("lenet5") if args.quick else pretrained("lenet5", "mnist5k", progress=False)[0]
    )
    model.eval()
    layer = "conv2"

    def make_game() -> PruningGame:
        return PruningGame(model, layer, (x, y))

    game = make_game()
    n = game.n_players
    reference, info = reference_values(
        game, f"lenet5_{layer}", 6000 if args.quick else 300_000, args.out.parent
    )
    user_forward = masked_model_value(model, layer, x, y)
    check = torch.rand(8, n, generator=torch.Generator().manual_seed(0)) > 0.3
    gap = (user_forward(check.float()) - game.value(check)).abs().max().item()
    assert gap < 1e-4, f"the Captum wrapper and the game disagree by {gap}"

    seeds = [0, 1] if args.quick else [0, 1, 2]
    # a user's wrapper runs ~45 evaluations/s and needs ~10^4 of them: one seed, ~5 minutes
    user_seeds = seeds if args.quick else seeds[:1]
    per_eval, rates = tune_per_eval(user_forward, n, [1, 16] if args.quick else [1, 4, 16, 64])
    cap_limit = 16 if args.quick else 2000
    runs = {
        "Captum ShapleyValueSampling, user's hook wrapper": [
            captum_time_to_rho(user_forward, n, reference, s, per_eval, 4, cap_limit)
            for s in user_seeds
        ],
        "Captum ShapleyValueSampling on shapprune's game": [
            captum_time_to_rho(lambda m: game.value(m.bool()), n, reference, s, 64, 4, cap_limit)
            for s in seeds
        ],
    }
    budgets = [int(b) for b in np.geomspace(200, 100 * n if not args.quick else 600, 8)]
    runs["shapprune default (PruningGame + estimate)"] = [
        shapprune_time_to_rho(make_game, reference, s, budgets) for s in seeds
    ]

    print(f"#### Time to rho >= {RHO}: LeNet-5 conv2, {n} filters, {n_images} images\n")
    print(
        f"Reference: {info['kind']} ({info['evals']:,} evaluations). Median over the seeds "
        f"(min-max); Captum samples the same permutations for a seed whatever its forward "
        f"function. Captum's perturbations_per_eval = {per_eval} (fastest of "
        + ", ".join(f"{p}: {r:.0f} evals/s" for p, r in rates.items())
        + ").\n"
    )
    print("| method | seeds | seconds | evaluations | evals/s | reached | x faster than Captum |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    base = statistics.median(r["seconds"] for r in next(iter(runs.values())))
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
    write_json(
        args.out,
        {"reference": info, "per_eval": per_eval, "per_eval_rates": rates, "methods": summary},
    )


if __name__ == "__main__":
    main()
