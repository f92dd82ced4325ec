"""Head-to-head with Torch-Pruning: the same models, the same MACs targets, the same data.

Peers: Torch-Pruning's ``MetaPruner`` with its own importances (magnitude L1 and L2,
Taylor, LAMP, FPGM, BN scale where the model has BatchNorm, random), per layer (the same
ratio for every group: "uniform") and ``global_pruning=True``; the pruning ratio is bisected
until the MACs target is met. shapprune: its own pipeline, ``prune_model(model, data,
get_criterion(name, ...), "macs=F", global_=...)``, for the per-layer Shapley criteria
(permutation with a modest budget, partial, leave-one-out), LRP, weight-l1, Taylor and
random, per layer and global (l1-normalised scores). The network-wide criterion
``network-shapley`` joins by itself when the registry knows it.

Everyone prunes the same layers (every prunable layer but the classifier's outputs, as
``shapprune.prunable_layers`` finds them; Torch-Pruning is told to ignore the others),
reads the same reference examples (``PER_CLASS`` validation images per class, drawn by the
seed; Taylor's backward and the Shapley games run on them), and is measured the same way:
MACs by ``shapprune.evaluation.measure.count_macs`` (torch-pruning's counter, one example),
accuracy on the 1,000 test images. One-shot accuracy is the mean ± std over the seeds
(``SEEDS``: the seed draws the reference set and any random choice; a method that reads
only the weights runs once); every seed's pruned model is measured again after the same
short fine-tune for everyone (``shapprune.training.train_model`` on the training split,
``FINETUNE`` below, that seed; a method that runs once has its model fine-tuned with each
seed): one seed's fine-tune alone moves accuracy by a few tenths of a point.
Seconds: scoring + allocation (bisection on pruned
copies) + removal, wall time, ``torch.get_num_threads()`` threads (printed).

ResNet-20 runs with ``--models lenet5 vgg vit resnet20``; it is left out of the default run
to keep it short. On the ViT shapprune prunes attention heads and MLP neurons and keeps the
residual width (coupled by the LayerNorms); MetaPruner is made to prune the same units: the
residual width is ignored, whole heads go (``num_heads``, ``prune_num_heads``, no head dims)
at the same ratio as the MLP neurons (``head_pruning_ratio``), one ratio bisected.

Run: ``OMP_NUM_THREADS=1 python benchmarks/vs_torch_pruning.py [--quick] [--out FILE.json]
[--readme docs/results.md] [--models ...] [--methods LABEL ...] [--finetune-seeds N]``; ``--quick``:
LeNet-5, 50% of the MACs, one seed, two methods per side: TP magnitude-l1 and random,
shapprune weight-l1 per layer and prune's defaults (with a short refinement); under a minute.
``--methods``: only the methods with these labels (as in the tables; shell-style patterns
too, e.g. ``"TP *"``), e.g. to check prune's defaults alone: ``--methods "shapprune lrp
(global per MAC or per layer + refine 300)"``. ``--finetune-seeds 0``: one-shot only.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import fnmatch
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torch_pruning as tp
from common import RESULTS, write_json
from report import first_section, run_and_report
from torch import nn

from shapprune.criteria.registry import get_criterion
from shapprune.evaluation.measure import count_macs, count_params, evaluate
from shapprune.game.units import Units
from shapprune.pruning.compress import prune_model
from shapprune.pruning.plan import prunable_layers
from shapprune.training import train_model
from shapprune.zoo.cache import pretrained
from shapprune.zoo.data import DatasetSplits, Split, load_dataset, reference_set

MODELS = ("lenet5", "vgg", "vit")  # opt in to resnet20 with --models (for the run time)
TARGETS = (0.3, 0.5, 0.7)  # fractions of the MACs removed
SEEDS = (0, 1, 2)
PER_CLASS = 10  # reference examples per class, for every method
BUDGET_PER_UNIT = 4  # shapley-permutation: 4 x the widest layer's units, per layer
REFINE = 300  # evaluations refining the plan (prune's default), and in the quick run:
REFINE_QUICK = 20
FINETUNE = {"epochs": 1, "lr": 1e-3, "batch_size": 128, "optimizer": "adamw"}
TOLERANCE = 0.02  # MACs removed within this of the target counts as met
STAGES = {"oneshot": "one-shot", "finetuned": "fine-tuned"}
ROOT = Path(__file__).resolve().parents[1]
QUICK = {"models": ("lenet5",), "targets": (0.5,), "seeds": (0,)}


# --- the methods ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One way to prune: a side (torch-pruning or shapprune), a scoring rule, an allocation."""

    label: str
    side: str  # "torch-pruning" | "shapprune"
    name: str  # TP importance or shapprune criterion
    global_: bool | str  # shapprune also "auto": the scope with the lower reference loss
    options: dict = field(default_factory=dict)
    needs_bn: bool = False  # only for models with BatchNorm
    seeded: bool = True  # False: reads neither the reference data nor random draws
    cost: str | None = None  # shapprune: global, by score per MAC saved
    refine: int = 0  # shapprune: evaluations refining the plan at its target

    @property
    def allocation(self) -> str:
        alloc = "global" if self.global_ else "per layer"
        if self.cost:
            alloc = "global per MAC"
        if self.global_ == "auto":
            alloc = "global per MAC or per layer" if self.cost else "global or per layer"
        return alloc + (f" + refine {self.refine}" if self.refine else "")


