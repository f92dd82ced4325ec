"""Run every benchmark; regenerate ``BENCHMARKS.md`` and the blocks of ``docs/results.md``.

Run: ``python benchmarks/run_all.py [--quick] [--only NAME ...]``. Each benchmark runs as
its own process, one after the other (never two at once: they time things); its tables
and JSON land in ``benchmarks/results/``. The full run takes about 20 minutes on 2 cores,
plus vs_torch_pruning (92 minutes as two processes side by side, LeNet-5, VGG and ViT in
one and ResNet-20 in the other, at one thread each on 2 cores shared with other work,
2026-11-22).
``--only`` reruns some benchmarks and rebuilds the document from the stored results of
the others.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, machine
from report import first_section, replace_block, results_only

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCHMARKS = {  # name -> title, in the order of the document
    "throughput": "1. Evaluation throughput",
    "estimators": "2. Estimator efficiency",
    "captum_vs": "3. Against Captum",
    "pruned_models": "4. Pruned models",
    "scale": "5. Scale and memory",
    "vs_torch_pruning": "6. Against Torch-Pruning",
    "executors": "7. Executors",
    "bandit": "8. The bandit at network scale",
    "decision_estimators": "9. Estimation aimed at the decision",
    "lrp_tuning": "10. LRP tuned for pruning",
    "prune_tradeoffs": "11. What prune's speed costs",
    "device_check": "12. The device check",
    "torchvision_families": "13. Every torchvision family through prune's defaults",
    "folder_memory": "14. Streaming an image folder",
    "own_model": "15. Your own model, end to end",
    "real_scale": "16. Real-size models at real speed",
    "held_out": "17. Held-out architectures",
    "estimators_at_scale": "18. Settling the cut: estimators against shapiq and pyDVL",
    "allocation": "19. Sharing the cut among layers",
    "demo": "The demo's wall time",
}


# a full run's options where a benchmark's own defaults take longer than the run allows
FULL_ARGS = {
    "held_out": ["--models", "resnet34", "mobilenet_v2", "deit_tiny", "--targets", "0.3", "0.5",
                 "--cut", "EfficientNet-B0 and -70% MACs (the run time on 2 shared cores)"],
}  # fmt: skip


def run_one(name: str, quick: bool, results: Path) -> float:
    """Run one benchmark; keep its printed tables in ``results/NAME.md``; return seconds."""
    start = time.perf_counter()
    if name == "demo":
        text = _demo()
    else:
        command = [sys.executable, str(HERE / f"{name}.py"), "--out", str(results / f"{name}.json")]
        done = subprocess.run(
            command + (["--quick"] if quick else FULL_ARGS.get(name, [])),
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if done.returncode != 0:
            raise SystemExit(f"benchmarks/{name}.py failed:\n{done.stderr[-3000:]}")
        text = done.stdout
    seconds = time.perf_counter() - start
    (results / f"{name}.md").write_text(results_only(text) + f"\n\n_Ran in {seconds:.0f} s._\n")
    print(f"{name}: {seconds:.0f} s", flush=True)
    return seconds


def _demo() -> str:
    """`shapprune demo` from a fresh output folder (LeNet-5 cached by the earlier runs)."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "shapprune", "demo", "--out", str(Path(folder) / "demo")],
            check=True,
            capture_output=True,
        )
        seconds = time.perf_counter() - start
    return (
        f"#### `shapprune demo`\n\nWall time with LeNet-5 already trained and cached, "
        f"ranking and comparison from scratch: {seconds:.1f} s."
    )


