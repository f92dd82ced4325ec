"""Real-size models at real speed: ``prune_model`` with ``shapprune prune``'s defaults on
torchvision networks at 224 px, its wall time as a multiple of one forward pass of the
reference examples measured in the same process, its stages, and its peak memory.

Each model runs in its own subprocess (its peak resident memory is its own): torchvision's
builder with random weights (seeded; these figures are about time, not accuracy) and 10
classes, 60 reference examples (6 per class) and a test split of 60 random images, both
in memory. One forward pass of the 60 reference examples is timed first (inference mode,
the median of 3), then ``prune_model(model, data, target="macs=0.5", per_class=6)`` with
every other argument at its default (LRP, scope auto, compensation auto, refinement), then
the same with ``time_budget=90`` on ResNet-50: the budget's clock starts before the model
is built, so building it counts. Then ResNet-50 and ViT-B/16 once more in float32 and with
``precision="bfloat16"`` (the removals' evaluations under autocast), one after the other in
the same run: the seconds of both are comparable, those of the first table only roughly.

Run: ``OMP_NUM_THREADS=1 python benchmarks/real_scale.py`` (about 20 minutes on one
thread); ``--models resnet50,vit_b_16`` for some; ``--precision-run only``: the precision
comparison alone, added to the results stored in ``--out``; ``--quick``: MobileNet-V3-Small at 64 px
with 20 reference examples (the suite's smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, machine

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("resnet50", "convnext_tiny", "vit_b_16", "efficientnet_b0", "mobilenet_v3_large")
BUDGETED = "resnet50"
PRECISION_MODELS = ("resnet50", "vit_b_16")
LOW = "bfloat16"
BUDGET_S = 90.0
GOAL_PASSES = 15
CLASSES = 10


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small model (smoke test)")
    parser.add_argument("--models", default=",".join(MODELS), help="torchvision builders")
    parser.add_argument("--out", type=Path, default=RESULTS / "real_scale.json")
    parser.add_argument("--budget-run", choices=("yes", "no", "only"), default="yes",
                        help=f"the run with a {BUDGET_S:.0f} s time budget on {BUDGETED}; "
                        "only: that run alone, added to the rows stored in --out")  # fmt: skip
    parser.add_argument("--game", choices=("yes", "no", "only"), default="yes",
                        help=f"the network-wide game's evaluation rate on {BUDGETED}; only: "
                        "that alone, added to the results stored in --out")  # fmt: skip
    parser.add_argument("--precision-run", choices=("yes", "no", "only"), default="yes",
                        help=f"{', '.join(PRECISION_MODELS)} in float32 and in {LOW}; only: "
                        "that alone, added to the results stored in --out")  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one model, in this process
    parser.add_argument("--pixels", type=int, default=224, help=argparse.SUPPRESS)
    parser.add_argument("--per-class", type=int, default=6, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    return parser.parse_args()


def child(
    name: str, pixels: int, per_class: int, budget: float | None, precision: str = "float32"
) -> dict:
    """Build ``name``, time one reference pass, prune with the defaults: the figures."""
    from shapprune.pruning.budget import Clock

    clock = Clock(budget)  # before anything is built: loading counts against a budget
    import statistics

    import torch
    import torchvision

    from shapprune.data import DatasetSplits, Split
    from shapprune.pruning.compress import prune_model

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=CLASSES).eval()
    g = torch.Generator().manual_seed(0)
    n = per_class * CLASSES

    def split() -> Split:
        return Split(torch.randn(n, 3, pixels, pixels, generator=g), torch.arange(n) % CLASSES)

    data = DatasetSplits(None, split(), split(), name="random", num_classes=CLASSES,
                         in_channels=3, image_size=pixels)  # fmt: skip
    built = clock.elapsed()
    passes = []
    with torch.inference_mode():
        for _ in range(3):
            start = time.perf_counter()
            model(data.val.x)
            passes.append(time.perf_counter() - start)
    pass_s = statistics.median(passes)
    start = time.perf_counter()
    pruned, summary = prune_model(model, data, target="macs=0.5", per_class=per_class,
                                  time_budget=clock if budget else None,
                                  precision=precision)  # fmt: skip
    seconds = time.perf_counter() - start
    refinement = [p.get("refinement", {}) for p in summary["plans"]]
    return {
        "model": name,
        "precision": precision,
        "pixels": pixels,
        "reference_examples": n,
        "params": summary["before"]["params"],
        "macs": summary["before"]["macs"],
        "pass_s": pass_s,
        "build_s": built,
        "prune_s": seconds,
        "passes": seconds / pass_s,
        "budget_s": budget,
        "whole_s": clock.elapsed(),  # building, timing the pass and pruning
        "stages": summary["stages"],
        "macs_ratio": summary["after"]["macs"] / summary["before"]["macs"],
        "refine_evaluations": sum(r.get("sets_evaluated", 0) for r in refinement),
        "refine_allowed": sum(r.get("evaluations_allowed", 0) for r in refinement),
        "refine_value": refinement[-1].get("value") if refinement else None,
        "scope": (summary["plans"][0].get("scope") or {}).get("chosen"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB
    }


def game_rate(name: str, pixels: int, per_class: int, coalitions: int) -> dict:
    """The network-wide game over every prunable layer of ``name`` (Neuron Shapley's game,
    ``network-shapley``'s), on the reference examples: seconds per evaluation of random
    coalitions (each keeps a random half of every layer's units), and what each estimator's
    default budget at that many players would take at that rate."""
    import torch
    import torchvision

    from shapprune.estimators.registry import ESTIMATORS, default_budget
    from shapprune.game.network_game import NetworkGame

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=CLASSES).eval()
    n = per_class * CLASSES
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, pixels, pixels, generator=g), torch.arange(n) % CLASSES
    start = time.perf_counter()
    game = NetworkGame(model, (x, y), metric="loss")
    built = time.perf_counter() - start
    times = []
    for _ in range(coalitions):
        masks = torch.rand(1, game.n_players, generator=g) > 0.5
        begin = time.perf_counter()
        game.value(masks)
        times.append(time.perf_counter() - begin)
    per_eval = sorted(times)[len(times) // 2]
    budgets = {}
    for method in ESTIMATORS:
        try:
            budget = default_budget(method, game.n_players)
        except (TypeError, ValueError):  # a method that needs options it has no default for
            continue
        if budget < 10**15:  # exact: every coalition, 2^n (said in the report)
            budgets[method] = budget
    return {
        "model": name,
        "players": game.n_players,
        "layers": len(game.layer_units),
        "filters": sum(
            m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)
        ),  # fmt: skip
        "examples": n,
        "cached": game.cached,
        "build_s": built,
        "eval_s": per_eval,
        "evals_per_s": 1 / per_eval,
        "default_budgets": budgets,
    }


def run_child(
    name: str, pixels: int, per_class: int, budget: float | None, precision: str = "float32"
) -> dict:
    """One model in a subprocess: its figures and its peak resident memory."""
    with tempfile.TemporaryDirectory() as folder:  # not in results/: a killed run leaves none
        out = Path(folder) / "child.json"
        command = [sys.executable, __file__, "--child", name, "--pixels", str(pixels),
                   "--per-class", str(per_class), "--out", str(out)]  # fmt: skip
        if budget:
            command += ["--budget", str(budget)]
        command += ["--precision", precision]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        env.setdefault("OMP_NUM_THREADS", "1")
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        result = json.loads(out.read_text())
    result["process_s"] = wall  # the interpreter's start and imports included
    return result


def main() -> None:
    args = _arguments()
    if args.child and args.child.startswith("game:"):
        coalitions = 2 if args.quick else 5
        result = game_rate(args.child[5:], args.pixels, args.per_class, coalitions)
        args.out.write_text(json.dumps(result))
        return
    if args.child:
        result = child(args.child, args.pixels, args.per_class, args.budget, args.precision)
        args.out.write_text(json.dumps(result))
        return
    models = ["mobilenet_v3_small"] if args.quick else args.models.split(",")
    pixels, per_class = (64, 2) if args.quick else (224, 6)
    rows, stored = [], {}
    if "only" in (args.budget_run, args.game, args.precision_run):
        stored = json.loads(args.out.read_text())
        rows = stored["rows"]
    else:
        for name in models:
            rows.append(run_child(name, pixels, per_class, None))
            print(f"{name}: {rows[-1]['prune_s']:.0f} s", file=sys.stderr, flush=True)
    budgeted = models[0] if args.quick else BUDGETED
    timed, game = stored.get("budgeted"), stored.get("game")
    precision = stored.get("precision")
    alone = {name for name in ("budget_run", "game", "precision_run")
             if getattr(args, name) == "only"}  # fmt: skip
    if args.budget_run != "no" and alone <= {"budget_run"}:
        timed = run_child(budgeted, pixels, per_class, 10.0 if args.quick else BUDGET_S)
    if args.game != "no" and alone <= {"game"}:
        game = run_child(f"game:{budgeted}", pixels, per_class, None)
    if args.precision_run != "no" and alone <= {"precision_run"}:
        # a model pruned above in this run in float32, the same way: that run is the pair's
        measured = {} if stored else {r["model"]: r for r in rows if r["precision"] == "float32"}
        precision = [
            {p: measured[name] if p == "float32" and name in measured
             else run_child(name, pixels, per_class, None, p) for p in ("float32", LOW)}
            for name in (models[:1] if args.quick else PRECISION_MODELS)
        ]  # fmt: skip
    result = {
        "machine": machine(),
        "quick": args.quick,
        "omp_threads": os.environ.get("OMP_NUM_THREADS", "1"),
        "goal_passes": GOAL_PASSES,
        "rows": rows,
        "budgeted": timed,
        "game": game,
        "precision": precision,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    report(result)


def report(result: dict) -> None:
    """The Markdown tables."""
    rows = result["rows"]
    px, n = rows[0]["pixels"], rows[0]["reference_examples"]
    print(f"#### prune's defaults to -50% MACs at {px} px, {n} reference examples\n")
    print(
        "| model | params | MACs | one reference pass | prune | in passes | scoring | "
        "planning | refining (evaluations) | measuring | peak RSS | MACs after | goal met |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        st = r["stages"]
        met = "yes" if r["passes"] <= result["goal_passes"] else "no"
        print(f"| {r['model']} | {r['params'] / 1e6:.1f} M | {r['macs'] / 1e9:.2f} G "
              f"| {r['pass_s']:.2f} s | {r['prune_s']:.0f} s | {r['passes']:.1f} "
              f"| {st.get('scoring', 0):.0f} s | {st.get('planning', 0):.0f} s "
              f"| {st.get('refining', 0):.0f} s ({r['refine_evaluations']}) "
              f"| {st.get('measuring', 0):.0f} s | {r['peak_rss_mb']:,.0f} MB "
              f"| {r['macs_ratio']:.3f} | {met} |")  # fmt: skip
    timed = result.get("budgeted")
    if timed:
        st = ", ".join(f"{k} {v:.0f} s" for k, v in timed["stages"].items())
        met = "yes" if timed["whole_s"] <= timed["budget_s"] * 1.1 else "no"
        print(
            f"\nWith `time_budget={timed['budget_s']:.0f}` on {timed['model']}: "
            f"{timed['whole_s']:.0f} s from before building the model to the end "
            f"(goal: within {timed['budget_s'] * 1.1:.0f} s: {met}); {st}; "
            f"{timed['refine_evaluations']} refinement evaluations of "
            f"{timed['refine_allowed']} allowed; MACs after {timed['macs_ratio']:.3f}."
        )
    if result.get("precision"):
        _precision_report(result["precision"])
    game = result.get("game")
    if game:
        print(
            f"\n#### The network-wide game on {game['model']}: {game['players']:,} players "
            f"({game['layers']} layers; {game['filters']:,} convolution filters), "
            f"{game['examples']} examples\n"
        )
        print(
            f"Built in {game['build_s']:.0f} s (prefix cache: {game['cached']}); one "
            f"evaluation of a random coalition takes {game['eval_s']:.2f} s "
            f"({game['evals_per_s']:.3f} per second). Each estimator's default budget at "
            "that many players, at that rate (one process; workers divide it):\n"
        )
        print("| estimator | default budget (evaluations) | hours, 1 process | 8 workers |")
        print("|---|---|---|---|")
        for method, budget in sorted(game["default_budgets"].items(), key=lambda kv: kv[1]):
            hours = budget * game["eval_s"] / 3600
            print(f"| {method} | {budget:,} | {hours:,.1f} | {hours / 8:,.1f} |")
        print(f"| exact | 2^{game['players']:,} | - | - |")
    print(
        f"\nGoal: prune within {result['goal_passes']} reference passes' worth of time. "
        f"Random weights; {result['omp_threads']} thread(s); peak RSS of each model's "
        "own process."
    )


def _precision_report(pairs: list[dict]) -> None:
    """float32 against bfloat16 autocast, the same models one after the other."""
    print(f'\n#### The removals\' evaluations in {LOW} (`precision="{LOW}"`)\n')
    print("| model | precision | prune | in passes | planning | refining (evaluations) "
          "| MACs after | refinement's value, as evaluated |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for pair in pairs:
        for p, r in pair.items():
            st = r["stages"]
            value = r.get("refine_value")
            print(f"| {r['model']} | {p} | {r['prune_s']:.0f} s | {r['passes']:.1f} "
                  f"| {st.get('planning', 0):.0f} s "
                  f"| {st.get('refining', 0):.0f} s ({r['refine_evaluations']}) "
                  f"| {r['macs_ratio']:.3f} "
                  f"| {'-' if value is None else f'{value:.4f}'} |")  # fmt: skip
    speedups = ", ".join(
        f"{pair['float32']['model']} {pair['float32']['prune_s'] / pair[LOW]['prune_s']:.2f}x"
        for pair in pairs
    )
    print(
        f"\nWhole prune, float32 over {LOW}: {speedups}; scoring and measuring stay "
        "float32 in both."
    )


if __name__ == "__main__":
    main()