TP_IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "magnitude-l1": lambda: tp.importance.MagnitudeImportance(p=1),
    "magnitude-l2": lambda: tp.importance.MagnitudeImportance(p=2),
    "taylor": lambda: tp.importance.TaylorImportance(),
    "lamp": lambda: tp.importance.LAMPImportance(p=2),
    "fpgm": lambda: tp.importance.FPGMImportance(p=2),
    "bn-scale": lambda: tp.importance.BNScaleImportance(),
    "random": lambda: tp.importance.RandomImportance(),
}

TP_SEEDED = ("taylor", "random")  # the others read only the weights

SHAPPRUNE_METHODS: list[tuple[str, dict, bool | str, str | None, int]] = [
    # name, options ("budget": filled by the run), global, cost, refine
    ("lrp", {}, "auto", "macs", REFINE),  # prune's defaults (shapprune prune --criterion lrp)
    ("lrp", {}, True, "macs", REFINE),
    ("lrp", {}, True, "macs", 0),
    ("lrp", {}, False, None, 0),
    ("weight-l1", {}, True, "macs", 0),
    ("weight-l1", {}, False, None, 0),
    ("taylor", {}, True, "macs", 0),
    ("shapley-permutation", {"budget": None}, False, None, 0),
    ("shapley-permutation", {"budget": None}, True, "macs", 0),
    ("loo", {}, True, "macs", 0),
    ("network-shapley", {"budget": None}, True, "macs", 0),  # one game: 4 x all the units
]
UNSEEDED = ("weight-l1", "weight-l2", "bn-scale")
NETWORK_CRITERIA = ("network-shapley",)


def methods(quick: bool) -> list[Method]:
    """Every method of the run, peers first."""
    out = []
    tp_names = ("magnitude-l1", "random") if quick else tuple(TP_IMPORTANCES)
    for name in tp_names:
        for global_ in (False, True):
            alloc = "global" if global_ else "uniform"
            out.append(
                Method(f"TP {name} ({alloc})", "torch-pruning", name, global_,
                       needs_bn=name == "bn-scale", seeded=name in TP_SEEDED)
            )  # fmt: skip
    quick_ours = {("weight-l1", False, False), ("lrp", "auto", True)}
    for name, options, global_, cost, refine in SHAPPRUNE_METHODS:
        if quick and (name, global_, bool(refine)) not in quick_ours:
            continue
        m = Method("", "shapprune", name, global_, options, seeded=name not in UNSEEDED,
                   cost=cost, refine=REFINE_QUICK if quick and refine else refine)  # fmt: skip
        out.append(dataclasses.replace(m, label=f"shapprune {name} ({m.allocation})"))
    return out


def select_methods(all_methods: list[Method], names: list[str] | None) -> list[Method]:
    """The methods whose label is one of ``names`` or matches one of them as a shell-style
    pattern (``"TP *"``), in the run's order; all of them when ``names`` is None. A name that
    matches no method stops the run with the labels there are."""
    if names is None:
        return all_methods
    labels = [m.label for m in all_methods]
    unknown = [n for n in names if n not in labels and not fnmatch.filter(labels, n)]
    if unknown:
        raise SystemExit(
            f"--methods: no method is labelled {', '.join(map(repr, unknown))}; the methods: "
            + "; ".join(labels)
        )
    return [m for m in all_methods if any(m.label == n or fnmatch.fnmatchcase(m.label, n)
                                          for n in names)]  # fmt: skip


# --- pruning by each side ---------------------------------------------------------------------


