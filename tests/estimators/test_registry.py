"""The estimator registry: built-ins declared once, a toy registered from test code alone,
options checked against declarations, set-valued answers."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
from toys import ScaledLoo

import shapprune
from shapprune import Answer, Estimate, Estimator, option
from shapprune.estimators import registry
from shapprune.estimators.loo import loo
from shapprune.estimators.partial import partial_cost
from shapprune.estimators.registry import (
    ESTIMATORS,
    default_budget,
    estimate,
    get_estimator,
    register_estimator,
)
from shapprune.evaluation.experiments import cost_benefit
from shapprune.game.synthetic import WeightedVotingGame
from shapprune.options import parse_options


def _game():
    return WeightedVotingGame([6, 4, 3, 2, 2, 1, 1, 1], quota=11)


def test_builtins_are_registered_with_their_budgets_and_flags():
    assert list(ESTIMATORS)[:5] == ["exact", "permutation", "kernel", "partial", "loo"]
    assert {n for n, e in ESTIMATORS.items() if e.deterministic} == {"exact", "partial", "loo"}
    # the budgets of the closed list this registry replaced
    assert default_budget("exact", 5) == 32
    assert default_budget("permutation", 10) == default_budget("kernel", 10) == 1000
    assert default_budget("permutation", 40) == 4000
    assert default_budget("partial", 6) == partial_cost(6, 1) == 1 + 6 + 6 + 1
    assert default_budget("loo", 7) == 8
    assert default_budget("partial", 6, k=2) == partial_cost(6, 2)


def test_toy_estimator_through_estimate(registries):
    register_estimator(ScaledLoo)
    game = _game()
    toy = estimate(game, "toyloo", scale=3.0)
    reference = estimate(game, "loo")
    np.testing.assert_allclose(toy.values, 3.0 * reference.values, rtol=1e-12, atol=0)
    assert toy.method == "toyloo" and toy.n_evals == toy.budget == 9
    assert toy.info == {"scale": 3.0}
    assert "toyloo" in registry.METHODS and "toyloo" in shapprune.METHODS
    assert default_budget("toyloo", 8) == 9
    with pytest.raises(ValueError, match="budget 5 is too small for toyloo on 8 players"):
        estimate(game, "toyloo", budget=5)
    # deterministic: an experiment runs it with the first seed only
    rows = cost_benefit(game, ["toyloo"], [9], [0, 1, 2], reference.values)
    assert [r["seed"] for r in rows] == [0]


def test_registering_twice_needs_replace(registries):
    register_estimator(ScaledLoo)
    with pytest.raises(ValueError, match="'toyloo' is already registered; pass replace=True"):
        register_estimator(ScaledLoo)
    register_estimator(ScaledLoo(), replace=True)
    with pytest.raises(TypeError, match="not an Estimator"):
        register_estimator(object())


@pytest.mark.parametrize(
    "method,options,needle",
    [
        ("permutation", {"antithetc": True}, "method 'permutation' has no option 'antithetc'; "
         "its options: antithetic, control, truncation, patience"),
        ("permutation", {"patience": "3"}, "option 'patience' must be int, got '3'"),
        ("permutation", {"truncation": True}, "option 'truncation' must be float or None"),
        ("permutation", {"truncation": -1.0}, "truncation must be a tolerance >= 0"),
        ("exact", {"k": 2}, "method 'exact' has no option 'k'; its options: none"),
        ("partial", {"k": 0}, "partial needs depth k >= 1, got k=0"),
        ("toyloo", {"scale": "big"}, "option 'scale' must be float, got 'big'"),
        ("toyloo", {"scale": 0.0}, "scale must be > 0"),
        ("magic", {}, "unknown method 'magic'; choose one of: exact, permutation"),
    ],
)  # fmt: skip
def test_bad_options_are_one_line_errors(registries, method, options, needle):
    register_estimator(ScaledLoo)
    with pytest.raises(ValueError) as err:
        estimate(_game(), method, **options)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_declared_numeric_types():
    # a float where an int is declared is refused; an int where a float is declared is fine
    with pytest.raises(ValueError, match="option 'k' must be int or None, got 2.0"):
        estimate(_game(), "partial", k=2.0)
    est = estimate(_game(), "permutation", budget=200, truncation=0)
    assert est.info["truncation"] == 0


def test_parse_options_gives_declared_types(registries):
    register_estimator(ScaledLoo)
    decl = get_estimator("permutation").Options
    got = parse_options(decl, ["antithetic=false", "truncation=none", "patience=5"], "p")
    assert got == {"antithetic": False, "truncation": None, "patience": 5}
    assert type(got["patience"]) is int
    assert parse_options(ScaledLoo.Options, ["scale=2"], "t") == {"scale": 2.0}
    with pytest.raises(ValueError, match="p: option 'patience' must be int, got 'x'"):
        parse_options(decl, ["patience=x"], "p")
    with pytest.raises(ValueError, match="option 'patience' must read key=value"):
        parse_options(decl, ["patience"], "p")


def test_set_valued_estimate_ranks_the_selected_first():
    values = np.array([0.5, 0.1, 0.3, 0.2, 0.4])
    est = Estimate(values, np.zeros(5), 10, 0.1, "toy", 10, 0, selected=np.array([4, 0]))
    # the selected (by value: 4 then 0), then the others by value: 1, 3, 2
    assert est.ranking.tolist() == [4, 0, 1, 3, 2]
    plain = Estimate(values, np.zeros(5), 10, 0.1, "toy", 10, 0)
    assert plain.ranking.tolist() == [1, 3, 2, 4, 0]
    record = json.loads(json.dumps(est.to_dict()))
    assert record["selected"] == [4, 0] and record["ranking"] == [4, 0, 1, 3, 2]
    assert record["confidence"] is None and record["intervals"] is None
    assert plain.to_dict()["selected"] is None


@dataclass
class BottomOptions:
    k: int = option(2, "how many lowest players to settle")


class BottomK(Estimator):
    """Settles the k players with the lowest leave-one-out value, 'with confidence 0.9'."""

    name = "toy-bottom-k"
    Options = BottomOptions

    def min_budget(self, n, options):
        return n + 1

    def __call__(self, game, rng, options):
        values = loo(game)[0]
        # a bandit would settle these without ordering them: list them in reverse on purpose
        chosen = np.argsort(values, kind="stable")[: options.k][::-1]
        intervals = np.stack([values - 0.1, values + 0.1], axis=1)
        return Answer(values, None, {}, selected=chosen, confidence=0.9, intervals=intervals)


def test_set_valued_estimator_through_estimate(registries):
    register_estimator(BottomK)
    game = _game()
    est = estimate(game, "toy-bottom-k", k=3)
    reference = estimate(game, "loo")
    assert sorted(est.selected.tolist()) == sorted(reference.ranking[:3].tolist())
    assert est.ranking[:3].tolist() == reference.ranking[:3].tolist()  # selected, by value
    assert sorted(est.ranking.tolist()) == list(range(8))
    assert est.confidence == 0.9 and est.intervals.shape == (8, 2)
    assert np.array_equal(est.stderr, np.zeros(8))
    record = json.loads(json.dumps(est.to_dict()))
    assert record["confidence"] == 0.9 and len(record["intervals"]) == 8


def test_selected_must_be_distinct_players(registries):
    class Broken(BottomK):
        name = "toy-broken"

        def __call__(self, game, rng, options):
            return Answer(np.zeros(game.n), selected=np.array([1, 1]))

    register_estimator(Broken)
    with pytest.raises(RuntimeError, match="not distinct players"):
        estimate(_game(), "toy-broken")


def test_registries_are_restored_after_each_test():
    # runs after the tests above, which registered toys under the fixture
    assert not {"toyloo", "toy-bottom-k", "toy-broken"} & set(ESTIMATORS)
    assert "toyloo" not in shapprune.METHODS