def targets(results: Path) -> list[tuple[str, str, str]]:
    """(target, measured, met?) rows from the benchmarks' JSON files."""
    rows = []

    def load(name: str) -> dict | None:
        path = results / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    if t := load("throughput"):
        for layer in t["layers"]:
            by = {r["mode"]: r for r in layer["rows"]}
            batched = by["prefix-cached + batched"]["x_limit"]
            default = by["prefix-cached + batched + decomposed (default)"]["x_limit"]
            label = f"{layer['model']} {layer['layer']}"
            rows.append(
                (
                    f"cached + batched >= 0.8x the plain suffix forward, {label}",
                    f"{batched:.2f}x (default mode: {default:.2f}x)",
                    "met" if batched >= 0.8 else "missed",
                )
            )
            if layer["model"] == "vgg":
                x = by["prefix-cached + batched + decomposed (default)"]["x_naive"]
                rows.append(
                    (f"default >= 5x naive, {label}", f"{x:.0f}x", "met" if x >= 5 else "missed")
                )
    if a := load("allocation"):
        for group, g in a["summary"].items():
            rows.append(
                (
                    f"auto scope with LAMP's plan never below the two-plan auto, {group}, one-shot",
                    f"better in {g['better']}, worse in {g['worse']} of {g['cells']} cells",
                    "met" if g["worse"] == 0 else "missed",
                )
            )
    if e := load("estimators"):
        for key, game in e.items():
            if key == "machine":
                continue
            r = game["equal_error_ratio_median"]
            rows.append(
                (
                    f"default <= 1/3 the evaluations of plain permutation for equal error, {key}",
                    f"{r:.2f}x",
                    "met" if r <= 1 / 3 else "missed",
                )
            )
    if c := load("captum_vs"):
        for layer, lay in c["layers"].items():
            default = lay["methods"]["shapprune default (PruningGame + estimate)"]
            captum = lay["methods"]["Captum ShapleyValueSampling, user's hook wrapper"]
            s = default["speedup"]
            both = all(r["reached"] for m in (default, captum) for r in m["runs"])
            rows.append(
                (
                    f"shapprune >= 10x faster than Captum to rho >= 0.95, LeNet-5 {layer}",
                    f"{s:.0f}x" + ("" if both else " (not every run reached rho)"),
                    ("met" if s >= 10 else "missed") if both else "not shown",
                )
            )
    if x := load("executors"):
        for name, speedup in x["speedup_2_workers"].items():
            rows.append(
                (
                    f"{name} executor: 2 workers >= 1.7x 1 worker, {x['game']['model']} "
                    f"{x['game']['layer']}",
                    f"{speedup:.2f}x",
                    "met" if speedup >= 1.7 else "missed",
                )
            )
    if b := load("bandit"):
        for m in b["models"]:
            by = {(r["method"], r["fraction"]): r["evals_to_overlap"] for r in m["rows"]}
            for fraction in b["fractions"]:
                plain, bandit = by[("permutation", fraction)], by[("bandit", fraction)]
                if plain is None or bandit is None:
                    cap = 2 + m["ladder_walks"][-1] * (m["units"] - 1)
                    measured = f"not reached within {cap:,} evaluations (bandit {bandit}, "
                    measured += f"permutation {plain})"
                    met = "not shown"
                else:
                    measured = f"{bandit / plain:.2f}x"
                    met = "met" if bandit <= plain / 10 else "missed"
                rows.append(
                    (
                        f"bandit <= 1/10 of permutation's evaluations to find the lowest "
                        f"{fraction:.0%} (overlap >= 0.9), {m['model']} network game",
                        measured,
                        met,
                    )
                )
    if (f := load("folder_memory")) and not f["quick"]:
        rows.append(
            (
                f"prune on a folder of {f['images']:,} {f['pixels']}-px images: peak memory "
                "< 2.5 GB",
                f"{f['peak_rss_mb'] / 1024:.2f} GB ({f['wall_s']:.0f} s)",
                "met" if f["met"] else "missed",
            )
        )
    if (o := load("own_model")) and not o["quick"]:
        met = {True: "met", False: "missed"}
        rows.append(
            (
                'prune on a user\'s own ResNet class, checkpoint and image folder: "before" '
                "within a point of the user's own evaluation",
                f"{o['before']['accuracy']:.4f} vs {o['user']['accuracy']:.4f} "
                f"({o['user']['examples']:,} test images)",
                met[o["met"]["before_matches_user"]],
            )
        )
        rows.append(
            (
                "the same prune: MACs halved (<= 0.51 of them)",
                f"{o['macs_ratio']:.3f}",
                met[o["met"]["macs_halved"]],
            )
        )
        exports = ", ".join(f"{k} {e['accuracy']:.4f}" for k, e in o["exports"].items())
        rows.append(
            (
                'its exported program, ONNX and TorchScript files give "after" (within 0.005) '
                "in a Python without shapprune",
                f"after {o['after']['accuracy']:.4f}; {exports}",
                met[all(o["met"][f"{k}_matches_after"] for k in o["exports"])],
            )
        )
    if (r := load("real_scale")) and not r["quick"]:
        for row in r["rows"]:
            if row["model"] in ("resnet50", "vit_b_16"):
                rows.append(
                    (
                        f"prune's defaults on {row['model']} at {row['pixels']} px: within "
                        f"{r['goal_passes']} forward passes of the reference examples",
                        f"{row['passes']:.1f} passes ({row['prune_s']:.0f} s)",
                        "met" if row["passes"] <= r["goal_passes"] else "missed",
                    )
                )
        if (t := r.get("budgeted")) is not None:
            rows.append(
                (
                    f"prune with a {t['budget_s']:.0f} s time budget on {t['model']}: ends "
                    f"within {1.1 * t['budget_s']:.0f} s, building the model included",
                    f"{t['whole_s']:.0f} s",
                    "met" if t["whole_s"] <= 1.1 * t["budget_s"] else "missed",
                )
            )
    if (a := load("estimators_at_scale")) and not a["quick"]:
        rows += cut_targets(a)
    return rows