def loss_gradients(model: nn.Module, ref: Split) -> dict[str, torch.Tensor]:
    """Gradients of the mean cross-entropy on the reference examples (TP's Taylor reads
    them from ``.grad``), computed once per seed and handed to every pruned copy."""
    graded = copy.deepcopy(model).eval()
    F.cross_entropy(graded(ref.x), ref.y).backward()
    return {name: p.grad.detach().clone() for name, p in graded.named_parameters()}


def prune_torch_pruning(
    model: nn.Module,
    method: Method,
    grads: dict[str, torch.Tensor] | None,
    target: float,
    example: torch.Tensor,
    seed: int,
    units: dict[str, Units],
    *,
    slack: float = 0.0,
    reductions: dict[float, float] | None = None,
) -> nn.Module:
    """MetaPruner with ``method``'s importance, its ratio bisected (as shapprune's
    ``make_plan`` bisects its amount) to the smallest one that meets the MACs target;
    ``units``: the model's prunable layers (``prunable_layers``, found once per model).
    ``slack``: the bisection also stops once the cut is within ``target + slack`` (0: only
    when the ratio's bracket is 1e-4 wide). ``reductions``: ratio -> MACs removed, filled and
    read (a failure: -1), shared by calls on the same model, method and seed (the targets)."""
    heads = [name for name, u in units.items() if u.kind == "heads"]
    ignored = _ignored_layers(model, units)
    original = count_macs(model, example)
    seen = {} if reductions is None else reductions
    kept: dict[float, nn.Module] = {}  # the pruned copies that met the target

    def reached(ratio: float) -> float:
        if ratio not in seen or (seen[ratio] >= target and ratio not in kept):
            seen[ratio], pruned = _tp_prune(
                model, method, grads, ratio, example, ignored, seed, original, heads
            )
            if seen[ratio] >= target:
                kept[ratio] = pruned
        return seen[ratio]

    def meets(ratio: float) -> bool:  # only a cut that meets the target is built (kept)
        return (seen[ratio] if ratio in seen else reached(ratio)) >= target

    # global pruning is not monotone in the ratio (a layer it would empty is left whole):
    # bracket the target on a grid first, then bisect inside the first bracket that meets it
    grid = [0.1 * i for i in range(1, 10)] + [0.95]
    hi = next((r for r in grid if meets(r)), None)
    if hi is None:
        best = max(seen[r] for r in grid)
        raise ValueError(f"no pruning ratio up to 0.95 removes {target:.0%} of the MACs "
                         f"(at most {best:.1%})")  # fmt: skip
    lo = max([0.0] + [r for r in grid if r < hi])  # reduction(lo) < target <= reduction(hi)
    for _ in range(14):
        if hi - lo < 1e-4 or (slack and seen[hi] <= target + slack):
            break
        mid = (lo + hi) / 2
        if meets(mid):
            kept.pop(hi, None)  # not the answer any more: its copy freed
            hi = mid
        else:
            lo = mid
    reached(hi)  # built now if only its reduction was known
    return kept[hi]


def _tp_prune(
    model: nn.Module,
    method: Method,
    grads: dict[str, torch.Tensor] | None,
    ratio: float,
    example: torch.Tensor,
    ignored: list[str],
    seed: int,
    original: int,
    heads: list[str],
) -> tuple[float, nn.Module | None]:
    """(MACs removed, pruned copy) for one pruning ratio; (-1, None) if TP fails there."""
    pruned = copy.deepcopy(model).eval()
    if grads is not None:
        for name, p in pruned.named_parameters():
            p.grad = grads[name].clone()
    modules = dict(pruned.named_modules())
    attention = [modules[n] for n in heads]
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unwrapped parameters")  # ViT's tokens
        torch.manual_seed(seed)  # RandomImportance: the same draws at every ratio
        pruner = tp.pruner.MetaPruner(
            pruned,
            example,
            importance=TP_IMPORTANCES[method.name](),
            global_pruning=method.global_,
            pruning_ratio=ratio,
            ignored_layers=[modules[n] for n in ignored],
            # a ViT: whole heads go (as shapprune removes them), at the same ratio
            num_heads={a.qkv: a.num_heads for a in attention},
            prune_num_heads=bool(attention),
            prune_head_dims=not attention,
            head_pruning_ratio=ratio if attention else 0.0,
        )
        try:
            pruner.step()
            for a in attention:  # the attention's forward reshapes by its number of heads
                a.num_heads = pruner.num_heads[a.qkv]
                if hasattr(a, "attn_dim"):  # timm: the concatenated heads' width too
                    a.attn_dim = a.num_heads * (a.qkv.out_features // 3 // a.num_heads)
            pruned.zero_grad(set_to_none=True)
            # a failure may only show in the forward pass (e.g. every head of a layer gone)
            return 1 - count_macs(pruned, example) / original, pruned
        except Exception:  # e.g. a layer emptied by the global ranking
            return -1.0, None


def _ignored_layers(model: nn.Module, prunable: dict[str, Units]) -> list[str]:
    """Convolutions and linear layers that shapprune does not prune (the classifier's
    outputs; a ViT's residual width): Torch-Pruning is told to leave them, so both sides
    prune the same units. An attention's heads are its ``qkv``'s output (and ``proj``'s
    input, which TP follows)."""
    coupled = set()
    for units in prunable.values():
        if units.kind == "heads":
            coupled |= {f"{name}.qkv" for name in units.coupled}
        else:
            coupled |= set(units.coupled)
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and name not in coupled
    ]


