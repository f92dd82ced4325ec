"""Where tensors live: the devices this machine offers, and one way to name one.

The game, the criteria and removal run on the model's device (``device_of``); the data is
moved there once, and results come back to the CPU as float64 (``as_float64``: Apple's MPS
has no float64, so there the values move to the CPU first).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["as_float64", "available_devices", "device_of", "resolve_device", "to_device"]


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
