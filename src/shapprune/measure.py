"""What a model costs and how well it does: parameters, MACs, latency, accuracy, loss."""

from __future__ import annotations

import statistics
import time

import torch
import torch_pruning as tp
from torch import nn

from .data import Split
from .train import evaluate


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example`` (batch of one), per
    torch-pruning's counter."""
    was_training = model.training
    model.eval()
    try:
        macs, _ = tp.utils.count_ops_and_params(model, example[:1])
    finally:
        model.train(was_training)
    return int(macs)


def latency(model: nn.Module, example: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time in seconds of one forward pass on ``example`` (CPU, inference mode)."""
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                start = time.perf_counter()
                model(example)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return statistics.median(times)


def measure(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, latency_batch: int = 64
) -> dict[str, float]:
    """Accuracy, loss, parameters, MACs (per example) and median CPU latency (batch 1 and
    ``latency_batch``) of ``model`` on (x, y)."""
    quality = evaluate(model, Split(x, y))
    return {
        "accuracy": quality["accuracy"],
        "loss": quality["loss"],
        "params": count_params(model),
        "macs": count_macs(model, x),
        "latency_ms_b1": 1e3 * latency(model, x[:1]),
        f"latency_ms_b{latency_batch}": 1e3 * latency(model, x[:latency_batch], repeats=10),
    }
