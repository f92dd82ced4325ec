"""Settling the cut: the evaluations each estimator needs before its k lowest units overlap
the reference's k lowest by at least 0.9 (on every seed), and the wall time, for
shapprune's estimators and for shapiq's and pyDVL's on the same game object.

Game: the zoo LeNet-5 (MNIST 5k), the 50 filters of ``conv2``, payoff minus the mean
cross-entropy on the first 256 validation images, k = 10. Reference: the 300,000-budget
antithetic permutation run stored in ``benchmarks/results/reference_lenet5_conv2.json``
(shared with ``estimators.py`` and ``captum_vs.py``; 276,110 evaluations, about 9 minutes
at one thread on a shared 2-core machine when absent or made for another game).

Each method runs on a ladder of budgets for each seed; "evaluations to overlap >= 0.9" is
the largest number of evaluations any seed spent at the first ladder step from which
every seed reaches the overlap at that step and the next (the ladder stops there, or at
its end: None). An adaptive method may stop before its budget (it says so: ``settled``).
Methods:

- shapprune ``permutation`` (antithetic pairs + the position control variate, the default),
  ``bandit`` (Neuron Shapley's), ``cut`` (this issue's: adaptive antithetic walks with the
  position control variate and t intervals), ``cut`` with the LRP scores as a prior
  (computed once on the same images: one backward pass, timed with the method), and
  ``partial`` at k = 1 (deterministic: each unit's marginal to the empty and to the full
  layer, 2n + 2 evaluations; not a Shapley estimate, but the ranking it gives);
- shapiq (a ``shapiq.Game`` whose ``value_function`` is the game's): PermutationSamplingSV,
  SVARM, StratifiedSamplingSV, KernelSHAP;
- pyDVL 0.9.2 (a ``pydvl.value.games.Game`` whose ``_score`` is the game's, run in this
  process): truncated Monte Carlo permutation sampling (no truncation: the loss never
  settles) and Maximum Sample Reuse for Banzhaf values (a different value: ranked against
  the Shapley reference like the rest).

A peer that is not installed is skipped with its reason in the JSON and the output.
Evaluations are counted by a wrapper around the game (coalitions asked for, repeats
included, as each library asked for them). Wall times are on a 2-core machine shared with
other work: medians, indicative.

Run: ``OMP_NUM_THREADS=1 python benchmarks/estimators_at_scale.py [--quick] [--out FILE]``.
``--quick``: an untrained LeNet-5, 32 images, a 3,000-budget reference, two budgets, one
seed per method.
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from typing import Any

import numpy as np
import torch
from common import RESULTS, arguments, write_json
from estimators import reference_values

from shapprune.criteria.registry import score_layers
from shapprune.estimators.registry import estimate
from shapprune.game.pruning_game import PruningGame
from shapprune.zoo.cache import pretrained
from shapprune.zoo.data import load_dataset
from shapprune.zoo.models import build_model

K, OVERLAP, SEEDS = 10, 0.9, (0, 1, 2)
LADDER = (300, 500, 750, 1000, 1500, 2000, 3000, 5000, 8000)
BANDIT_LADDER = LADDER + (12_000, 20_000)  # the bandit was measured at ~15,300
PARTIAL_BUDGET = 2 * 50 + 2  # partial at k = 1: v({i}) and v(N - {i}) per unit, v(N), v(empty)
QUICK = {"images": 32, "reference": 3000, "ladder": (300, 600), "seeds": (0,)}


class Counted:
    """The game, counting the coalitions evaluated (whatever the caller)."""

    def __init__(self, game: PruningGame) -> None:
        self.game, self.n_players, self.evals = game, game.n_players, 0

    def value(self, masks: torch.Tensor) -> torch.Tensor:
        masks = torch.as_tensor(masks).reshape(-1, self.n_players)
        self.evals += len(masks)
        return self.game.value(masks)

    def values(self, z: np.ndarray) -> np.ndarray:
        return self.value(torch.from_numpy(np.asarray(z, dtype=bool))).double().numpy()


# (game, budget, seed) -> (players from least to most valuable, the method's state)
Runner = Callable[[Counted, int, int], tuple[np.ndarray, dict]]


def ours(method: str, **options: Any) -> Runner:
    def run(game: Counted, budget: int, seed: int) -> tuple[np.ndarray, dict]:
        est = estimate(game, method, budget, seed, **options)
        state = {"settled": est.info.get("settled"), "confidence": est.confidence}
        return est.ranking, state

    return run


def shapiq_runners() -> tuple[dict[str, Runner], str | None]:
    """shapiq's Shapley approximators, or the reason they are missing."""
    try:
        import shapiq
    except ImportError as err:
        return {}, f"shapiq not installed ({err}); pip install shapiq"

    class Game(shapiq.Game):
        def __init__(self, counted: Counted) -> None:
            self.counted = counted
            super().__init__(n_players=counted.n_players, normalize=False, verbose=False)

        def value_function(self, coalitions: np.ndarray) -> np.ndarray:
            return self.counted.values(coalitions)

    def runner(cls: type, **kw: Any) -> Runner:
        def run(game: Counted, budget: int, seed: int) -> tuple[np.ndarray, dict]:
            approx = cls(n=game.n_players, random_state=seed, **kw)
            values = approx.approximate(budget, Game(game)).get_n_order_values(1)
            return np.argsort(np.asarray(values), kind="stable"), {}

        return run

    tag = f"shapiq {version('shapiq')}"
    return {
        f"{tag} {name}": runner(getattr(shapiq, name))
        for name in ("PermutationSamplingSV", "SVARM", "StratifiedSamplingSV", "KernelSHAP")
    }, None