class ScoredOnce:
    """A criterion whose scores are computed once per seed and reused: they depend on
    neither the target nor the allocation. ``seconds[seed]``: the time scoring took."""

    def __init__(self, criterion) -> None:
        self.criterion, self.name = criterion, criterion.name
        self.scores: dict[int, dict] = {}
        self.seconds: dict[int, float] = {}

    def __getattr__(self, key: str):  # the rest (e.g. its normalisation) is the criterion's
        if key == "criterion":
            raise AttributeError(key)
        return getattr(self.criterion, key)

    def score(self, model: nn.Module, layers: list[str], data, seed: int = 0) -> dict:
        if seed not in self.scores:
            start = time.perf_counter()
            self.scores[seed] = self.criterion.score(model, layers, data, seed=seed)
            self.seconds[seed] = time.perf_counter() - start
        return self.scores[seed]


def prune_shapprune(
    model: nn.Module,
    criterion: ScoredOnce,
    method: Method,
    data: DatasetSplits,
    target: float,
    seed: int,
) -> tuple[nn.Module, float]:
    """shapprune's own pipeline; (pruned model, seconds scoring + planning + removal)."""
    pruned, seconds, _ = shapprune_pipeline(
        model, criterion, data, target, seed,
        global_=method.global_, cost=method.cost, refine=method.refine,
    )  # fmt: skip
    return pruned, seconds


def shapprune_pipeline(
    model: nn.Module,
    criterion: ScoredOnce,
    data: DatasetSplits,
    target: float,
    seed: int,
    **options,
) -> tuple[nn.Module, float, dict]:
    """``prune_model`` at a MACs target on ``PER_CLASS`` reference examples per class, its
    other options ``options`` (none: its defaults); (pruned model, seconds scoring +
    planning + removal, its summary)."""
    # prune_model measures before and after on data.test (latency included): on two test
    # images here, as this benchmark measures every method itself on the whole test split
    two = dataclasses.replace(data, test=Split(data.test.x[:2], data.test.y[:2]))
    cached = seed in criterion.scores  # else scored inside prune_model's own timing
    pruned, summary = prune_model(
        model, two, criterion, f"macs={target}", per_class=PER_CLASS, seed=seed, **options
    )
    seconds = summary["seconds_scoring_and_planning"]
    return pruned, seconds + (criterion.seconds[seed] if cached else 0.0), summary


# --- the run ----------------------------------------------------------------------------------


