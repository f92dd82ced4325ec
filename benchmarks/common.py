"""Shared by the benchmark scripts: command-line arguments, repeated rates summarised as
median and min-max, the standard reference game, and the JSON result file."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def arguments(doc: str | None, name: str) -> argparse.Namespace:
    """``--quick`` (tiny sizes, for the smoke test) and ``--out`` (the JSON file)."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS / f"{name}.json")
    return parser.parse_args()


def spread(samples: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def fmt_spread(s: dict[str, float], digits: int = 0, scale: float = 1.0) -> str:
    """``median (min-max)`` of a spread, each multiplied by ``scale``."""
    m, lo, hi = (scale * s[k] for k in ("median", "min", "max"))
    return f"{m:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def write_json(path: Path, result: dict) -> None:
    """Write the result with the machine description."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2, default=float))
