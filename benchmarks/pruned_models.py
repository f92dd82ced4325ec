"""Pruned models: what removing 30%, 50% and 70% of the MACs buys on the CPU.

Each zoo model (LeNet-5, TinyCNN, VGG, ResNet-20, ViT; trained on MNIST 5k) is pruned by
the project's own plan: every prunable layer's units are scored by weight-l1 (the L1 norm
of each unit's weights), every layer loses the same fraction of its units (per-layer
allocation; global allocation on l1-normalised scores empties the widest layers first and
takes LeNet-5 and ResNet-20 to chance accuracy without fine-tuning), and ``make_plan``
bisects on that fraction until the MACs target is met. The units are removed physically
with torch-pruning; nothing is fine-tuned. This is ``prune_model(model, data,
get_criterion("weight-l1"), "macs=F")`` without its own measurements.

Measured for the original and each pruned model: parameters, MACs (torch-pruning's
counter, one example), test accuracy (1,000 test images) and CPU latency in inference
mode at batch 1 and batch 64, with torch's default threads. The original and its pruned
versions are timed in turn, round after round, so that a change in the machine's load
hits all alike; a sample is the mean of enough forward passes to last about 20 ms. The
latency ratio is the median over rounds of pruned / original in the same round (min-max
over rounds); latency reduction / MACs reduction = (1 - latency ratio) / (1 - MACs
ratio): 1 when time falls in proportion to MACs, 0 when it does not fall at all.

Run: ``python benchmarks/pruned_models.py [--quick] [--out benchmarks/results/pruned_models.json]``.
``--quick``: untrained LeNet-5 and TinyCNN, 50% of the MACs only, 5 rounds.
"""

from __future__ import annotations

import math
import sys
import time

import torch
from common import arguments, fmt_spread, spread, write_json
from torch import nn

from shapprune.criteria.registry import score_layers
from shapprune.evaluation.measure import count_macs, count_params, evaluate
from shapprune.pruning.plan import Target, make_plan, prunable_layers
from shapprune.pruning.removal import apply_removals
from shapprune.zoo.cache import pretrained
from shapprune.zoo.data import DatasetSplits, load_dataset, reference_set
from shapprune.zoo.models import build_model

MODELS = ("lenet5", "tinycnn", "vgg", "resnet20", "vit")
TARGETS = (0.3, 0.5, 0.7)  # fractions of the MACs removed
ROUNDS = 100  # latency samples per model and batch size
QUICK = {"models": ("lenet5", "tinycnn"), "targets": (0.5,), "rounds": 5}
SAMPLE_S = 0.02  # each latency sample lasts about this long
TOLERANCE = 0.02  # achieved MACs reduction this close to the target counts as met
BATCHES = (1, 64)


def main() -> None:
    args = arguments(__doc__, "pruned_models")
    models = QUICK["models"] if args.quick else MODELS
    targets = QUICK["targets"] if args.quick else TARGETS
    rounds = QUICK["rounds"] if args.quick else ROUNDS
    data = load_dataset("mnist5k")
    results = []
    for name in models:
        print(f"{name} ...", file=sys.stderr, flush=True)
        if args.quick:
            model = build_model(name)
        else:
            model, _ = pretrained(name, "mnist5k", progress=False)
        results.append(prune_and_measure(name, model.eval(), data, targets, rounds))

    heading = "weight-l1, the same fraction of every layer, physical removal, no fine-tuning"
    trained = "untrained" if args.quick else "trained on MNIST 5k"
    print(f"#### Size and accuracy after removing a fraction of the MACs: {heading}\n")
    print(
        f"Models {trained}; ratios are pruned / original; test accuracy on 1,000 images; "
        "seconds to plan (bisection on pruned copies) and remove.\n"
    )
    print_sizes(results)
    print(
        f"\n#### CPU latency, pruned vs original ({torch.get_num_threads()} threads): {heading}\n"
    )
    print(
        f"Milliseconds per forward pass: median (min-max) of {rounds} rounds; latency ratio: "
        "median (min-max) of pruned / original in the same round; latency drop / MACs drop: "
        "(1 - latency ratio) / (1 - MACs ratio).\n"
    )
    print_latency(results)
    write_json(
        args.out,
        {
            "criterion": "weight-l1",
            "allocation": "per layer (uniform fraction)",
            "fine_tuning": False,
            "trained": not args.quick,
            "rounds": rounds,
            "tolerance": TOLERANCE,
            "models": results,
        },
    )


