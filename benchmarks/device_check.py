"""The device check: what a lent GPU (or this CPU) runs, in one script of a few minutes.

1. Every command (rank, prune with its defaults, compare, oracle, tune-lrp) on each zoo
   family (LeNet-5, VGG, ResNet-20, ViT; random weights, BatchNorm statistics randomised),
   with ``--device DEVICE``, as a user types it: exit code and wall seconds.
2. The real-size models at 224 px (torchvision ResNet-50, ConvNeXt-Tiny, ViT-B/16,
   EfficientNet-B0, MobileNet-V3-Large; random weights): one forward pass of the reference
   images, Torch-Pruning's magnitude pruner to -50% MACs, and ``prune_model`` with the
   command's defaults (a short refinement) to -50% MACs, as a multiple of that forward pass.
3. The game's coalition evaluations per second on the CPU and on the device: one layer's
   game (the zoo VGG's last convolution) and the network-wide game (ResNet-20).

Run: ``python benchmarks/device_check.py --device cuda`` (on a GPU: under 8 minutes;
``--device cpu`` here; ``--quick``: small sizes, the suite's smoke test). Each part's rows
are written to the JSON as they finish, so a run cut short keeps what it measured.
On a GPU machine without torch-pruning, zennit or mlxtend, bring their wheels (README,
"On a GPU").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, machine

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {  # zoo model -> (a small layer, its family)
    "lenet5": ("conv1", "plain CNN"),
    "vgg": ("features.0", "BatchNorm CNN"),
    "resnet20": ("layer1.0.conv1", "residual + BatchNorm"),
    "vit": ("blocks.0.attn", "transformer"),
}
REAL = ["resnet50", "convnext_tiny", "vit_b_16", "efficientnet_b0", "mobilenet_v3_large"]


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cuda, cpu, ... (default: auto)")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS / "device_check.json")
    return parser.parse_args()


def _save(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2, default=float))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _checkpoints(folder: Path) -> dict[str, Path]:
    """A random-weight checkpoint of each zoo family, BatchNorm statistics randomised."""
    from torch import nn

    from shapprune.sources.checkpoint import save_checkpoint
    from shapprune.zoo.models import build_model

    paths = {}
    g = torch.Generator().manual_seed(0)
    for name in FAMILIES:
        model = build_model(name, seed=0)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        save_checkpoint(folder / name, model.eval(), name=name, config={}, metrics={})
        paths[name] = folder / f"{name}.json"
    return paths


def _commands(name: str, path: Path, layer: str, device: str, out: Path, quick: bool) -> dict:
    """Each command on one model, as a user types it."""
    per_class = "1" if quick else "5"
    model = ["--model", str(path)]
    config = out / f"{name}.yaml"
    config.write_text(
        json.dumps(
            {
                "model": str(path),
                "data": "mnist5k",
                "layers": [layer],
                "experiments": ["robustness"],
                "criteria": ["weight-l1", {"name": "shapley-permutation", "budget": 200}],
                "seeds": [0],
                "per_class": int(per_class),
                "heldout": 50,
            }
        )
    )
    return {
        "rank": ["rank", *model, "--layer", layer, "--method", "permutation", "--budget",
                 "300", "--per-class", per_class, "--out", out / f"{name}-rank.json"],
        "prune": ["prune", *model, "--refine", "5" if quick else "50", "--per-class", per_class,
                  "--out", out / f"{name}-pruned"],
        "compare": ["compare", "--config", config, "--out", out / f"{name}-compare"],
        "oracle": ["oracle", *model, "--layer", layer, "--ks", "1,2", "--per-class", per_class,
                   "--max-subsets", "300", "--out", out / f"{name}-oracle.json"],
        "tune-lrp": ["tune-lrp", *model, "--trials", "2", "--per-class", per_class,
                     "--out", out / f"{name}-composite.json"],
    }  # fmt: skip


def check_commands(device: str, quick: bool, result: dict, path: Path) -> None:
    rows = result.setdefault("commands", [])
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        env = {**os.environ, "SHAPPRUNE_CACHE": str(out / "cache")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
        for name, ckpt in _checkpoints(out).items():
            if quick and name != "vgg":  # the smoke test: one family (the suite has them all)
                continue
            layer, family = FAMILIES[name]
            for command, args in _commands(name, ckpt, layer, device, out, quick).items():
                if quick and command not in ("rank", "prune"):
                    continue
                dev = ["--device", device]
                start = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, "-m", "shapprune", *map(str, args), *dev],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                last = done.stderr.strip().splitlines()[-1:] if done.returncode else []
                rows.append(
                    {
                        "model": name,
                        "family": family,
                        "command": command,
                        "exit": done.returncode,
                        "seconds": time.perf_counter() - start,
                        "error": last[0][:300] if last else "",
                    }
                )
                _save(path, result)


def _tp_magnitude(model, example: torch.Tensor, ratio: float = 0.5) -> None:
    """Torch-Pruning's magnitude pruner, uniform, the classifier kept."""
    import torch_pruning as tp
    from torch import nn

    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio, ignored_layers=last,
    )  # fmt: skip
    pruner.step()


