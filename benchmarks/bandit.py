"""Neuron Shapley's bandit against permutation sampling on the network-wide game: the
evaluations each needs to find the lowest 10%, 30% and 50% of all the units of a network,
and what that projects to for a ResNet-50-sized network.

Games: ``NetworkGame`` over every prunable unit of the zoo VGG (trained on MNIST 5k; 480
units in 5 layers) and of the zoo ResNet-20 (448 units in 12 layers), loss payoff, on the
first ``IMAGES`` validation images. Reference: a
long antithetic permutation run (``REF_WALKS`` walks, another seed), cached in
``benchmarks/results/`` for the next run. Each method runs on a ladder of budgets (in walks
of n - 1 evaluations); "evaluations to overlap >= 0.9" is the first budget of the ladder
from which the method's k lowest share at least 90% with the reference's k lowest, at that
budget and every larger one (None: not within the ladder). Methods:

- permutation: the default (antithetic pairs, position control variate);
- truncated permutation: the same, with walks stopped once the loss stays within
  ``TRUNCATION`` x |v(empty)| of the empty network's for 3 steps (Neuron Shapley's rule);
- bandit: ``k`` = the fraction, delta 0.1, R the range of all marginals seen (sound);
- bandit, per-player R: the same with each player's own range (the heuristic).

Runs on one ladder share one memo of the coalitions evaluated (same seed, so a budget's
walks are the larger budgets' first walks): each count is what a separate run at that
budget evaluates, paid once. Run: ``python benchmarks/bandit.py [--quick] [--out FILE]``.
``--quick``: an untrained VGG's first two layers (96 units), 8 images, a short ladder.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from common import RESULTS, arguments, write_json

from shapprune.estimators.registry import estimate
from shapprune.game.network_game import NetworkGame
from shapprune.zoo.cache import pretrained
from shapprune.zoo.data import load_dataset
from shapprune.zoo.models import build_model

IMAGES, REF_WALKS = 16, 32
LADDER = (4, 6, 8, 12, 16)  # budgets in walks of n - 1 evaluations
QUICK = {"images": 8, "ref_walks": 8, "ladder": (4, 6), "layers": ["features.0", "features.4"]}
FRACTIONS = (0.1, 0.3, 0.5)
OVERLAP = 0.9
TRUNCATION = 0.2  # of |v(empty)|, the chance-level loss
METHODS = {
    "permutation": {"method": "permutation"},
    "truncated permutation": {"method": "permutation", "truncation": "auto"},
    "bandit": {"method": "bandit"},
    "bandit, per-player R": {"method": "bandit", "player_range": True},
}
# Projection (a model, not a measurement): ResNet-50 at 224 px, 32 images per coalition.
PROJECTED_UNITS = 26_000
PROJECTED_SECONDS_PER_EVAL = 1 / 0.3  # issue 13: ~0.3 evaluations/s for a near-full pass
WORKERS = (1, 8, 64)


class Memo:
    """The game with a memory of every coalition it evaluated (shared by a ladder's runs)."""

    def __init__(self, game: NetworkGame) -> None:
        self.game, self.n_players = game, game.n_players
        self.known: dict[bytes, float] = {}
        self.paid, self.seconds = 0, 0.0

    def value(self, masks: torch.Tensor) -> torch.Tensor:
        z = masks.reshape(-1, self.n_players).numpy()
        keys = [row.tobytes() for row in np.packbits(z, axis=1)]
        todo = [j for j, key in enumerate(keys) if key not in self.known]
        if todo:
            start = time.perf_counter()
            got = self.game.value(torch.from_numpy(z[todo])).double().numpy()
            self.seconds += time.perf_counter() - start
            self.paid += len(todo)
            self.known.update({keys[j]: float(v) for j, v in zip(todo, got, strict=True)})
        return torch.tensor([self.known[key] for key in keys], dtype=torch.float64)


def reference(game: NetworkGame, key: str, walks: int, quick: bool) -> tuple[np.ndarray, dict]:
    """The long antithetic permutation run, from ``results/reference_KEY.json`` if there."""
    budget = 2 + walks * (game.n_players - 1)
    path = RESULTS / f"reference_{key}.json"
    if not quick and path.exists():
        stored = json.loads(path.read_text())
        if (stored["budget"], stored["images"]) == (budget, len(game.x)):
            return np.array(stored["values"]), stored["info"]
    est = estimate(game, "permutation", budget, seed=12345, progress=_tick)
    info = {"walks": walks, "evals": est.n_evals, "seconds": est.seconds}
    if not quick:
        path.write_text(
            json.dumps({"budget": budget, "images": len(game.x), "values": est.values.tolist(),
                        "info": info})
        )  # fmt: skip
    return est.values, info


def _tick(done: int, budget: int) -> None:
    if done // 1000 != (done - 1) // 1000 or done == budget:
        print(f"reference: {done:,} of {budget:,} evaluations", file=sys.stderr, flush=True)


def overlap(ranking: np.ndarray, truth: np.ndarray, k: int) -> float:
    return len(set(ranking[:k].tolist()) & set(truth[:k].tolist())) / k


def ladder_runs(memo: Memo, opts: dict, ladder: tuple, k: float | None, v_empty: float) -> list:
    """One run per budget of the ladder: its estimate (answers from the shared memo)."""
    n = memo.n_players
    options = {key: v for key, v in opts.items() if key != "method"}
    if options.get("truncation") == "auto":
        options["truncation"] = TRUNCATION * abs(v_empty)
    if k is not None:
        options["k"] = k
    runs = []
    for walks in ladder:
        budget = 2 + walks * (n - 1)
        est = estimate(memo, opts["method"], budget, seed=0, **options)
        runs.append(est)
        if est.info.get("settled"):  # a larger budget gives the same answer
            break
    return runs


def first_good(runs: list, truth: np.ndarray, k: int) -> tuple[int | None, list[float]]:
    """Evaluations of the first run from which every run reaches the overlap."""
    scores = [overlap(r.ranking, truth, k) for r in runs]
    return reaching([r.n_evals for r in runs], scores, OVERLAP), scores


def reaching(evals: list[int], scores: list[float], target: float) -> int | None:
    """The evaluations of the first ladder step from which every score is >= target."""
    good = None
    for e, s in zip(reversed(evals), reversed(scores), strict=True):
        if s < target - 1e-12:
            break
        good = e
    return good


def equal_quality(r: dict) -> list[dict]:
    """Per fraction, the overlap permutation reaches at its largest budget, and the
    evaluations each method needs to reach it (and keep it up the ladder)."""
    out = []
    for fraction in FRACTIONS:
        rows = {row["method"]: row for row in r["rows"] if row["fraction"] == fraction}
        target = rows["permutation"]["overlaps"][-1]
        for method, row in rows.items():
            evals = reaching(row["evals"], row["overlaps"], target)
            out.append({"method": method, "fraction": fraction, "target": target,
                        "evals": evals})  # fmt: skip
    return out


def _width_over_gap(est) -> float | None:
    """The bandit's median interval half-width over the median distance to the cut: how far
    from settling the typical unit is (about 1 / samples for the range term)."""
    if est.intervals is None or "threshold" not in est.info:
        return None
    half = (est.intervals[:, 1] - est.intervals[:, 0]) / 2
    return float(np.median(half) / np.median(np.abs(est.values - est.info["threshold"])))


def measure(name: str, quick: bool) -> dict:
    """Every method at every fraction on ``name``'s network game."""
    data = load_dataset("mnist5k")
    images = QUICK["images"] if quick else IMAGES
    ladder = QUICK["ladder"] if quick else LADDER
    if quick:
        torch.manual_seed(0)
        model = build_model(name)
    else:
        model, _ = pretrained(name, "mnist5k", progress=False)
    layers = QUICK["layers"] if quick else None
    game = NetworkGame(model, (data.val.x[:images], data.val.y[:images]), layers)
    n = game.n_players
    ref_values, ref_info = reference(
        game, f"network_{name}", QUICK["ref_walks"] if quick else REF_WALKS, quick
    )
    truth = np.argsort(ref_values, kind="stable")
    v_empty = float(game.value(torch.zeros(n, dtype=torch.bool)))
    rows = []
    memos: dict[str, Memo] = {}
    for label, opts in METHODS.items():
        memo = memos.setdefault(label, Memo(game))  # a ladder shares it; the bandit's ks too
        start = time.perf_counter()
        for fraction in FRACTIONS:
            k = max(1, round(fraction * n))
            bandit = opts["method"] == "bandit"
            runs = ladder_runs(memo, opts, ladder, fraction if bandit else None, v_empty)
            good, scores = first_good(runs, truth, k)
            last = runs[-1]
            rows.append(
                {
                    "method": label,
                    "fraction": fraction,
                    "k": k,
                    "evals_to_overlap": good,
                    "budgets": [r.budget for r in runs],
                    "evals": [r.n_evals for r in runs],
                    "overlaps": scores,
                    "settled": last.info.get("settled"),
                    "in_doubt": last.info.get("in_doubt"),
                    "confidence": last.confidence,
                    "width_over_gap": _width_over_gap(last),
                }
            )
            print(f"{name} {label} {fraction}: {good} {scores}", file=sys.stderr, flush=True)
        rows[-1]["memo_paid"] = memo.paid
        rows[-1]["memo_seconds"] = memo.seconds
        rows[-1]["wall_s"] = time.perf_counter() - start
    paid = sum(m.paid for m in memos.values())
    seconds = sum(m.seconds for m in memos.values())
    return {
        "model": name,
        "units": n,
        "layers": game.layers,
        "images": images,
        "reference": ref_info,
        "ladder_walks": list(ladder),
        "v_empty": v_empty,
        "seconds_per_eval": seconds / max(paid, 1),
        "rows": rows,
    }


def main() -> None:
    args = arguments(__doc__, "bandit")
    models = ["vgg"] if args.quick else ["vgg", "resnet20"]
    results = [measure(name, args.quick) for name in models]
    record = {"quick": args.quick, "overlap": OVERLAP, "fractions": list(FRACTIONS),
              "models": results}  # fmt: skip
    render(record)
    write_json(args.out, record)


def render(record: dict) -> None:
    """The tables, from the measurements (adds ``equal_quality`` and ``projection``)."""
    for r in record["models"]:
        r["equal_quality"] = equal_quality(r)
        print_model(r)
    record["projection"] = project(record["models"][0])
    print_projection(record["projection"])


def _cell(evals: int | None, base: int | None, cap: int) -> str:
    if evals is None:
        return f"> {cap:,}"
    ratio = f" ({evals / base:.2f}x)" if base else ""
    return f"{evals:,}{ratio}"


def print_model(r: dict) -> None:
    cap = 2 + r["ladder_walks"][-1] * (r["units"] - 1)
    print(
        f"\n#### {r['model']}: {r['units']} units, {r['images']} images, loss payoff; "
        f"reference {r['reference']['walks']} antithetic walks; "
        f"{1 / r['seconds_per_eval']:.0f} evaluations/s\n"
    )
    print("Evaluations until the k lowest overlap >= 0.9 with the reference's (and stay so "
          "up the ladder); in brackets: relative to permutation. Last column: the overlaps "
          "at the largest budget, or the bandit's state there (width/gap: its median "
          "interval half-width over the median distance to the cut).\n")  # fmt: skip
    header = " | ".join(f"lowest {f:.0%}" for f in FRACTIONS)
    print(f"| method | {header} | at the largest budget |")
    print("|---|" + "---|" * len(FRACTIONS) + "---|")
    base = {row["fraction"]: row["evals_to_overlap"] for row in r["rows"]
            if row["method"] == "permutation"}  # fmt: skip
    for method in METHODS:
        rows = [row for row in r["rows"] if row["method"] == method]
        cells = [_cell(row["evals_to_overlap"], base[row["fraction"]], cap) for row in rows]
        if rows[0]["settled"] is None:
            state = ", ".join(f"{row['overlaps'][-1]:.2f}" for row in rows) + " overlap"
        else:
            state = "; ".join(
                f"{'settled' if row['settled'] else str(row['in_doubt']) + ' in doubt'}, "
                f"conf. {row['confidence']:.2f}"
                + (f", width/gap {row['width_over_gap']:.0f}" if row.get("width_over_gap") else "")
                for row in rows
            )
        print(f"| {method} | {' | '.join(cells)} | {state} |")
    print_equal_quality(r)


def print_equal_quality(r: dict) -> None:
    cap = 2 + r["ladder_walks"][-1] * (r["units"] - 1)
    print(
        "\nEvaluations to reach the overlap that permutation reaches at its largest budget "
        "(that overlap in the header); in brackets: relative to permutation.\n"
    )
    targets = {q["fraction"]: q["target"] for q in r["equal_quality"]}
    header = " | ".join(f"lowest {f:.0%} ({targets[f]:.2f})" for f in FRACTIONS)
    print(f"| method | {header} |")
    print("|---|" + "---|" * len(FRACTIONS))
    base = {q["fraction"]: q["evals"] for q in r["equal_quality"] if q["method"] == "permutation"}
    for method in METHODS:
        cells = [
            _cell(q["evals"], base[q["fraction"]], cap)
            for q in r["equal_quality"]
            if q["method"] == method
        ]
        print(f"| {method} | {' | '.join(cells)} |")


def project(r: dict) -> dict:
    """Wall time of a network-wide ranking of PROJECTED_UNITS units, scaled from the
    measured evaluations per unit (evaluations / units of the measured network) to the
    overlap permutation reaches at its largest budget; where a method did not reach it
    within the ladder, its largest budget (a lower bound)."""
    cap = 2 + r["ladder_walks"][-1] * (r["units"] - 1)
    out = {"units": PROJECTED_UNITS, "seconds_per_eval": PROJECTED_SECONDS_PER_EVAL, "rows": []}
    for q in r["equal_quality"]:
        if q["method"] == "truncated permutation":
            continue
        reached = q["evals"] is not None
        total = (q["evals"] if reached else cap) / r["units"] * PROJECTED_UNITS
        hours = {w: total * PROJECTED_SECONDS_PER_EVAL / w / 3600 for w in WORKERS}
        out["rows"].append({"method": q["method"], "fraction": q["fraction"],
                            "overlap": q["target"], "reached": reached, "evals": total,
                            "hours": hours})  # fmt: skip
    return out


def print_projection(p: dict) -> None:
    print(
        f"\n#### Projection, not a measurement: a network-wide ranking of {p['units']:,} units "
        f"(ResNet-50-sized), at {p['seconds_per_eval']:.1f} s per evaluation\n"
    )
    print(
        "Assumptions: evaluations per unit as measured above, to the overlap permutation "
        "reaches at its largest budget (the same number of walks to the same overlap, the "
        "bandit's savings unchanged at 50x the units); one evaluation = "
        "one near-full forward pass of 32 images at 224 px, ~0.3 per second on this 2-core "
        "CPU (issue 13's measurement of a ResNet-50); workers run whole walks independently "
        "(Neuron Shapley's design) and scale linearly, no overhead counted. '>': the method "
        "did not reach the overlap within the ladder; its largest budget, a lower bound.\n"
    )
    print("| method | lowest (overlap) | evaluations | hours, 1 worker | 8 workers | 64 workers |")
    print("|---|---|---|---|---|---|")
    for row in p["rows"]:
        h, mark = row["hours"], "" if row["reached"] else "> "
        print(
            f"| {row['method']} | {row['fraction']:.0%} ({row['overlap']:.2f}) "
            f"| {mark}{row['evals']:,.0f} "
            f"| {mark}{h[1]:,.0f} | {mark}{h[8]:,.1f} | {mark}{h[64]:,.2f} |"
        )


if __name__ == "__main__":
    main()