def run_model(
    name: str,
    data: DatasetSplits,
    all_methods: list[Method],
    targets,
    seeds,
    finetune_seeds: int | None = None,
) -> dict:
    """Every method at every target on zoo model ``name``; fine-tuned with the first
    ``finetune_seeds`` seeds (default all; 0: not fine-tuned)."""
    tuned_seeds = list(seeds if finetune_seeds is None else seeds[:finetune_seeds])
    model, _ = pretrained(name, "mnist5k", progress=False)
    model.eval()
    example = data.val.x[:2]
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    original = {
        "accuracy": evaluate(model, data.test)["accuracy"],
        "params": count_params(model),
        "macs": count_macs(model, example),
    }
    units = prunable_layers(model, example)
    budget = BUDGET_PER_UNIT * max(u.n_players for u in units.values())  # per layer
    network_budget = BUDGET_PER_UNIT * sum(u.n_players for u in units.values())  # one game
    network = set(NETWORK_CRITERIA)
    chosen = [  # the budget placeholder filled for this model
        dataclasses.replace(
            m, options={**m.options, "budget": network_budget if m.name in network else budget}
        )
        if m.options.get("budget", 0) is None
        else m
        for m in all_methods
        if has_bn or not m.needs_bn
    ]
    criteria: dict[str, ScoredOnce] = {}  # shared by the targets and the allocations
    grads: dict[int, tuple[dict, float]] = {}  # seed -> (gradients, seconds)
    rows = []
    for target in targets:
        for method in chosen:
            runs = []
            for seed in seeds if method.seeded else seeds[:1]:
                try:
                    pruned, seconds = _prune(model, method, data, target, example, seed, units,
                                             criteria, grads)  # fmt: skip
                except Exception as err:  # report the failure, carry on with the others
                    runs.append({"seed": seed, "error": f"{type(err).__name__}: {err}"})
                    continue
                run = measure_run(pruned, data, original, example, seed, seconds)
                mine = tuned_seeds if not method.seeded else [seed] if seed in tuned_seeds else []
                run["finetuned"] = finetune(pruned, data, mine)
                runs.append(run)
            rows.append(summarise(method, target, runs))
            print(f"  {name} -{target:.0%} {method.label}: {_progress(rows[-1])}",
                  file=sys.stderr, flush=True)  # fmt: skip
    return {"model": name, "has_batchnorm": has_bn, "original": original, "rows": rows,
            "layers": {n: u.n_players for n, u in units.items()}, "budget": budget,
            "network_budget": network_budget, "finetune_seeds": tuned_seeds}  # fmt: skip


def _prune(model, method, data, target, example, seed, units, criteria, grads):
    """One pruning; (pruned model, seconds)."""
    if method.side == "shapprune":
        key = f"{method.name} {sorted(method.options.items())}"
        if key not in criteria:
            criteria[key] = ScoredOnce(get_criterion(method.name, **method.options))
        return prune_shapprune(model, criteria[key], method, data, target, seed)
    g, g_seconds = None, 0.0
    if method.name == "taylor":
        if seed not in grads:
            start = time.perf_counter()
            ref = reference_set(data.val, per_class=PER_CLASS, seed=seed)
            grads[seed] = (loss_gradients(model, ref), time.perf_counter() - start)
        g, g_seconds = grads[seed]
    start = time.perf_counter()
    pruned = prune_torch_pruning(model, method, g, target, example, seed, units)
    return pruned, g_seconds + time.perf_counter() - start


def finetune(pruned: nn.Module, data: DatasetSplits, seeds) -> list[float]:
    """Test accuracy after the same short fine-tune for everyone, once per seed (a copy
    each): one seed's fine-tune moves accuracy by a few tenths of a point on its own."""
    out = []
    for seed in seeds:
        tuned = copy.deepcopy(pruned)
        train_model(tuned, data, seed=seed, progress=False, **FINETUNE)
        out.append(evaluate(tuned.eval(), data.test)["accuracy"])
    return out


def measure_run(
    pruned: nn.Module, data: DatasetSplits, original: dict, example, seed: int, seconds: float
) -> dict:
    """Sizes and one-shot test accuracy of a pruned model."""
    macs, params = count_macs(pruned, example), count_params(pruned)
    return {
        "seed": seed,
        "oneshot": evaluate(pruned, data.test)["accuracy"],
        "macs": macs,
        "params": params,
        "macs_ratio": macs / original["macs"],
        "params_ratio": params / original["params"],
        "macs_removed": 1 - macs / original["macs"],
        "seconds": seconds,
    }


def summarise(method: Method, target: float, runs: list[dict]) -> dict:
    """Mean ± std over seeds of one method at one target."""
    row = {"method": method.label, "side": method.side, "name": method.name,
           "allocation": method.allocation, "options": method.options, "target": target,
           "seeded": method.seeded, "runs": runs}  # fmt: skip
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return row
    for key in ("oneshot", "finetuned"):
        values = [v for r in ok for v in (r[key] if isinstance(r[key], list) else [r[key]])]
        if not values:
            continue
        row[key] = spread(values)
    row.update(size_and_time(ok, target))
    return row


