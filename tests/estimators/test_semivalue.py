"""Semivalues: the special cases (Shapley, Banzhaf), the axioms, the sampler against exact."""

from itertools import combinations

import numpy as np
import pytest

from shapprune.estimators.registry import estimate
from shapprune.estimators.semivalue import size_weights
from shapprune.game.synthetic import (
    AdditiveGame,
    GloveGame,
    TableGame,
    UnanimityGame,
    WeightedVotingGame,
)

WEIGHTS = {
    "shapley": {"weights": "shapley"},
    "banzhaf": {"weights": "banzhaf"},
    "beta(4,1)": {"weights": "beta", "alpha": 4.0, "beta": 1.0},
    "beta(1,3)": {"weights": "beta", "alpha": 1.0, "beta": 3.0},
    "beta around 0.7": {"weights": "beta", "kept": 0.7, "width": 0.15},
    "window": {"weights": "window", "kept": 0.5, "width": 0.2},
}


def _table_game(n: int, seed: int) -> TableGame:
    table = np.random.default_rng(seed).normal(size=2**n)
    return TableGame(n, lambda S: table[sum(1 << i for i in S)])


def _banzhaf_brute_force(game: TableGame) -> np.ndarray:
    n = game.n_players
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for s in range(n):
            for S in combinations(others, s):
                phi[i] += game.fn(frozenset(S) | {i}) - game.fn(frozenset(S))
    return phi / 2 ** (n - 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_shapley_and_beta_one_one_are_the_exact_shapley_value(seed):
    game = _table_game(6, seed)
    shapley = estimate(game, "exact").values
    for options in ({"weights": "shapley"}, {"weights": "beta", "alpha": 1.0, "beta": 1.0}):
        got = estimate(game, "semivalue", exact=True, **options).values
        np.testing.assert_allclose(got, shapley, atol=1e-12)
    # a window as wide as the game is Shapley too
    wide = estimate(game, "semivalue", exact=True, weights="window", kept=0.5, width=1.0)
    np.testing.assert_allclose(wide.values, shapley, atol=1e-12)
    np.testing.assert_allclose(size_weights(6, "beta", 1.0, 1.0), np.full(6, 1 / 6), atol=1e-14)


def test_banzhaf_matches_brute_force():
    game = _table_game(6, 2)
    got = estimate(game, "semivalue", exact=True, weights="banzhaf").values
    np.testing.assert_allclose(got, _banzhaf_brute_force(game), atol=1e-12)
    assert not np.allclose(got, estimate(game, "exact").values, atol=1e-3)  # not Shapley


def test_closed_forms_on_known_games():
    # additive game: every semivalue is the weight (the size weights sum to one)
    additive = AdditiveGame([0.5, -1.0, 2.0, 0.0, 3.0], constant=4.0)
    for options in WEIGHTS.values():
        got = estimate(additive, "semivalue", exact=True, **options).values
        np.testing.assert_allclose(got, additive.weights, atol=1e-12)
    # unanimity of T: the Banzhaf value of a member is 2^-(|T|-1), and 0 for the others
    unanimity = UnanimityGame(7, [0, 2, 5])
    got = estimate(unanimity, "semivalue", exact=True, weights="banzhaf").values
    np.testing.assert_allclose(got, [0.25, 0, 0.25, 0, 0, 0.25, 0], atol=1e-12)


def test_kept_centres_the_weights():
    n = 41
    s = np.arange(n) / (n - 1)
    beta = size_weights(n, "beta", kept=0.7, width=0.1)
    assert (beta * s).sum() == pytest.approx(0.7, abs=1e-9)
    # width is the spread of the kept fraction (plus binomial noise, small for many players)
    big = size_weights(401, "beta", kept=0.7, width=0.1)
    spread = np.sqrt((big * (np.arange(401) / 400 - 0.7) ** 2).sum())
    assert spread == pytest.approx(0.1, abs=0.005)
    window = size_weights(n, "window", kept=0.25, width=0.1)
    assert set(np.flatnonzero(window)) == set(range(6, 15))  # sizes 10 +- 4 of 40
    np.testing.assert_allclose(window[window > 0], 1 / 9)
    # a window narrower than one size still takes the nearest size
    assert np.flatnonzero(size_weights(n, "window", kept=0.26, width=0.0)).tolist() == [10]


@pytest.mark.parametrize("name", WEIGHTS)
@pytest.mark.parametrize("exact", [True, False])
def test_axioms_symmetry_null_player_linearity(name, exact):
    options = {**WEIGHTS[name], "exact": exact}
    budget = None if exact else 3_000
    glove = GloveGame(3, 4)  # players 0-2 are interchangeable, and so are 3-6
    values = estimate(glove, "semivalue", budget=budget, seed=0, **options).values
    tol = 1e-12 if exact else 0.1  # the sampler: symmetric in expectation only
    assert np.ptp(values[:3]) <= tol and np.ptp(values[3:]) <= tol
    unanimity = UnanimityGame(7, [0, 1, 2])  # 3..6 are null players, for the sampler too
    values = estimate(unanimity, "semivalue", budget=budget, seed=0, **options).values
    assert np.all(values[3:] == 0) and np.all(values[:3] > 0)
    # linear in the game, exactly (the sampler draws its coalitions from the seed alone)
    a, b = _table_game(6, 3), _table_game(6, 4)
    both = TableGame(6, lambda S: 2 * a.fn(S) - 3 * b.fn(S))
    va, vb, vab = (estimate(g, "semivalue", budget=budget, seed=5, **options) for g in (a, b, both))
    np.testing.assert_allclose(vab.values, 2 * va.values - 3 * vb.values, atol=1e-9)


@pytest.mark.parametrize("name", ["shapley", "banzhaf", "window"])
def test_efficiency_only_for_shapley(name):
    game = WeightedVotingGame([6, 4, 3, 2, 2, 1, 1, 1], quota=11)
    total = estimate(game, "semivalue", exact=True, **WEIGHTS[name]).values.sum()
    if name == "shapley":
        assert total == pytest.approx(1.0, abs=1e-12)
    else:
        assert abs(total - 1.0) > 0.1


@pytest.mark.parametrize("name", WEIGHTS)
def test_sampler_converges_to_the_exact_values(name):
    game = WeightedVotingGame([6, 4, 3, 2, 2, 1, 1, 1], quota=11)
    truth = estimate(game, "semivalue", exact=True, **WEIGHTS[name]).values
    errors = {}
    for budget in (200, 2_000, 20_000):
        runs = [estimate(game, "semivalue", budget, seed=s, **WEIGHTS[name]) for s in range(5)]
        errors[budget] = np.mean([np.sqrt(np.mean((r.values - truth) ** 2)) for r in runs])
        assert all(r.n_evals <= budget for r in runs)
    assert errors[20_000] < errors[2_000] < errors[200]
    assert errors[20_000] < 0.01
    assert np.corrcoef(runs[0].values, truth)[0, 1] > 0.99


def test_stderr_describes_the_error():
    game = _table_game(7, 0)  # a game with no structure at all
    for options in (WEIGHTS["banzhaf"], WEIGHTS["window"]):
        truth = estimate(game, "semivalue", exact=True, **options).values
        z = []
        for seed in range(20):
            est = estimate(game, "semivalue", budget=400, seed=seed, **options)
            z.append((est.values - truth) / np.maximum(est.stderr, 1e-12))
        z = np.concatenate(z)
        assert 0.5 < np.std(z) < 1.6 and np.mean(np.abs(z) > 4) < 0.02


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"weights": "magic"}, "unknown weights 'magic'; choose one of: shapley"),
        ({"weights": "window"}, "window weights need kept"),
        ({"weights": "shapley", "alpha": 2.0}, "alpha must be > 0 and goes with weights='beta'"),
        ({"weights": "beta", "beta": -1.0}, "beta must be > 0"),
        ({"weights": "banzhaf", "kept": 0.5}, "kept centres window or beta weights"),
        ({"weights": "window", "kept": 1.5}, "kept must be a fraction in [0, 1]"),
        ({"weights": "beta", "kept": 0.9, "width": 0.4}, "need 0 < width < 0.300"),
        ({"weights": "beta", "kept": 0.5, "alpha": 2.0}, "either alpha/beta or kept"),
        ({"weights": "window", "kept": 0.5, "width": -0.1}, "width must be >= 0"),
        ({"exact": True}, "refused above 1048576: drop exact"),
    ],
)
def test_bad_options_are_one_line_errors(options, needle):
    with pytest.raises(ValueError, match=None) as info:
        estimate(UnanimityGame(30, [0]), "semivalue", **options)
    message = str(info.value)
    assert needle in message and "\n" not in message
