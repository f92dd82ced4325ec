"""Measuring a model: parameters and MACs counted by hand, accuracy and loss by hand."""

import math
import time

import pytest
import torch
from torch import nn

from shapprune.evaluation.measure import count_macs, count_params, evaluate, latency, measure
from shapprune.zoo.data import Split


def _tiny(bias: bool) -> nn.Module:
    # 1x4x4 input -> conv 3x3 (2 filters) -> 2x2x2 -> relu -> flatten (8) -> linear (3)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, bias=bias), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3, bias=bias)
    )


def test_params_by_hand():
    assert count_params(_tiny(bias=False)) == 2 * 1 * 3 * 3 + 8 * 3
    assert count_params(_tiny(bias=True)) == (2 * 9 + 2) + (8 * 3 + 3)


def test_macs_by_hand():
    """torch-pruning's counter: a multiply-add per weight and output, one per bias and output,
    one per ReLU output; only the first example counts."""
    x = torch.randn(5, 1, 4, 4)
    conv = (2 * 2 * 2) * (1 * 3 * 3)  # outputs x fan-in
    relu = 2 * 2 * 2
    linear = 3 * 8
    assert count_macs(_tiny(bias=False), x) == conv + relu + linear
    assert count_macs(_tiny(bias=True), x) == conv + relu + linear + 8 + 3


class _Fixed(nn.Module):
    """Logits are the input, flattened (with a weight, so the model has a parameter)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x.flatten(1) * self.scale


def test_evaluate_by_hand_in_batches_and_mode_restored():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 0.5], [1.0, 2.0]])
    y = torch.tensor([0, 1, 1, 0, 1])
    model = _Fixed().train()
    out = evaluate(model, Split(logits[:, :, None, None], y), batch_size=2)
    assert model.training  # put back as it was
    assert out["accuracy"] == pytest.approx(3 / 5) and out["n"] == 5
    loss = sum(
        -math.log(math.exp(z[t]) / sum(math.exp(v) for v in z))
        for z, t in zip(logits.tolist(), y.tolist(), strict=True)
    )
    assert out["loss"] == pytest.approx(loss / 5, rel=1e-6)


def test_measure_collects_the_counts():
    model = _tiny(bias=True).eval()
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))
    out = measure(model, x, y, latency_batch=4)
    assert out["params"] == count_params(model) and out["macs"] == count_macs(model, x)
    assert out["accuracy"] == evaluate(model, Split(x, y))["accuracy"]
    assert out["latency_ms_b1"] > 0 and out["latency_ms_b4"] > 0


def test_latency_restores_training_mode():
    model = _tiny(bias=False).train()
    assert latency(model, torch.randn(1, 1, 4, 4), repeats=2, warmup=1) > 0
    assert model.training


class _Slow(torch.nn.Module):
    """A forward pass that takes ``seconds``, counted."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.calls = seconds, 0
        self.layer = torch.nn.Linear(2, 2)

    def forward(self, x):
        self.calls += 1
        time.sleep(self.seconds)
        return self.layer(x)


def test_latency_stops_early_on_a_slow_model():
    """Over ``max_seconds``: at least 3 passes timed, or fewer where each took over a third
    of it; never all the repeats asked for."""
    quick = _Slow(0.02)
    assert latency(quick, torch.randn(1, 2), repeats=200, warmup=3, max_seconds=0.2) >= 0.02
    assert 3 + 3 <= quick.calls < 20
    slow = _Slow(0.1)
    assert latency(slow, torch.randn(1, 2), repeats=20, warmup=3, max_seconds=0.15) >= 0.1
    assert slow.calls == 2  # the warm-up is timed once it has taken half the limit