def spread(values: list[float]) -> dict:
    """Mean, standard deviation (0 for one value) and count of the seeds' accuracies."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.mean(values), "std": std, "n": len(values)}


def size_and_time(ok: list[dict], target: float) -> dict:
    """The runs' mean size ratios, median seconds and whether each met ``target``."""
    row = {key: statistics.mean(r[key] for r in ok)
           for key in ("macs_ratio", "params_ratio", "macs_removed")}  # fmt: skip
    row["seconds"] = statistics.median(r["seconds"] for r in ok)
    row["met"] = all(abs(r["macs_removed"] - target) <= TOLERANCE for r in ok)
    return row


def _progress(row: dict) -> str:
    if "oneshot" not in row:
        return row["runs"][0]["error"]
    tuned = f" / {row['finetuned']['mean']:.3f}" if "finetuned" in row else ""
    return (f"{row['oneshot']['mean']:.3f}{tuned}, "
            f"MACs removed {row['macs_removed']:.1%}, {row['seconds']:.1f} s")  # fmt: skip


def verdicts(result: dict) -> list[dict]:
    """Per model, target and stage: the best method of each side, and who wins."""
    out = []
    for m in result["models"]:
        for target in result["targets"]:
            rows = [r for r in m["rows"] if r["target"] == target and "oneshot" in r]
            for stage in ("oneshot", "finetuned"):
                best = {}
                for side in ("shapprune", "torch-pruning"):
                    mine = [r for r in rows if r["side"] == side and stage in r]
                    if mine:
                        top = max(mine, key=lambda r: r[stage]["mean"])
                        best[side] = {"method": top["method"], "accuracy": top[stage]["mean"]}
                if len(best) < 2:
                    continue
                gap = best["shapprune"]["accuracy"] - best["torch-pruning"]["accuracy"]
                winner = "shapprune" if gap > 0 else "torch-pruning" if gap < 0 else "tie"
                out.append({"model": m["model"], "target": target, "stage": stage,
                            "best": best, "gap": gap, "winner": winner})  # fmt: skip
    return out


# --- the report -------------------------------------------------------------------------------


def _tuned_seeds(result: dict) -> str:
    """Which models were fine-tuned with fewer seeds (to keep the run short), in words."""
    fewer = [
        f"{m['model']}: {len(m['finetune_seeds'])}"
        for m in result["models"]
        if len(m.get("finetune_seeds", result["seeds"])) < len(result["seeds"])
    ]
    return f" (seeds fine-tuned with, where fewer: {', '.join(fewer)})" if fewer else ""