def prune_and_measure(
    name: str, model: nn.Module, data: DatasetSplits, targets: tuple[float, ...], rounds: int
) -> dict:
    """Prune ``model`` to each MACs target; sizes, accuracy and latency of all versions."""
    example = data.val.x[:2]
    ref = reference_set(data.val, per_class=25, seed=0)  # weight-l1 does not read it
    layers = list(prunable_layers(model, example))
    scores = score_layers("weight-l1", model, layers, (ref.x, ref.y))
    original = sizes(model, data)
    versions, pruned = [model], []
    for fraction in targets:
        start = time.perf_counter()
        try:
            plan = make_plan(model, scores, Target("macs", fraction), example)
            small = apply_removals(model, plan.removals, example)
        except Exception as err:  # report the failure, carry on with the other targets
            pruned.append({"target": fraction, "error": f"{type(err).__name__}: {err}"})
            continue
        seconds = time.perf_counter() - start
        row = {"target": fraction, "prune_s": seconds, **sizes(small, data)}
        row["params_ratio"] = row["params"] / original["params"]
        row["macs_ratio"] = row["macs"] / original["macs"]
        row["macs_removed"] = 1 - row["macs_ratio"]
        row["met"] = abs(row["macs_removed"] - fraction) <= TOLERANCE
        row["removed"] = {layer: len(units) for layer, units in plan.removals.items()}
        pruned.append(row)
        versions.append(small)
    ok = [row for row in pruned if "error" not in row]
    for batch in BATCHES:
        x = data.test.x[:batch]
        samples = latency_rounds(versions, x, rounds)
        key = f"b{batch}"
        original[f"latency_ms_{key}"] = spread([1e3 * s for s in samples[0]])
        for row, own in zip(ok, samples[1:], strict=True):
            ratios = [p / o for p, o in zip(own, samples[0], strict=True)]
            row[f"latency_ms_{key}"] = spread([1e3 * s for s in own])
            row[f"latency_ratio_{key}"] = spread(ratios)
            drop = 1 - row[f"latency_ratio_{key}"]["median"]
            row[f"latency_per_macs_{key}"] = drop / row["macs_removed"]
    return {"model": name, "layers": layers, "original": original, "pruned": pruned}


def sizes(model: nn.Module, data: DatasetSplits) -> dict:
    """Parameters, MACs per example and test accuracy."""
    return {
        "params": count_params(model),
        "macs": count_macs(model, data.test.x[:1]),
        "accuracy": evaluate(model, data.test)["accuracy"],
    }


def latency_rounds(models: list[nn.Module], x: torch.Tensor, rounds: int) -> list[list[float]]:
    """Seconds per forward pass on ``x`` of each model, ``rounds`` samples each, the models
    taking turns within every round."""
    with torch.inference_mode():
        repeats = [_passes_per_sample(m, x) for m in models]
        samples: list[list[float]] = [[] for _ in models]
        for _ in range(rounds):
            for model, k, out in zip(models, repeats, samples, strict=True):
                start = time.perf_counter()
                for _ in range(k):
                    model(x)
                out.append((time.perf_counter() - start) / k)
    return samples


def _passes_per_sample(model: nn.Module, x: torch.Tensor) -> int:
    """Forward passes that last about ``SAMPLE_S`` (after two warm-up passes)."""
    model(x)
    model(x)
    start = time.perf_counter()
    model(x)
    return max(1, math.ceil(SAMPLE_S / max(time.perf_counter() - start, 1e-6)))


def print_sizes(results: list[dict]) -> None:
    """One row per model version: parameters, MACs, accuracy."""
    print(
        "| model | MACs target | MACs removed | params | params ratio | MACs | MACs ratio "
        "| test accuracy | prune s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for res in results:
        o = res["original"]
        print(
            f"| {res['model']} | original | - | {o['params']:,} | 1 | {o['macs']:,} | 1 "
            f"| {o['accuracy']:.3f} | - |"
        )
        for r in res["pruned"]:
            if "error" in r:
                print(f"| {res['model']} | {r['target']:.0%} | failed: {r['error']} |||||||")
                continue
            flag = "" if r["met"] else " (off target)"
            print(
                f"| {res['model']} | {r['target']:.0%} | {r['macs_removed']:.1%}{flag} "
                f"| {r['params']:,} | {r['params_ratio']:.3f} | {r['macs']:,} "
                f"| {r['macs_ratio']:.3f} | {r['accuracy']:.3f} | {r['prune_s']:.1f} |"
            )
    rows = [r for res in results for r in res["pruned"] if "error" not in r]
    if rows:
        worst = max(abs(r["macs_removed"] - r["target"]) for r in rows)
        missed = sum(not r["met"] for r in rows)
        print(
            f"\nAchieved MACs reduction vs target: largest gap {100 * worst:.1f} points; "
            f"{missed} of {len(rows)} prunings off by more than {100 * TOLERANCE:.0f} points."
        )


def print_latency(results: list[dict]) -> None:
    """One row per model version: latency at each batch size, and ratios for pruned ones."""
    head = " | ".join(
        f"b{b} ms | b{b} latency ratio | b{b} latency drop / MACs drop" for b in BATCHES
    )
    print(f"| model | MACs ratio | {head} |")
    print("|---|---|" + "---|" * 3 * len(BATCHES))
    for res in results:
        o = res["original"]
        cells = " | ".join(f"{fmt_spread(o[f'latency_ms_b{b}'], 3)} | 1 | -" for b in BATCHES)
        print(f"| {res['model']} original | 1 | {cells} |")
        for r in res["pruned"]:
            if "error" in r:
                continue
            cells = " | ".join(
                f"{fmt_spread(r[f'latency_ms_b{b}'], 3)} "
                f"| {fmt_spread(r[f'latency_ratio_b{b}'], 2)} "
                f"| {r[f'latency_per_macs_b{b}']:.2f}"
                for b in BATCHES
            )
            print(f"| {res['model']} -{r['target']:.0%} MACs | {r['macs_ratio']:.3f} | {cells} |")


if __name__ == "__main__":
    main()
