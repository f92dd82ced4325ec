"""Shared fixtures: the embedded data and a small network trained on it once per run."""

import pytest
import torch
from torch import nn

from shapprune.data import load_dataset


@pytest.fixture(scope="session")
def mnist5k():
    return load_dataset("mnist5k")


@pytest.fixture(scope="session")
def tiny_cnn(mnist5k):
    """A CNN whose first layer has 8 filters, trained for one epoch (a few seconds)."""
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 8, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(256, 10),
        )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = mnist5k.train.x, mnist5k.train.y
    for _ in range(2):
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()