def print_report(result: dict) -> None:
    seeds = len(result["seeds"])
    budgets = ", ".join(f"{m['model']} {m['budget']:,}" for m in result["models"])
    network = ""
    if any(x.startswith("shapprune network-") for x in result["methods"]):
        network = "; network-wide criteria: that many x all the units, for the one game (" + (
            ", ".join(f"{m['model']} {m['network_budget']:,}" for m in result["models"]) + ")"
        )
    print("#### Against Torch-Pruning: accuracy at equal MACs (MNIST 5k)\n")
    ft = result["finetune"]
    print(
        f"Zoo models trained on MNIST 5k; {result['per_class']} reference images per class "
        f"(validation split, drawn by the seed) for every method; test accuracy on 1,000 "
        f"images. One-shot: mean ± std over {seeds} seed(s) (the seed draws the reference "
        f"set and any random choice; methods that read only the weights run once). "
        f"Fine-tuned: each seed's pruned model after {ft['epochs']} epoch(s) of "
        f"`train_model` on the training split ({ft['optimizer']}, lr {ft['lr']:g}, batch "
        f"{ft['batch_size']}, one-cycle, that seed), the same for everyone; mean ± std over "
        f"the seeds{_tuned_seeds(result)} (a method that runs once: its model fine-tuned "
        "with each seed). "
        f"shapley-permutation: {result['budget_per_unit']} x the widest layer's units "
        f"coalition evaluations per layer ({budgets}){network}. "
        f"Seconds: scoring + allocation (bisection to the MACs target on pruned copies) + "
        f"removal, median over seeds, {result['machine']['threads']} torch thread(s); "
        "shapprune's scores are computed once per seed and shared by the targets and the "
        "allocations (the time counted in each). "
        "TP: Torch-Pruning's MetaPruner, its pruning ratio bisected to the target; uniform = "
        "the same ratio for every layer, global = `global_pruning=True`. shapprune: "
        "`prune_model`; global = units ranked across layers, the scores normalised as "
        "`prune_model` does by default (l1 within each layer for per-layer criteria); "
        "global per MAC = ranked by score per MAC their removal saves (`cost='macs'`); "
        f"+ refine {REFINE} = the plan then refined at its target by {REFINE} evaluations of "
        "whole removal sets on the reference examples (swaps within layers); every shapprune "
        "removal is `compensate='auto'` (zeroed or mean-compensated, whichever has the lower "
        "loss on the reference examples); global per MAC or per layer = three plans built "
        "(global per MAC on l1 shares, global per MAC on LAMP's shares, per layer) and the "
        "one whose removal has the lowest loss on the reference examples kept "
        "(`global_='auto'`). `shapprune prune`'s defaults are "
        f"`lrp (global per MAC or per layer + refine {REFINE})`.\n"
    )
    print("Best of each side per model, MACs target and stage (test accuracy; gap = shapprune "
          "− Torch-Pruning, in points):\n")  # fmt: skip
    print("| model | MACs removed | stage | best shapprune | best Torch-Pruning | gap | winner |")
    print("|---|---|---|---|---|---|---|")
    for v in result["verdicts"]:
        s, t = v["best"]["shapprune"], v["best"]["torch-pruning"]
        print(
            f"| {v['model']} | {v['target']:.0%} | {STAGES[v['stage']]} "
            f"| {s['method']}: {s['accuracy']:.3f} | {t['method']}: {t['accuracy']:.3f} "
            f"| {100 * v['gap']:+.1f} pts | {v['winner']} |"
        )
    for stage in ("oneshot", "finetuned"):
        cells = [v for v in result["verdicts"] if v["stage"] == stage]
        wins = sum(v["winner"] == "shapprune" for v in cells)
        words = "one-shot" if stage == "oneshot" else "after the fine-tune"
        print(f"\n{words.capitalize()}: shapprune's best beats Torch-Pruning's best in "
              f"{wins} of {len(cells)} cells.", end="")  # fmt: skip
    print()
    for path in result["plots"]:
        print(f"\n![accuracy vs MACs kept]({path})")
    for m in result["models"]:
        o = m["original"]
        for target in result["targets"]:
            rows = [r for r in m["rows"] if r["target"] == target]
            rows.sort(key=lambda r: -r["oneshot"]["mean"] if "oneshot" in r else 1)
            print(
                f"\n#### {m['model']}, {target:.0%} of the MACs removed (unpruned: accuracy "
                f"{o['accuracy']:.3f}, {o['macs']:,} MACs, {o['params']:,} params)\n"
            )
            print(
                "| method | one-shot accuracy | fine-tuned accuracy | MACs removed | MACs ratio "
                "| params ratio | seconds |"
            )
            print("|---|---|---|---|---|---|---|")
            best = {s: max((r[s]["mean"] for r in rows if s in r), default=None)
                    for s in ("oneshot", "finetuned")}  # fmt: skip
            for r in rows:
                if "oneshot" not in r:
                    print(f"| {r['method']} | failed: {r['runs'][0]['error']} |||||")
                    continue
                cells = []
                for s in ("oneshot", "finetuned"):
                    if s not in r:  # not fine-tuned (--finetune-seeds 0)
                        cells.append("–")
                        continue
                    spread = f" ± {r[s]['std']:.3f}" if r[s]["n"] > 1 else ""
                    text = f"{r[s]['mean']:.3f}{spread}"
                    cells.append(f"**{text}**" if r[s]["mean"] == best[s] else text)
                flag = "" if r["met"] else " †"
                print(
                    f"| {r['method']} | {cells[0]} | {cells[1]} | {r['macs_removed']:.1%}{flag} "
                    f"| {r['macs_ratio']:.3f} | {r['params_ratio']:.3f} | {r['seconds']:.2f} |"
                )
    print(
        f"\nBold: the best of the table. †: more than {100 * result['tolerance']:.0f} points "
        "beyond the target (the next smaller cut misses it: units go whole)."
    )