def check_real_scale(device: torch.device, quick: bool, result: dict, path: Path) -> None:
    import copy

    import torchvision

    from shapprune.criteria.registry import get_criterion
    from shapprune.evaluation.measure import count_macs
    from shapprune.pruning.compress import prune_model
    from shapprune.zoo.data import DatasetSplits, Split

    rows = result.setdefault("real_scale", [])
    size, n_ref = (32, 10) if quick else (224, 60)
    names = ["mobilenet_v3_large"] if quick else REAL
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_ref, 3, size, size, generator=g)
    y = torch.randint(0, 10, (n_ref,), generator=g)
    for name in names:
        kwargs = {"image_size": size} if name.startswith("vit") else {}
        model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
        model = model.eval().to(device)
        xd = x.to(device)
        with torch.inference_mode():
            model(xd[:2])
            _sync(device)
            start = time.perf_counter()
            for i in range(0, n_ref, 20):
                model(xd[i : i + 20])
            _sync(device)
        forward = time.perf_counter() - start
        start = time.perf_counter()
        _tp_magnitude(copy.deepcopy(model), xd[:1])
        _sync(device)
        tp_seconds = time.perf_counter() - start
        split = Split(x, y)
        data = DatasetSplits(split, split, split, "random", 10, 3, size)
        row = {"model": name, "size": size, "reference_images": n_ref,
               "forward_s": forward, "tp_magnitude_s": tp_seconds}  # fmt: skip
        start = time.perf_counter()
        try:
            pruned, summary = prune_model(
                model, data, get_criterion("lrp"), "macs=0.5", global_="auto", compensate="auto",
                cost="macs", refine=2 if quick else 20, per_class=n_ref // 10,
            )  # fmt: skip
            row["prune_s"] = time.perf_counter() - start
            row["prune_x_forward"] = row["prune_s"] / forward
            row["macs_ratio"] = count_macs(pruned, xd[:1]) / count_macs(model, xd[:1])
            row["error"] = ""
        except Exception as err:  # recorded: the check reports what fails where
            row["prune_s"] = time.perf_counter() - start
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        if device.type == "cuda":
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            torch.cuda.reset_peak_memory_stats(device)
        rows.append(row)
        _save(path, result)


def _rate(game, n: int) -> float:
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(n, game.n_players, generator=g) > 0.5
    game.value(masks[:2])  # warm-up
    start = time.perf_counter()
    game.value(masks)
    return n / (time.perf_counter() - start)


def check_game_rates(device: torch.device, quick: bool, result: dict, path: Path) -> None:
    from shapprune.game.network_game import NetworkGame
    from shapprune.game.pruning_game import PruningGame
    from shapprune.zoo.models import build_model

    rows = result.setdefault("game_rates", [])
    n_ref, n = (8, 16) if quick else (256, 512)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n_ref, 1, 28, 28, generator=g), torch.randint(0, 10, (n_ref,), generator=g)
    devices = ["cpu"] + ([str(device)] if device.type != "cpu" else [])
    for where in devices:
        vgg = build_model("vgg", seed=0).eval().to(where)
        resnet = build_model("resnet20", seed=0).eval().to(where)
        games = {
            "vgg features.11 (one layer)": PruningGame(vgg, "features.11", (x, y)),
            "resnet20, every layer (network-wide)": NetworkGame(resnet, (x, y)),
        }
        for label, game in games.items():
            rows.append(
                {
                    "game": label,
                    "device": where,
                    "players": int(game.n_players),
                    "reference_images": n_ref,
                    "evals_per_s": _rate(game, n),
                }  # fmt: skip
            )
            _save(path, result)


def tables(result: dict) -> str:
    out = [f"#### The device check on {result['device']}", ""]
    out += ["| model | family | command | exit | seconds |", "|---|---|---|---:|---:|"]
    for r in result.get("commands", []):
        note = f" ({r['error']})" if r["exit"] else ""
        out.append(
            f"| {r['model']} | {r['family']} | {r['command']} | {r['exit']}{note} | "
            f"{r['seconds']:.1f} |"
        )
    out += ["", "| model | px | forward of the reference (s) | TP magnitude (s) | "
            "prune defaults (s) | x forward | MACs after / before |",
            "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in result.get("real_scale", []):
        if r["error"]:
            out.append(
                f"| {r['model']} | {r['size']} | {r['forward_s']:.3f} | "
                f"{r['tp_magnitude_s']:.2f} | failed: {r['error']} | | |"
            )
        else:
            out.append(
                f"| {r['model']} | {r['size']} | {r['forward_s']:.3f} | "
                f"{r['tp_magnitude_s']:.2f} | {r['prune_s']:.1f} | "
                f"{r['prune_x_forward']:.0f} | {r['macs_ratio']:.3f} |"
            )
    out += ["", "| game | device | players | reference images | evaluations / s |",
            "|---|---|---:|---:|---:|"]  # fmt: skip
    for r in result.get("game_rates", []):
        out.append(
            f"| {r['game']} | {r['device']} | {r['players']} | {r['reference_images']} | "
            f"{r['evals_per_s']:,.0f} |"
        )
    return "\n".join(out)


def main() -> None:
    args = _arguments()
    sys.path.insert(0, str(ROOT / "src"))
    from shapprune.devices import resolve_device

    device = resolve_device(args.device)
    result: dict = {"device": str(device), "quick": args.quick}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    start = time.perf_counter()
    check_commands(str(device), args.quick, result, args.out)
    check_real_scale(device, args.quick, result, args.out)
    check_game_rates(device, args.quick, result, args.out)
    result["seconds"] = time.perf_counter() - start
    _save(args.out, result)
    print(tables(result))
    print(f"\nRan in {result['seconds']:.0f} s.")


if __name__ == "__main__":
    main()
