"""Streaming an image folder: ``shapprune prune`` on a folder of 224-px images, its peak
memory and wall time.

A folder of N images (default 8,000; 10 classes; JPEG) is written to a temporary folder and
``shapprune prune`` runs on it in a subprocess, as a user types it: a torchvision ResNet-18
(random weights, ``--model-arg num_classes=10``), the ImageNet preprocessing given
explicitly (``--image-size 224 --resize 256 --mean ... --std ...``), a cheap criterion
(weight-l1, per layer, ``--refine 0``) to -50% MACs. The images are streamed: only the
reference examples are held in memory, the test split is measured batch by batch. The peak
resident memory of the subprocess (``getrusage(RUSAGE_CHILDREN).ru_maxrss``) is the figure;
the goal is under 2.5 GB (the whole folder as float32 tensors would be N x 0.6 MB).

Run: ``python benchmarks/folder_memory.py`` (8,000 images: a few minutes on one thread);
``--quick``: 200 images, fed to the model at 64 px (the suite's smoke test).
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

import numpy as np
from common import RESULTS, machine

ROOT = Path(__file__).resolve().parents[1]
GOAL_MB = 2.5 * 1024
PIXELS = 224
CLASSES = 10
IMAGENET = ("0.485,0.456,0.406", "0.229,0.224,0.225")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 images (smoke test)")
    parser.add_argument("--images", type=int, default=None, help="images (default 8,000)")
    parser.add_argument("--out", type=Path, default=RESULTS / "folder_memory.json")
    return parser.parse_args()


def write_folder(folder: Path, n: int, seed: int = 0) -> int:
    """``n`` 224-px JPEGs in ``CLASSES`` class subfolders (smooth random colours plus
    noise: a photo's file size, not noise's); returns the bytes written."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        cls = folder / f"class_{i % CLASSES:02d}"
        cls.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, size=(7, 7, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((PIXELS, PIXELS), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (PIXELS, PIXELS, 3))
        path = cls / f"{i:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=85)
        total += path.stat().st_size
    return total


def run_prune(
    folder: Path, out: Path, per_class: int, size: int = PIXELS
) -> tuple[subprocess.CompletedProcess, float]:
    """``shapprune prune`` on ``folder`` in a subprocess, the images resized to ``size``
    (ImageNet's crop of 224 from 256 at full size): (its result, wall seconds)."""
    command = [
        sys.executable, "-m", "shapprune", "prune",
        "--model", "torchvision:resnet18", "--model-arg", "num_classes=10",
        "--data", str(folder), "--image-size", str(size), "--resize", str(size * 8 // 7),
        "--mean", IMAGENET[0], "--std", IMAGENET[1],
        "--criterion", "weight-l1", "--per-layer", "--compensate", "no", "--refine", "0",
        "--per-class", str(per_class), "--target", "macs=0.5", "--device", "cpu",
        "--batch-size", "32", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    return done, time.perf_counter() - start


def main() -> None:
    args = _arguments()
    n = args.images or (200 if args.quick else 8000)
    per_class = 2 if n < 500 else 10
    with tempfile.TemporaryDirectory(prefix="shapprune-folder-") as tmp:
        folder, out = Path(tmp) / "images", Path(tmp) / "pruned"
        start = time.perf_counter()
        size = write_folder(folder, n)
        written = time.perf_counter() - start
        done, seconds = run_prune(folder, out, per_class, 64 if args.quick else PIXELS)
        if done.returncode != 0:
            raise SystemExit(f"shapprune prune failed:\n{done.stderr[-3000:]}")
        summary = json.loads((out / "summary.json").read_text())
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    tensors_mb = n * 3 * PIXELS * PIXELS * 4 / 2**20
    result = {
        "machine": machine(),
        "quick": args.quick,
        "images": n,
        "pixels": PIXELS,
        "model_px": 64 if args.quick else PIXELS,
        "folder_mb": size / 2**20,
        "write_s": written,
        "per_class": per_class,
        "wall_s": seconds,
        "peak_rss_mb": peak_mb,
        "as_tensors_mb": tensors_mb,
        "goal_mb": GOAL_MB,
        "met": peak_mb < GOAL_MB,
        "macs_ratio": summary["after"]["macs"] / summary["before"]["macs"],
        "omp_threads": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"#### Streaming a folder of {n:,} {PIXELS}-px images\n")
    print("| images | folder on disk | `prune` wall time | peak memory (RSS) | as float32 tensors "
          "| goal | met |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    met = "yes" if result["met"] else "no"
    print(f"| {n:,} | {size / 2**20:,.0f} MB | {seconds:,.0f} s | {peak_mb:,.0f} MB "
          f"| {tensors_mb:,.0f} MB | < {GOAL_MB:,.0f} MB | {met} |")  # fmt: skip
    print(f"\nResNet-18 (torchvision, random weights) to {result['macs_ratio']:.2f} of its MACs "
          f"(weight-l1, per layer, no refinement), {per_class} reference examples per class, "
          f"batches of 32, {result['omp_threads']} thread(s); writing the folder took "
          f"{written:.0f} s (not counted).")  # fmt: skip


if __name__ == "__main__":
    main()
