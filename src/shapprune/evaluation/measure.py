"""What a model costs and how well it does: parameters, MACs, latency, accuracy, loss.

Accuracy and loss are summed batch by batch (``shapprune.data.batches``), so a streamed
split (a Dataset or DataLoader) is never held in memory at once."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from shapprune.data import BATCH_SIZE, Split, batches, examples, known_size
from shapprune.devices import device_of, to_device
from shapprune.progress import staged_progress

__all__ = [
    "LATENCY_S", "count_macs", "count_params", "device_of", "evaluate", "latency", "measure",
]  # fmt: skip

LATENCY_S = 2.0
"""Seconds the latency of one batch size is timed for, at most, unless one pass is slower."""


@torch.inference_mode()
def _evaluate(
    model: nn.Module, split, batch_size: int, workers: int = 0, stage: str | None = None
) -> dict[str, float]:
    device = device_of(model)
    total = known_size(split)
    report = staged_progress(stage, "examples") if stage and total else None
    total_loss, correct, n = 0.0, 0, 0
    for x, y in batches(split, batch_size, workers):
        x, y = x.to(device), y.to(device)
        logits = model(x).float()  # an autocast pass's 16-bit logits: the loss in float32
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == y).sum().item())
        n += len(y)
        if report is not None:
            report(n, total)
    return {"accuracy": correct / max(n, 1), "loss": total_loss / max(n, 1), "n": n}


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module,
    split,
    batch_size: int | None = None,
    workers: int = 0,
    stage: str | None = None,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``split`` (in eval mode): a
    ``Split``, ``(x, y)`` tensors, a Dataset (read in batches of ``batch_size`` by
    ``workers`` loader processes) or a DataLoader. ``batch_size`` None: 512 for tensors
    (already in memory), ``shapprune.data.BATCH_SIZE`` for a Dataset. ``stage``: the name
    a progress display (``using_progress``) shows the examples counted under."""
    if batch_size is None:
        batch_size = 512 if isinstance(split, Split | tuple) else BATCH_SIZE
    with _eval_mode(model):
        return _evaluate(model, split, batch_size, workers, stage)


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example`` (batch of one), per
    torch-pruning's counter."""
    with _eval_mode(model):
        macs, _ = tp.utils.count_ops_and_params(model, to_device(example[:1], model))
    return int(macs)


def latency(
    model: nn.Module,
    example: torch.Tensor,
    repeats: int = 20,
    warmup: int = 3,
    max_seconds: float = LATENCY_S,
) -> float:
    """Median wall time in seconds of one forward pass on ``example`` (inference mode, on the
    model's device; CUDA is synchronised around each pass). Passes stop early once
    ``max_seconds`` are spent (warm-up included) and at least 3 are timed, or one that
    took over a third of ``max_seconds``: a large model on a CPU is timed in seconds, not
    minutes (a pass of 64 images through a ResNet-50 at 224 px takes about 10 s on one
    core; its median of 3 would cost 3 reference passes of prune's time)."""
    example = to_device(example, model)
    sync = torch.cuda.synchronize if example.device.type == "cuda" else lambda: None
    times: list[float] = []
    begin = time.perf_counter()
    with _eval_mode(model), torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            model(example)
            sync()
            spent = time.perf_counter() - begin
            if i >= warmup or spent > max_seconds / 2:  # a slow warm-up: time from now on
                times.append(time.perf_counter() - start)
            if times and spent > max_seconds and (len(times) >= 3 or times[-1] > max_seconds / 3):
                break
    return statistics.median(times)


def measure(
    model: nn.Module,
    x,
    y: torch.Tensor | None = None,
    *,
    latency_batch: int = 64,
    batch_size: int | None = None,
    workers: int = 0,
    stage: str | None = None,
) -> dict[str, float]:
    """Accuracy, loss, parameters, MACs (per example) and median latency on the model's
    device (batch 1 and ``latency_batch``) of ``model`` on (x, y), or on ``x`` alone where
    it is a split (a ``Split``, Dataset or DataLoader: streamed in batches of
    ``batch_size`` through ``workers`` loader processes; only ``latency_batch`` examples
    are held for timing)."""
    split = (x, y) if y is not None else x
    quality = evaluate(model, split, batch_size=batch_size, workers=workers, stage=stage)
    example = examples(split, latency_batch)
    return {
        "accuracy": quality["accuracy"],
        "loss": quality["loss"],
        "params": count_params(model),
        "macs": count_macs(model, example),
        "latency_ms_b1": 1e3 * latency(model, example[:1]),
        f"latency_ms_b{latency_batch}": 1e3 * latency(model, example, repeats=10),
    }
