"""Every torchvision classification family through ``shapprune prune``'s defaults.

The job: ``prune_model`` as ``shapprune prune`` calls it (LRP scores, the scope of the cut
chosen on the reference loss, the cut per MAC saved, compensation where it helps), target
50% of the MACs removed, a refinement budget of 2 (prune's default is 300: the
refinement's cost grows with it, not with the family), on each builder of
``torchvision.models`` with random weights (nothing downloaded), 10 classes, one random
reference example per class at the smallest input size the architecture takes (32 x 32
where it can; GoogLeNet and SqueezeNet 64, Swin 64, MaxViT 224, Inception 299). A family
passes when the pruned model runs and has at most half the MACs. Seconds: ``prune_model``
end to end (scoring, planning, removal, measuring before and after), one run, seed 0,
``torch.get_num_threads()`` threads (printed).

What a failure says is printed as it is: a ``ValueError`` is a refusal with a reason (a
limitation, named), anything else a bug.

Run: ``python benchmarks/torchvision_families.py [--quick] [--only NAME,...] [--out FILE]``;
the JSON is written after each family; with ``--only`` the other families' rows already in
``--out`` are kept
(an hour or more on 2 cores: the removal rebuilds torch-pruning's dependency graph after
each layer it cuts, and the plan's bisection removes about 30 times, so time grows with the
square of the depth: DenseNet-121 takes minutes; ``--quick``: small instances of two
families' classes, seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from common import RESULTS, write_json
from torch import nn
from torchvision.models import ConvNeXt, DenseNet
from torchvision.models.convnext import CNBlockConfig

from shapprune.criteria.registry import get_criterion
from shapprune.pruning.compress import prune_model
from shapprune.pruning.plan import Target
from shapprune.zoo.data import DatasetSplits, Split

TARGET = "macs=0.5"
REFINE = 2
CLASSES = 10


def _tv(name: str, **config) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return torchvision.models.get_model(name, weights=None, num_classes=CLASSES, **config)

    return build


FAMILIES: dict[str, tuple[Callable[[], nn.Module], int]] = {
    # name -> (builder with random weights, input size)
    "alexnet": (_tv("alexnet"), 64),
    "resnet18": (_tv("resnet18"), 32),
    "resnext50_32x4d": (_tv("resnext50_32x4d"), 32),
    "wide_resnet50_2": (_tv("wide_resnet50_2"), 32),
    "vgg11_bn": (_tv("vgg11_bn"), 32),
    "densenet121": (_tv("densenet121"), 32),
    "googlenet": (_tv("googlenet", aux_logits=False, init_weights=True), 64),
    "inception_v3": (_tv("inception_v3", aux_logits=False, init_weights=True), 299),
    "mobilenet_v2": (_tv("mobilenet_v2"), 32),
    "mobilenet_v3_small": (_tv("mobilenet_v3_small"), 32),
    "efficientnet_b0": (_tv("efficientnet_b0"), 32),
    "efficientnet_v2_s": (_tv("efficientnet_v2_s"), 32),
    "mnasnet0_5": (_tv("mnasnet0_5"), 32),
    "shufflenet_v2_x0_5": (_tv("shufflenet_v2_x0_5"), 32),
    "squeezenet1_0": (_tv("squeezenet1_0"), 64),
    "regnet_x_400mf": (_tv("regnet_x_400mf"), 32),
    "regnet_y_400mf": (_tv("regnet_y_400mf"), 32),
    "convnext_tiny": (_tv("convnext_tiny"), 32),
    "swin_t": (_tv("swin_t"), 64),
    "swin_v2_t": (_tv("swin_v2_t"), 64),
    "maxvit_t": (_tv("maxvit_t"), 224),
    "vit_b_16": (_tv("vit_b_16", image_size=32), 32),
}

QUICK: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "DenseNet (growth 8, blocks 2-2)": (
        lambda: DenseNet(8, (2, 2), num_init_features=16, bn_size=2, num_classes=CLASSES),
        32,
    ),
    "ConvNeXt (16-32, one block each)": (
        lambda: ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10),
        32,
    ),
}


def random_splits(size: int, per_class: int = 1, seed: int = 0) -> DatasetSplits:
    """Random images, ``per_class`` of each class in each split."""
    g = torch.Generator().manual_seed(seed)

    def split() -> Split:
        y = torch.arange(CLASSES).repeat(per_class)
        return Split(torch.randn(len(y), 3, size, size, generator=g), y)

    return DatasetSplits(split(), split(), split(), "random", CLASSES, 3, size)


def run(name: str, build: Callable[[], nn.Module], size: int) -> dict:
    """Prune one family as ``shapprune prune`` does; its status, seconds and MACs kept."""
    torch.manual_seed(0)
    model = build().eval()
    data = random_splits(size)
    target = Target.parse(TARGET)
    start = time.perf_counter()
    row = {"family": name, "input": size, "params": sum(p.numel() for p in model.parameters())}
    try:
        pruned, summary = prune_model(
            model, data, get_criterion("lrp"), target, global_="auto", compensate="auto",
            cost=target.kind, refine=REFINE, per_class=1, seed=0,
        )  # fmt: skip
        with torch.no_grad():
            out = pruned(data.test.x)
        macs = summary["after"]["macs"] / summary["before"]["macs"]
        met = macs <= 1 - target.fraction and tuple(out.shape) == (len(data.test), CLASSES)
        scope = summary["plans"][0].get("scope", {}).get("chosen", "?")
        row |= {"status": "ok" if met else "target missed", "macs_ratio": macs, "scope": scope}
    except ValueError as e:
        row |= {"status": "refused", "reason": str(e)}
    except Exception as e:  # a bug: recorded, the next family still runs
        row |= {"status": "error", "reason": f"{type(e).__name__}: {e}"}
        traceback.print_exc()
    row["seconds"] = time.perf_counter() - start
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small instances (smoke test)")
    parser.add_argument("--only", default="", help="comma-separated family names")
    parser.add_argument("--out", type=Path, default=RESULTS / "torchvision_families.json")
    args = parser.parse_args()
    families = QUICK if args.quick else FAMILIES
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in only if n not in families]
    if unknown:
        raise SystemExit(f"unknown families {unknown}; known: {', '.join(families)}")
    found = {}  # family -> row; with --only, the other families' rows of --out are kept
    if only and args.out.exists():
        found = {r["family"]: r for r in json.loads(args.out.read_text())["rows"]}
    rows = [found[n] for n in families if n in found]
    for name, (build, size) in families.items():
        if only and name not in only:
            continue
        r = found[name] = run(name, build, size)
        print(f"  {name}: {r['status']} in {r['seconds']:.1f} s", file=sys.stderr, flush=True)
        rows = [found[n] for n in families if n in found]
        write_json(args.out, {"target": TARGET, "refine": REFINE, "rows": rows})  # as it goes
    print(f"#### torchvision's families through `shapprune prune`'s defaults, {TARGET}\n")
    print(
        f"Random weights, {CLASSES} classes, one reference example per class, refine {REFINE}; "
        f"one run each, {torch.get_num_threads()} torch thread(s).\n"
    )
    print("| family | input | parameters | status | MACs after / before | scope | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        status = r["status"] if "reason" not in r else f"{r['status']}: {r['reason'][:120]}"
        macs = f"{r['macs_ratio']:.3f}" if "macs_ratio" in r else "-"
        print(
            f"| {r['family']} | {r['input']} | {r['params']:,} | {status} | {macs} | "
            f"{r.get('scope', '-')} | {r['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
