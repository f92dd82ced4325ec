"""The criterion contract: one base class, declared options checked early, several layers at
once, a registry open to criteria and estimators registered from test code alone."""

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from toys import IndexCriterion, ScaledLoo

from shapprune import Criterion, option
from shapprune.criteria.registry import (
    CRITERIA,
    criterion,
    get_criterion,
    register_criterion,
)
from shapprune.criteria.shapley import ShapleyCriterion
from shapprune.estimators.registry import register_estimator
from shapprune.zoo.models import build_model

SIZE = 16


def _data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, SIZE, SIZE, generator=g), torch.randint(0, 10, (n,), generator=g)


def _lenet():
    return build_model("lenet5", image_size=SIZE, seed=0)


def test_every_criterion_is_one_base_class():
    for name in CRITERIA:
        crit = get_criterion(name)
        assert isinstance(crit, Criterion), name
        assert crit.name == name


def test_lrp_is_imported_only_when_built():
    code = (
        "import sys, shapprune; from shapprune.criteria.registry import CRITERIA; "
        "CRITERIA['lrp'].check({'composite': 'epsilon'}); "
        "assert 'zennit' not in sys.modules, 'zennit imported'; "
        "shapprune.get_criterion('lrp'); assert 'zennit' in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_toy_criterion_scores_several_layers(registries):
    register_criterion("toy-index", IndexCriterion)
    assert "toy-index" in CRITERIA
    crit = get_criterion("toy-index", factor=2.0)
    assert crit.name == "toy-index" and crit.factor == 2.0
    scores = crit.score(_lenet(), ["conv1", "conv2", "fc1"], _data())
    assert list(scores) == ["conv1", "conv2", "fc1"]
    for layer, n in (("conv1", 20), ("conv2", 50), ("fc1", 500)):
        np.testing.assert_array_equal(scores[layer], 2.0 * np.arange(n))
        assert scores[layer].dtype == np.float64
    # a single layer name is one layer
    assert list(crit.score(_lenet(), "conv1", _data())) == ["conv1"]


def test_decorator_registration_and_fixed_options(registries):
    @criterion("toy-triple", factor=3.0)
    class Triple(IndexCriterion):
        pass

    scores = get_criterion("toy-triple").score(_lenet(), ["conv1"], _data())["conv1"]
    np.testing.assert_array_equal(scores, 3.0 * np.arange(20))
    with pytest.raises(ValueError, match="criterion 'toy-triple' has no option 'factor'; its"):
        get_criterion("toy-triple", factor=1.0)
    with pytest.raises(ValueError, match="'toy-triple' is already registered"):
        register_criterion("toy-triple", Triple)


def test_a_criterion_may_score_layers_together(registries):
    class Joint(Criterion):
        """Every unit of every layer scored by its rank among all the layers' units."""

        def _score_layers(self, model, layers, x, y, seed):
            sizes = [dict(model.named_modules())[name].out_channels for name in layers]
            ranks = np.arange(sum(sizes), dtype=float)
            return dict(zip(layers, np.split(ranks, np.cumsum(sizes)[:-1]), strict=True))

    register_criterion("toy-joint", Joint)
    scores = get_criterion("toy-joint").score(_lenet(), ["conv1", "conv2"], _data())
    np.testing.assert_array_equal(scores["conv2"], np.arange(20, 70))

    class Forgetful(Joint):
        def _score_layers(self, model, layers, x, y, seed):
            return {}

    with pytest.raises(RuntimeError, match="gave no scores for \\['conv1'\\]"):
        Forgetful().score(_lenet(), ["conv1"], _data())


@pytest.mark.parametrize(
    "name,options,needle",
    [
        ("toy-index", {"factr": 2}, "'toy-index' has no option 'factr'; its options: factor"),
        ("toy-index", {"factor": "2"}, "'toy-index': option 'factor' must be float, got '2'"),
        ("weight-l1", {"budget": 10}, "'weight-l1' has no option 'budget'; its options: none"),
        ("weight-l2", {"p": 1}, "criterion 'weight-l2' has no option 'p'"),
        ("taylor", {"batch_size": 1.5}, "option 'batch_size' must be int, got 1.5"),
        ("lrp", {"canonize": "yes"}, "option 'canonize' must be bool, got 'yes'"),
        ("shapley-permutation", {"budget": "many"}, "option 'budget' must be int or None"),
        ("shapley-permutation", {"antithetc": True}, "its options: budget, metric, batch_size, "
         "compensate, antithetic, control, truncation, patience"),
        ("loo", {"metric": "f1"}, "unknown metric 'f1'"),
    ],
)  # fmt: skip
def test_options_are_checked_when_built(registries, name, options, needle):
    register_criterion("toy-index", IndexCriterion)
    with pytest.raises(ValueError) as err:
        get_criterion(name, **options)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_options_are_declared_once():
    # the help text and the checks come from the same declaration
    described = CRITERIA["shapley-partial"].describe()
    assert [line.split(" ")[0] for line in described.splitlines()] == [
        "budget",
        "metric",
        "batch_size",
        "compensate",
        "k",
    ]
    assert "lrp" in CRITERIA and "composite (str" in CRITERIA["lrp"].describe()
    assert CRITERIA["weight-l1"].describe() == ""


def test_a_new_estimator_is_a_criterion(registries):
    assert "shapley-toyloo" not in CRITERIA
    register_estimator(ScaledLoo)
    assert "shapley-toyloo" in CRITERIA
    crit = get_criterion("shapley-toyloo", scale=2.0, metric="margin")
    assert isinstance(crit, ShapleyCriterion) and crit.name == "shapley-toyloo"
    model, data = _lenet(), _data()
    toy = crit.score(model, ["conv1", "conv2"], data, seed=1)
    loo = get_criterion("loo", metric="margin").score(model, ["conv1", "conv2"], data, seed=1)
    for layer in ("conv1", "conv2"):
        np.testing.assert_allclose(toy[layer], 2.0 * loo[layer], rtol=1e-12, atol=1e-15)
    assert crit.estimates["conv2"].info == {"scale": 2.0}
    assert crit.last_estimate is crit.estimates["conv2"]
    with pytest.raises(ValueError, match="option 'scale' must be float, got 'x'"):
        get_criterion("shapley-toyloo", scale="x")
    with pytest.raises(ValueError, match="scale must be > 0"):
        get_criterion("shapley-toyloo", scale=-1.0)


@dataclass
class _Clashing:
    budget: int = option(3, "clashes with the game's budget")


def test_estimator_options_may_not_shadow_the_games(registries):
    class Clash(ScaledLoo):
        name = "toy-clash"
        Options = _Clashing

    register_estimator(Clash)
    with pytest.raises(ValueError, match="estimator 'toy-clash' declares 'budget'"):
        get_criterion("shapley-toy-clash")


def test_criteria_pickle_with_their_options():
    # plain, picklable objects: what another process needs to score the same way
    import pickle

    for name, options in [("shapley-permutation", {"budget": 90, "truncation": 0.1}),
                          ("lrp", {"composite": "epsilon"}), ("taylor-signed", {})]:  # fmt: skip
        crit = get_criterion(name, **options)
        copy = pickle.loads(pickle.dumps(crit))
        assert type(copy) is type(crit) and copy.name == name and copy.options == crit.options


def test_positional_options_follow_the_declaration():
    from shapprune.criteria.classic import TaylorCriterion

    crit = TaylorCriterion(True, 8)
    assert crit.signed is True and crit.batch_size == 8 and crit.name == "taylor-signed"
    with pytest.raises(TypeError, match="at most 2 positional options"):
        TaylorCriterion(True, 8, 3)
    with pytest.raises(TypeError, match="option 'signed' given twice"):
        TaylorCriterion(True, signed=False)
