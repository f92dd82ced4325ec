"""Shared fixtures: the embedded data and a small network trained on it once per run."""

import pytest

from shapprune.zoo.data import load_dataset
from shapprune.zoo.training import recipe_for, train_by_recipe


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