def plot(result: dict, folder: Path) -> list[str]:
    """Accuracy vs MACs kept, one line per method, one-shot and fine-tuned, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for m in result["models"]:
        fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
        labels = sorted({r["method"] for r in m["rows"]})
        rules = sorted({(r["side"], r["name"]) for r in m["rows"]})  # one colour per rule
        colours = plt.get_cmap("tab20")
        for label in labels:
            rows = sorted(
                (r for r in m["rows"] if r["method"] == label and "oneshot" in r),
                key=lambda r: r["macs_ratio"],
            )
            if not rows:
                continue
            first = rows[0]
            colour = colours(rules.index((first["side"], first["name"])) % 20)
            style = "--" if first["side"] == "torch-pruning" else "-"  # TP dashed
            marker = "^" if first["allocation"].startswith("global") else "o"
            for ax, stage in zip(axes, ("oneshot", "finetuned"), strict=True):
                if any(stage not in r for r in rows):  # not fine-tuned
                    continue
                x = [r["macs_ratio"] for r in rows] + [1.0]
                y = [r[stage]["mean"] for r in rows] + [m["original"]["accuracy"]]
                ax.plot(x, y, style, marker=marker, markersize=4, color=colour,
                        label=label if stage == "oneshot" else None)  # fmt: skip
        for ax, stage in zip(axes, ("one-shot", "fine-tuned"), strict=True):
            ax.set(xlabel="MACs kept (pruned / original)", title=f"{m['model']}: {stage}")
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel("test accuracy")
        fig.legend(loc="center right", fontsize=7)
        fig.tight_layout(rect=(0, 0, 0.78, 1))
        path = folder / f"vs_torch_pruning_{m['model']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path.resolve())
    return [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in paths]


def _run(args: argparse.Namespace) -> None:
    quick = args.quick
    models = args.models or (QUICK["models"] if quick else MODELS)
    targets = QUICK["targets"] if quick else TARGETS
    seeds = QUICK["seeds"] if quick else SEEDS
    all_methods = select_methods(methods(quick), args.methods)
    data = load_dataset("mnist5k")
    start = time.perf_counter()
    result: dict = {"quick": quick, "targets": list(targets), "seeds": list(seeds),
                    "per_class": PER_CLASS, "budget_per_unit": BUDGET_PER_UNIT,
                    "finetune": FINETUNE, "tolerance": TOLERANCE,
                    "methods": [m.label for m in all_methods], "models": []}  # fmt: skip
    for name in models:
        print(f"{name} ...", file=sys.stderr, flush=True)
        result["models"].append(
            run_model(name, data, all_methods, targets, seeds, args.finetune_seeds)
        )
    result["verdicts"] = verdicts(result)
    result["seconds"] = time.perf_counter() - start
    result["plots"] = plot(result, args.out.parent)
    result["machine"] = {"threads": str(torch.get_num_threads())}
    write_json(args.out, result)
    print_report(result)
    print(f"\n_Benchmark wall time: {result['seconds'] / 60:.1f} min._")


def _merge(args: argparse.Namespace) -> None:
    """One report from several runs' JSON files (e.g. one model per process): the models of
    all, in the order given; the runs must share targets, seeds and methods."""
    runs = [json.loads(Path(p).read_text()) for p in args.merge]
    result = runs[0]
    for other in runs[1:]:
        for key in ("targets", "seeds", "methods", "per_class", "finetune"):
            if other[key] != result[key]:
                raise SystemExit(f"the runs differ in {key}: they cannot be merged")
        result["models"] += other["models"]
        result["seconds"] = max(result["seconds"], other["seconds"])
    result["verdicts"] = verdicts(result)
    result["plots"] = plot(result, args.out.parent)
    threads = {run.get("machine", {}).get("threads") for run in runs}  # the runs' own
    result["machine"] = {"threads": "/".join(sorted(t for t in threads if t)) or "?"}
    write_json(args.out, result)
    print_report(result)
    print(f"\n_Benchmark wall time: {result['seconds'] / 60:.1f} min (runs in parallel)._")


def _count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {n}")
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS / "vs_torch_pruning.json")
    parser.add_argument(
        "--readme",
        type=Path,
        help="the Markdown file whose block to replace (docs/results.md)",
    )
    parser.add_argument(
        "--models", nargs="+", choices=("lenet5", "vgg", "resnet20", "vit"),
        help=f"zoo models (default: {' '.join(MODELS)}; quick: {' '.join(QUICK['models'])})",
    )  # fmt: skip
    parser.add_argument("--merge", nargs="+", type=Path, help="report from these runs' JSON")
    parser.add_argument(
        "--methods", nargs="+", metavar="LABEL",
        help="only these methods: their labels as in the tables, or shell-style patterns "
        "('TP *'); default: all",
    )  # fmt: skip
    parser.add_argument(
        "--finetune-seeds", type=_count,
        help="fine-tune with the first N seeds only (default all; 0: one-shot only)",
    )  # fmt: skip
    args = parser.parse_args()
    job = (lambda: _merge(args)) if args.merge else (lambda: _run(args))
    run_and_report("vs_torch_pruning", job, args.readme, first_section)


if __name__ == "__main__":
    main()
