"""Activation sums at the mask points, against a hand computation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shapprune.criteria.activations import activation_sums
from shapprune.game.units import find_units


class Branches(nn.Module):
    """conv2's two channels enter conv3 after conv1's four (a concatenation), and also a
    second consumer, conv4: every unit is read at two mask points."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(1, 2, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 3, 3, padding=1)
        self.conv4 = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 5 * 5, 4)

    def forward(self, x, a3=None, a4=None):
        """``a3``/``a4``: conv2's activation as conv3/conv4 read it (default: computed)."""
        a1, a2 = torch.relu(self.conv1(x)), torch.relu(self.conv2(x))
        a3, a4 = a2 if a3 is None else a3, a2 if a4 is None else a4
        return self.fc((self.conv3(torch.cat([a1, a3], dim=1)) + self.conv4(a4)).flatten(1))


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = Branches().eval()
    x, y = torch.randn(7, 1, 5, 5), torch.randint(0, 4, (7,))
    return model, find_units(model, "conv2", x[:2]), x, y


def test_sums_by_hand(setup):
    model, units, x, y = setup
    assert len(units.mask_points) == 2
    a2 = torch.relu(model.conv2(x))
    # the activation as each consumer reads it, one leaf per consumer
    a3, a4 = a2.detach().clone().requires_grad_(), a2.detach().clone().requires_grad_()
    logits = model(x, a3, a4)
    g3, g4 = torch.autograd.grad(F.cross_entropy(logits, y), [a3, a4])
    a = a2.detach().double()
    sums = activation_sums(model, units, x, y, batch_size=3, grad=True)
    both = (a * g3.double() + a * g4.double()).sum((0, 2, 3))
    np.testing.assert_allclose(sums.ag, both.numpy(), rtol=1e-5, atol=1e-12)
    abs_g = (g3.double().abs() + g4.double().abs()).sum((0, 2, 3))
    np.testing.assert_allclose(sums.abs_g, abs_g.numpy(), rtol=1e-5, atol=1e-12)
    np.testing.assert_array_equal(sums.zeros, 2 * (a == 0).sum((0, 2, 3)).numpy())
    np.testing.assert_array_equal(sums.entries, [2 * 7 * 5 * 5] * 2)
    assert 0 < sums.zeros.sum() < sums.entries.sum()  # the relu zeroes some, not all


def test_batches_change_nothing_and_no_grad_leaves_zeros(setup):
    model, units, x, y = setup
    whole = activation_sums(model, units, x, y, batch_size=len(x), grad=True)
    parts = activation_sums(model, units, x, y, batch_size=2, grad=True)
    np.testing.assert_allclose(parts.ag, whole.ag, rtol=1e-5, atol=1e-12)
    plain = activation_sums(model, units, x, y, batch_size=2, grad=False)
    np.testing.assert_array_equal(plain.zeros, whole.zeros)
    assert not plain.ag.any() and not plain.abs_g.any()
