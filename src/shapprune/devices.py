"""Where tensors live: the devices this machine offers, and one way to name one.

The game, the criteria and removal run on the model's device (``device_of``); the data is
moved there once, and results come back to the CPU as float64 (``as_float64``: Apple's MPS
has no float64, so there the values move to the CPU first).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "PRECISIONS",
    "as_float64",
    "autocast",
    "available_devices",
    "check_precision",
    "device_of",
    "resolve_device",
    "to_device",
]

PRECISIONS = ("float32", "bfloat16", "float16")
"""What forward passes may compute in: float32 (exact), or a 16-bit autocast."""


def available_devices() -> list[str]:
    """The device types usable here, accelerators first: "cuda", "mps", then "cpu"."""
    out = []
    if torch.cuda.is_available():
        out.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out + ["cpu"]


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``None`` or "auto": the first available accelerator (cuda, then mps), else the CPU;
    otherwise the named device ("cpu", "cuda", "cuda:1", "mps"), checked to exist here."""
    available = available_devices()
    if name is None or (isinstance(name, str) and name.strip().lower() == "auto"):
        return torch.device(available[0])
    try:
        device = torch.device(name.strip() if isinstance(name, str) else name)
    except (RuntimeError, TypeError):
        device = None
    ok = device is not None and device.type in available
    if ok and device.type == "cuda" and device.index is not None:
        ok = device.index < torch.cuda.device_count()
    if not ok:
        raise ValueError(
            f"device {str(name)!r} is not available here; use 'auto' or one of: "
            + ", ".join(available)
        )
    return device


def device_of(model: nn.Module) -> torch.device:
    """Where the model's parameters (else buffers) live; the CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_device(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``x`` on the model's device; floating inputs in the model's floating dtype, integer
    inputs (token ids, indices) unchanged."""
    device = device_of(model)
    if x.is_floating_point():
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), x.dtype)
        return x.to(device=device, dtype=dtype)
    return x.to(device)


def as_float64(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float64, on its device where that has float64 (not MPS: there, on the CPU)."""
    if t.device.type == "mps":
        t = t.cpu()
    return t.double()


def check_precision(precision: str, device: torch.device | str) -> None:
    """Refuse a precision this device cannot autocast to, before any work: float16 only
    on CUDA (a CPU autocasts to bfloat16 only, and silently falls back otherwise)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    kind = torch.device(device).type
    if precision == "float16" and kind != "cuda":
        raise ValueError(f"float16 autocast needs a CUDA device, not {kind}; use bfloat16 here")
    if precision == "bfloat16" and kind not in ("cuda", "cpu"):
        raise ValueError(f"bfloat16 autocast is not available on {kind}; use float32 there")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """Forward passes within run in ``precision`` on ``device`` (torch's autocast: matrix
    products and convolutions in 16 bits, reductions and losses in float32); "float32":
    nothing changes. The parameters stay float32: only activations are rounded.

    Autocast's cache of 16-bit weight copies is off: it would keep one for every model
    copy the block makes (each plan's bisection prunes copies) until the block ends
    (ViT-B/16's planning: killed at 19 GB)."""
    check_precision(precision, device)
    if precision == "float32":
        yield
        return
    kind, dtype = torch.device(device).type, getattr(torch, precision)
    with torch.autocast(kind, dtype=dtype, cache_enabled=False):
        yield
