"""Scale and memory: Shapley-ranking every prunable layer of ResNet-20, and what the
``memory_mb`` budget of ``PruningGame`` does to peak memory and wall time.

Every prunable layer of the zoo ResNet-20 (trained on MNIST 5k; 12 layers of 16-64 units)
is ranked on its own ``PruningGame`` (loss metric) on the first 256 validation images,
with the default estimator (``estimate(game)``: permutation sampling, antithetic pairs and
the position control variate) at a budget of 4 evaluations per unit (``BUDGET_PER_UNIT``;
just above the least that gives a standard error: two antithetic pairs of walks).

The whole ranking runs once per game setting in ``RUNS``: the defaults (``memory_mb=512``,
which give the per-layer table), ``memory_mb=64`` and ``memory_mb=16``; when one
coalition's pass over all the images would exceed M, the game passes fewer images at a
time. Each run is a fresh subprocess, so that its peak memory is its own: after loading model and
data the child reads its resident set (VmRSS), resets the peak (``/proc/self/clear_refs``;
else falls back to ``ru_maxrss``), ranks, and reports the peak (VmHWM) above that
baseline. Each ranking runs once: its times are sums over hundreds of evaluations.

Run: ``python benchmarks/scale.py [--quick] [--out benchmarks/results/scale.json]``.
``--quick``: untrained ResNet-20, two of its layers, 64 images, the smallest budget the
estimator accepts, the same three settings.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import arguments, write_json

from shapprune.estimators.permutation import min_budget
from shapprune.estimators.registry import estimate
from shapprune.game.pruning_game import PruningGame
from shapprune.pruning.plan import prunable_layers
from shapprune.zoo.cache import pretrained
from shapprune.zoo.data import load_dataset
from shapprune.zoo.models import build_model

BUDGET_PER_UNIT = 4  # evaluations per unit of a layer
REFERENCE = 256  # images per game
# PruningGame options per run; the first are the defaults and give the per-layer table.
# Below one coalition's pass over all images, the game passes fewer images at a time.
RUNS = ({"memory_mb": 512}, {"memory_mb": 64}, {"memory_mb": 16})
QUICK_LAYERS = ("layer1.0.conv1", "layer3.2.conv1")
QUICK_REFERENCE = 64
MIB = 2**20


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        return
    args = arguments(__doc__, "scale")
    quick = args.quick
    runs = []
    for options in RUNS:
        print(f"ranking with {options} ...", file=sys.stderr, flush=True)
        runs.append(run_child({"options": options, "quick": quick}))
    default = runs[0]
    model = "untrained ResNet-20, 2 layers" if quick else "ResNet-20 (MNIST 5k)"
    budget = "the smallest budget" if quick else f"budget {BUDGET_PER_UNIT} x units"
    print(
        f"#### Shapley ranking of every prunable layer, {model}: {default['reference']} "
        f"images, permutation (antithetic + control variate), {budget}\n"
    )
    print(
        "Seconds to build the game (prefix cache) and to estimate; evaluations per second of "
        "estimation; coalitions per stacked pass and that pass's activation estimate at "
        f"memory_mb={default['memory_mb']:g}.\n"
    )
    print_layers(default)
    print(
        f"\n#### Memory budget: the whole ranking at memory_mb = M, each run in its own "
        f"process, {model}\n"
    )
    print(
        "Images and coalitions per stacked pass (range over layers); largest stacked pass: "
        "coalitions x images per pass x estimated activation bytes per image, what the game "
        "bounds by M; peak RSS above the loaded baseline; wall time relative to the defaults "
        "(first row).\n"
    )
    print_memory(runs)
    write_json(
        args.out,
        {
            "quick": quick,
            "budget_per_unit": None if quick else BUDGET_PER_UNIT,
            "reference_images": default["reference"],
            "runs": runs,
        },
    )


def run_child(config: dict) -> dict:
    """One whole ranking in a fresh interpreter; its JSON result."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"child {config} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(config: dict) -> dict:
    """Rank every selected layer with the game ``options``: times, evaluations, peak memory."""
    quick, options = config["quick"], config["options"]
    data = load_dataset("mnist5k")
    n_ref = QUICK_REFERENCE if quick else REFERENCE
    ref = (data.val.x[:n_ref], data.val.y[:n_ref])
    if quick:
        model = build_model("resnet20")
    else:
        model, _ = pretrained("resnet20", "mnist5k", progress=False)
    layers = prunable_layers(model, ref[0][:2])
    if quick:
        layers = {name: layers[name] for name in QUICK_LAYERS}

    baseline = _status_kib("VmRSS")
    cleared = _reset_peak()
    rows = []
    start = time.perf_counter()
    for name, units in layers.items():
        n = units.n_players
        budget = min_budget(n, True) if quick else BUDGET_PER_UNIT * n
        t0 = time.perf_counter()
        game = PruningGame(model, name, ref, **options)
        t1 = time.perf_counter()
        result = estimate(game, budget=budget, seed=0)
        t2 = time.perf_counter()
        stack = game.stack_size()
        rows.append(
            {
                "layer": name,
                "units": n,
                "budget": budget,
                "evaluations": result.n_evals,
                "build_s": t1 - t0,
                "estimate_s": t2 - t1,
                "evals_per_s": result.n_evals / (t2 - t1),
                "stack_size": stack,
                "per_coalition_mib": game._per_coalition / MIB,
                "stacked_pass_mib": stack * game._per_coalition / MIB,
                "decomposed": game.decomposed,
                "images_per_pass": game.batch_size,
            }
        )
        del game
    wall = time.perf_counter() - start
    peak = _status_kib("VmHWM") if cleared else _maxrss_kib()
    return {
        "memory_mb": options["memory_mb"],
        "images_per_pass": [
            min(r["images_per_pass"] for r in rows),
            max(r["images_per_pass"] for r in rows),
        ],
        "reference": n_ref,
        "threads": torch.get_num_threads(),
        "layers": rows,
        "wall_s": wall,
        "evaluations": sum(r["evaluations"] for r in rows),
        "baseline_rss_mib": baseline / 1024,
        "peak_rss_mib": peak / 1024,
        "peak_above_baseline_mib": (peak - baseline) / 1024,
        "peak_method": "VmHWM after clear_refs" if cleared else "ru_maxrss (not reset)",
        "largest_stacked_pass_mib": max(r["stacked_pass_mib"] for r in rows),
        "stack_sizes": [min(r["stack_size"] for r in rows), max(r["stack_size"] for r in rows)],
    }


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (VmRSS, VmHWM), or ru_maxrss without /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return _maxrss_kib()


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def print_layers(run: dict) -> None:
    """The per-layer table of one run, with a total row."""
    print(
        "| layer | units | evaluations | build s | estimate s | evals/s "
        "| coalitions per pass | pass MiB (est.) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in run["layers"]:
        print(
            f"| {r['layer']} | {r['units']} | {r['evaluations']:,} | {r['build_s']:.2f} "
            f"| {r['estimate_s']:.1f} | {r['evals_per_s']:.1f} | {r['stack_size']} "
            f"| {r['stacked_pass_mib']:.0f} |"
        )
    build = sum(r["build_s"] for r in run["layers"])
    est = sum(r["estimate_s"] for r in run["layers"])
    units = sum(r["units"] for r in run["layers"])
    print(
        f"| **total** (wall {run['wall_s']:.1f} s, peak +{run['peak_above_baseline_mib']:.0f} "
        f"MiB) | {units} | {run['evaluations']:,} | {build:.1f} | {est:.1f} "
        f"| {run['evaluations'] / est:.1f} | | |"
    )


def print_memory(runs: list[dict]) -> None:
    """One row per memory budget."""
    base = runs[0]["wall_s"]
    print(
        "| M (MiB) | images per pass | coalitions per pass | largest pass MiB (est.) "
        "| within M | consumers allowed tables | peak RSS above baseline MiB | wall s "
        "| wall / default |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        decomposed = sum(r["decomposed"] for r in run["layers"])
        lo, hi = run["stack_sizes"]
        stacks = str(lo) if lo == hi else f"{lo}-{hi}"
        lo, hi = run["images_per_pass"]
        images = str(lo) if lo == hi else f"{lo}-{hi}"
        within = "yes" if run["largest_stacked_pass_mib"] <= run["memory_mb"] else "**no**"
        print(
            f"| {run['memory_mb']:g} | {images} | {stacks} "
            f"| {run['largest_stacked_pass_mib']:.0f} | {within} | {decomposed} "
            f"| {run['peak_above_baseline_mib']:.0f} | {run['wall_s']:.1f} "
            f"| {run['wall_s'] / base:.2f} |"
        )


if __name__ == "__main__":
    main()
