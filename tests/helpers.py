"""Helpers shared by the tests (imported as ``from helpers import ...``)."""

import pytest
import torch
from torch import nn

from shapprune import cli


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """``shapprune ARGS`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr("sys.argv", ["shapprune", *map(str, args)])
    with pytest.raises(SystemExit) as done:
        cli.main()
    out = capsys.readouterr()
    return done.value.code or 0, out.out, out.err


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorms non-trivial statistics and affine parameters, so that where a unit is
    masked (before or after its BatchNorm) matters; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.3)
    return model.eval()


# What float32 allows between two computations of one value (a game's value, a logit) that
# went through different batch or stack shapes, thread counts or CPUs: matrix products block
# their sums differently, so results agree to a few units in the 6th significant digit,
# not bit for bit. Bit-identical holds only on one machine with the same stack sizes.
F32_ACROSS_SHAPES = 1e-5
