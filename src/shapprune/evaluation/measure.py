"""What a model costs and how well it does: parameters, MACs, latency, accuracy, loss."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from shapprune.devices import device_of, to_device
from shapprune.zoo.data import Split

__all__ = ["count_macs", "count_params", "device_of", "evaluate", "latency", "measure"]


@torch.inference_mode()
def _evaluate(model: nn.Module, split: Split, batch_size: int) -> dict[str, float]:
    device = device_of(model)
    total_loss, correct = 0.0, 0
    for i in range(0, len(split), batch_size):
        x, y = split.x[i : i + batch_size].to(device), split.y[i : i + batch_size].to(device)
        logits = model(x)
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == y).sum().item())
    n = max(len(split), 1)
    return {"accuracy": correct / n, "loss": total_loss / n, "n": len(split)}


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, split: Split, batch_size: int = 512) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``split`` (in eval mode)."""
    with _eval_mode(model):
        return _evaluate(model, split, batch_size)


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example`` (batch of one), per
    torch-pruning's counter."""
    with _eval_mode(model):
        macs, _ = tp.utils.count_ops_and_params(model, to_device(example[:1], model))
    return int(macs)


def latency(model: nn.Module, example: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time in seconds of one forward pass on ``example`` (inference mode, on the
    model's device; CUDA is synchronised around each pass)."""
    example = to_device(example, model)
    sync = torch.cuda.synchronize if example.device.type == "cuda" else lambda: None
    times = []
    with _eval_mode(model), torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            model(example)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, latency_batch: int = 64
) -> dict[str, float]:
    """Accuracy, loss, parameters, MACs (per example) and median latency on the model's
    device (batch 1 and ``latency_batch``) of ``model`` on (x, y)."""
    quality = evaluate(model, Split(x, y))
    return {
        "accuracy": quality["accuracy"],
        "loss": quality["loss"],
        "params": count_params(model),
        "macs": count_macs(model, x),
        "latency_ms_b1": 1e3 * latency(model, x[:1]),
        f"latency_ms_b{latency_batch}": 1e3 * latency(model, x[:latency_batch], repeats=10),
    }