def cut_targets(a: dict) -> list[tuple[str, str, str]]:
    """Issue 24's goals on LeNet-5 conv2: the cut settled with at most 0.3x permutation's
    evaluations (overlap >= 0.9 on every seed)."""
    by = a["methods"]
    base = by["shapprune permutation (antithetic + control)"]["evals_to_overlap"]
    rows = []
    for label in ("shapprune cut", "shapprune cut, LRP prior"):
        evals = by[label]["evals_to_overlap"]
        shown = "not reached" if evals is None or not base else f"{evals / base:.2f}x"
        rows.append(
            (
                f"{label.removeprefix('shapprune ')} <= 0.3x permutation's evaluations to the "
                f"{a['game']['k']} lowest (overlap >= 0.9), LeNet-5 conv2",
                f"{shown} ({evals} vs {base})",
                "met" if evals is not None and base and evals <= 0.3 * base else "missed",
            )
        )
    return rows


def summary(results: Path) -> str:
    """The performance block of docs/results.md: the targets, and where the rest is."""
    lines = ["| target | measured | |", "|---|---|---|"]
    lines += [f"| {t} | {v} | {ok} |" for t, v, ok in targets(results)]
    demo = results / "demo.md"
    if demo.exists():
        lines += ["", results_only(demo.read_text()).split("\n\n", 1)[1].split("\n\n")[0]]
    return "\n".join(lines)


def run_minutes(results: Path) -> float:
    """The benchmarks' wall times added up, from the ``_Ran in N s._`` lines they stored."""
    seconds = 0.0
    for name in BENCHMARKS:
        path = results / f"{name}.md"
        if path.exists() and (found := re.search(r"_Ran in ([\d.]+) s\._", path.read_text())):
            seconds += float(found.group(1))
    return seconds / 60


def document(results: Path, quick: bool) -> str:
    """BENCHMARKS.md from the stored results."""
    m = machine()
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/run_all.py`; every figure below was measured in "
        "the run that wrote it. Do not edit by hand.",
        "",
        f"- Date: {datetime.date.today().isoformat()}"
        + (" (quick sizes: smoke run)" if quick else ""),
        f"- Machine: {m['cpu']}, {m['threads']} torch threads; Python {m['python']}, "
        f"torch {m['torch']} (CPU)",
        f"- Run time of the benchmarks below: {run_minutes(results):.1f} min in all",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {v} | {ok} |" for t, v, ok in targets(results)]
    for name, title in BENCHMARKS.items():
        path = results / f"{name}.md"
        body = path.read_text().strip() if path.exists() else "_Not run yet._"
        body = body.replace("#### ", "### ")
        lines += ["", f"## {title}", "", body]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument(
        "--only",
        nargs="*",
        choices=list(BENCHMARKS),
        help="run only these (none: just rebuild the documents)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--document", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument(
        "--readme",
        type=Path,
        help="its performance block is rewritten "
        "(default: the project's docs/results.md, unless --quick)",
    )
    args = parser.parse_args()
    readme = args.readme or (None if args.quick else ROOT / "docs" / "results.md")
    args.results.mkdir(parents=True, exist_ok=True)
    total = sum(
        run_one(name, args.quick, args.results)
        for name in (BENCHMARKS if args.only is None else args.only)
    )
    args.document.write_text(document(args.results, args.quick))
    if readme is not None:
        replace_block(readme, "performance", summary(args.results))
        versus = args.results / "vs_torch_pruning.md"
        if versus.exists() and "<!-- results:vs_torch_pruning -->" in readme.read_text():
            replace_block(readme, "vs_torch_pruning", first_section(versus.read_text()))
    print(f"wrote {args.document} ({total / 60:.1f} min of benchmarks)")


if __name__ == "__main__":
    main()