def pydvl_runners() -> tuple[dict[str, Runner], str | None]:
    """pyDVL's permutation Monte Carlo and MSR Banzhaf, or the reason they are missing.
    pyDVL 0.9.2 still names ``np.float_`` (gone in NumPy 2): it is given back first; 0.10
    requires numpy < 2 and cannot be installed beside this project."""
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # type: ignore[attr-defined]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pydvl.value as dv
            from pydvl.parallel import JoblibParallelBackend
            from pydvl.value.games import Game
    except ImportError as err:
        return {}, f"pyDVL not installed ({err}); pip install 'pydvl==0.9.2'"

    class InProcess(JoblibParallelBackend, backend_name="shapprune-in-process"):
        """One worker thread: the game stays in this process (loky would pickle it)."""

        @classmethod
        def executor(cls, max_workers=None, *, config=None, cancel_futures=None):
            return ThreadPoolExecutor(max_workers=1)

    class Players(Game):
        """pyDVL fixes u(empty) = 0 without asking: the game is passed as v(S) - v(empty)."""

        def __init__(self, counted: Counted) -> None:
            self.counted = counted
            self.empty = float(counted.values(np.zeros((1, counted.n_players), dtype=bool))[0])
            super().__init__(counted.n_players)

        def _score(self, model: Any, x: np.ndarray, y: np.ndarray) -> float:
            z = np.zeros((1, self.counted.n_players), dtype=bool)
            z[0, np.asarray(x, dtype=np.int64).ravel()] = True
            return float(self.counted.values(z)[0]) - self.empty

    def tmc(game: Counted, budget: int, seed: int) -> tuple[np.ndarray, dict]:
        walks = max(1, budget // game.n_players)  # a permutation: n evaluations
        result = dv.permutation_montecarlo_shapley(
            Players(game).u, dv.MaxChecks(walks), seed=seed, parallel_backend=InProcess()
        )
        return _ranked(result), {}

    def msr(game: Counted, budget: int, seed: int) -> tuple[np.ndarray, dict]:
        result = dv.compute_msr_banzhaf_semivalues(
            Players(game).u, done=dv.MaxChecks(budget), seed=seed, parallel_backend=InProcess()
        )  # one evaluation per sample
        return _ranked(result), {}

    tag = f"pyDVL {version('pydvl')}"
    return {f"{tag} permutation Monte Carlo": tmc, f"{tag} MSR Banzhaf": msr}, None


def _ranked(result: Any) -> np.ndarray:
    values = np.empty(len(result.indices))
    values[np.asarray(result.indices, dtype=np.int64)] = np.asarray(result.values)
    return np.argsort(values, kind="stable")


def overlap(ranking: np.ndarray, truth: set[int], k: int) -> float:
    return len(set(np.asarray(ranking)[:k].tolist()) & truth) / k


def climb(run: Runner, game: PruningGame, truth: set[int], ladder: tuple, seeds: tuple) -> dict:
    """The method up the ladder until every seed reaches the overlap at two steps in a row
    (or one, at the ladder's end): per step, each seed's evaluations, overlap, seconds."""
    steps: list[dict] = []
    for budget in ladder:
        row: dict[str, Any] = {"budget": budget, "evals": [], "overlaps": [], "seconds": []}
        for seed in seeds:
            counted = Counted(game)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ranking, state = run(counted, budget, seed)
            row["seconds"].append(time.perf_counter() - start)
            row["evals"].append(counted.evals)
            row["overlaps"].append(overlap(ranking, truth, K))
            row.setdefault("states", []).append(state)
        steps.append(row)
        good = [min(s["overlaps"]) >= OVERLAP - 1e-12 for s in steps]
        if len(good) >= 2 and good[-1] and good[-2]:
            break
        if all(s.get("settled") for s in row["states"]) and good[-1]:
            break  # settled at this budget on every seed: a larger one gives the same
    reached = None
    for j in range(len(steps)):
        if all(min(s["overlaps"]) >= OVERLAP - 1e-12 for s in steps[j:]):
            reached = j
            break
    out = {"steps": steps, "evals_to_overlap": None, "seconds_to_overlap": None}
    if reached is not None:
        out["evals_to_overlap"] = max(steps[reached]["evals"])
        out["seconds_to_overlap"] = statistics.median(steps[reached]["seconds"])
        out["budget_to_overlap"] = steps[reached]["budget"]
    return out


def main() -> None:
    args = arguments(__doc__, "estimators_at_scale")
    quick = args.quick
    torch.set_num_threads(1)
    data = load_dataset("mnist5k")
    images = QUICK["images"] if quick else 256
    x, y = data.val.x[:images], data.val.y[:images]
    if quick:
        torch.manual_seed(0)
        model = build_model("lenet5")
    else:
        model = pretrained("lenet5", "mnist5k", progress=False)[0]
    model.eval()
    game = PruningGame(model, "conv2", (x, y))
    n = game.n_players
    folder = args.out.parent if quick else RESULTS
    ref_values, ref_info = reference_values(
        game, "lenet5_conv2", QUICK["reference"] if quick else 300_000, folder
    )
    truth = set(np.argsort(ref_values, kind="stable")[:K].tolist())
    start = time.perf_counter()
    lrp = score_layers("lrp", model, ["conv2"], (x, y))["conv2"]
    lrp_seconds = time.perf_counter() - start
    prior = tuple(float(v) for v in lrp)

    def with_prior(game: Counted, budget: int, seed: int) -> tuple[np.ndarray, dict]:
        return ours("cut", k=K, prior=prior)(game, budget, seed)

    methods: dict[str, tuple[Runner, tuple]] = {
        "shapprune permutation (antithetic + control)": (ours("permutation"), LADDER),
        "shapprune bandit": (ours("bandit", k=K), BANDIT_LADDER),
        "shapprune cut": (ours("cut", k=K), LADDER),
        "shapprune cut, LRP prior": (with_prior, LADDER),
        "shapprune partial, k=1 (deterministic)": (ours("partial", k=1), (PARTIAL_BUDGET,)),
    }
    missing = {}
    for peer, found in (("shapiq", shapiq_runners()), ("pyDVL", pydvl_runners())):
        runners, reason = found
        if reason:
            missing[peer] = reason
            print(f"skipped {peer}: {reason}", file=sys.stderr, flush=True)
        methods.update({label: (run, LADDER) for label, run in runners.items()})
    seeds = QUICK["seeds"] if quick else SEEDS
    rows = {}
    for label, (run, ladder) in methods.items():
        if quick and ladder != (PARTIAL_BUDGET,):
            ladder = QUICK["ladder"]
        rows[label] = climb(run, game, truth, ladder, seeds)
        if label.endswith("LRP prior") and rows[label]["seconds_to_overlap"] is not None:
            rows[label]["seconds_to_overlap"] += lrp_seconds
        print(f"{label}: {rows[label]['evals_to_overlap']}", file=sys.stderr, flush=True)
    settle = {}
    for label, options in (("cut", {}), ("cut, LRP prior", {"prior": prior})):
        budget = 600 if quick else 40_000
        runs = [estimate(game, "cut", budget, s, k=K, **options) for s in seeds]
        settle[label] = [
            {
                "seed": s,
                "evals": r.n_evals,
                "settled": r.info["settled"],
                "in_doubt": r.info["in_doubt"],
                "confidence": r.confidence,
                "overlap": overlap(r.ranking, truth, K),
                "seconds": r.seconds,
            }
            for s, r in zip(seeds, runs, strict=True)
        ]
    record = {
        "quick": quick,
        "game": {"model": "lenet5", "layer": "conv2", "players": n, "images": images, "k": K},
        "overlap": OVERLAP,
        "seeds": list(seeds),
        "reference": ref_info,
        "lrp_seconds": lrp_seconds,
        "missing_peers": missing,
        "methods": rows,
        "settle": settle,
    }
    render(record)
    write_json(args.out, record)


def render(r: dict) -> None:
    base = r["methods"]["shapprune permutation (antithetic + control)"]["evals_to_overlap"]
    g = r["game"]
    print(
        f"\n#### LeNet-5 {g['layer']}: {g['players']} filters, {g['images']} images, k = {g['k']}"
        f"; reference {r['reference']['evals']:,} evaluations; seeds {r['seeds']}\n"
    )
    print(
        "Made by `OMP_NUM_THREADS=1 python benchmarks/estimators_at_scale.py"
        + (" --quick" if r["quick"] else "")
        + "` (shapiq and pyDVL from the `bench` extra).\n"
    )
    print(
        "Evaluations (the most any seed spent) at the first budget of the ladder from which "
        "every seed's k lowest overlap the reference's by >= 0.9; in brackets: relative to "
        "permutation. Seconds: median over the seeds at that budget.\n"
    )
    print("| method | evaluations to overlap >= 0.9 | seconds | overlaps at the last budget |")
    print("|---|---|---|---|")
    for label, row in r["methods"].items():
        evals = row["evals_to_overlap"]
        last = row["steps"][-1]
        if evals is None:
            cell = f"> {max(last['evals']):,}"
        else:
            cell = f"{evals:,}" + (f" ({evals / base:.2f}x)" if base else "")
        secs = "-" if row["seconds_to_overlap"] is None else f"{row['seconds_to_overlap']:.1f}"
        overlaps = ", ".join(f"{o:.1f}" for o in last["overlaps"])
        print(f"| {label} | {cell} | {secs} | {overlaps} (budget {last['budget']:,}) |")
    for peer, reason in r["missing_peers"].items():
        print(f"| {peer} | not run: {reason} | | |")
    print("\nLeft to stop on its own (budget 40,000): evaluations when settled, confidence, "
          "overlap.\n")  # fmt: skip
    print("| method | seed | evaluations | settled | confidence | overlap |")
    print("|---|---|---|---|---|---|")
    for label, runs in r["settle"].items():
        for s in runs:
            state = "yes" if s["settled"] else f"no, {s['in_doubt']} in doubt"
            print(
                f"| {label} | {s['seed']} | {s['evals']:,} | {state} | {s['confidence']:.2f} "
                f"| {s['overlap']:.1f} |"
            )


if __name__ == "__main__":
    main()
