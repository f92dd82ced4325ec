"""Shared fixtures: the embedded data and a small network trained on it once per run."""

import os

import pytest
import torch

from shapprune.zoo.data import load_dataset
from shapprune.zoo.training import recipe_for, train_by_recipe


def pytest_configure(config):
    """Under pytest-xdist each worker takes its share of torch's threads (and hands it to the
    processes it starts), so that the workers do not fight over the cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, torch.get_num_threads() // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


@pytest.fixture(scope="session")
def mnist5k():
    return load_dataset("mnist5k")


@pytest.fixture(scope="session")
def tiny_cnn():
    """The zoo's tinycnn (8 conv1 filters) trained by its recipe (a few seconds)."""
    recipe = recipe_for("tinycnn", "mnist5k")
    model, *_ = train_by_recipe("tinycnn", "mnist5k", recipe, progress=False)
    return model.eval()


@pytest.fixture
def registries():
    """The estimator and criterion registries, restored after the test (which may add to them)."""
    from shapprune.criteria import registry as criteria
    from shapprune.estimators import registry as estimators

    saved = dict(estimators.ESTIMATORS), dict(criteria._REGISTERED)
    yield
    estimators.ESTIMATORS.clear()
    estimators.ESTIMATORS.update(saved[0])
    criteria._REGISTERED.clear()
    criteria._REGISTERED.update(saved[1])
