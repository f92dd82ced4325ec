"""Estimators against closed-form Shapley values, and the Shapley axioms."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shapprune.estimators.registry import METHODS, estimate
from shapprune.game.synthetic import (
    AdditiveGame,
    GloveGame,
    TableGame,
    UnanimityGame,
    WeightedVotingGame,
)

GAMES = {
    "unanimity": lambda: UnanimityGame(7, [0, 2, 5]),
    "glove": lambda: GloveGame(3, 5),
    "voting": lambda: WeightedVotingGame([6, 4, 3, 2, 2, 1, 1, 1], quota=11),
}
APPROXIMATE = ["permutation", "kernel"]


def rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


@pytest.mark.parametrize("name", GAMES)
def test_exact_matches_closed_form(name):
    game = GAMES[name]()
    est = estimate(game, "exact")
    np.testing.assert_allclose(est.values, game.shapley(), atol=1e-12)
    assert est.n_evals == 2**game.n_players
    assert np.all(est.stderr == 0)


@pytest.mark.parametrize("name", GAMES)
@pytest.mark.parametrize("method", APPROXIMATE)
def test_sampling_converges_to_exact(name, method):
    game = GAMES[name]()
    truth = game.shapley()
    errors = {}
    for budget in (100, 1_000, 20_000):
        errs = [rmse(estimate(game, method, budget, seed=s).values, truth) for s in range(5)]
        errors[budget] = np.mean(errs)
    assert errors[20_000] < errors[1_000] < errors[100]
    assert errors[20_000] < 0.02


@pytest.mark.parametrize("name", GAMES)
def test_partial_is_exact_at_full_depth_and_loo_matches_definition(name):
    game = GAMES[name]()
    n = game.n_players
    full_depth = estimate(game, "partial", k=(n + 1) // 2)
    np.testing.assert_allclose(full_depth.values, game.shapley(), atol=1e-12)
    errors = [
        rmse(estimate(game, "partial", k=k).values, game.shapley()) for k in range(1, (n + 1) // 2)
    ]
    assert errors[-1] <= errors[0] + 1e-12
    loo = estimate(game, "loo")
    full = np.ones(n, dtype=bool)
    for i in range(n):
        without = full.copy()
        without[i] = False
        expected = float(game.value(full)) - float(game.value(without))
        assert loo.values[i] == pytest.approx(expected)
    assert loo.n_evals == n + 1


def test_partial_depth_one_is_mean_of_first_and_last_marginal():
    game = GloveGame(2, 3)
    n = game.n_players
    est = estimate(game, "partial", k=1)
    for i in range(n):
        alone, rest = np.zeros(n, bool), np.ones(n, bool)
        alone[i], rest[i] = True, False
        first = float(game.value(alone)) - float(game.value(np.zeros(n, bool)))
        last = float(game.value(np.ones(n, bool))) - float(game.value(rest))
        assert est.values[i] == pytest.approx((first + last) / 2)


@pytest.mark.parametrize("method", ["exact", "permutation", "kernel"])
def test_efficiency(method):
    game = WeightedVotingGame([6, 4, 3, 2, 2, 1, 1, 1], quota=11)
    est = estimate(game, method, budget=None if method == "exact" else 3_000, seed=1)
    assert est.values.sum() == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    table=st.lists(st.floats(-5, 5, allow_nan=False), min_size=2**5, max_size=2**5),
    seed=st.integers(0, 1000),
)
def test_efficiency_holds_for_arbitrary_games(table, seed):
    game = TableGame(5, lambda S: table[sum(1 << i for i in S)])
    total = table[31] - table[0]
    for method in ("exact", "permutation"):
        est = estimate(game, method, budget=None if method == "exact" else 200, seed=seed)
        assert est.values.sum() == pytest.approx(total, abs=1e-9)
    np.testing.assert_allclose(estimate(game, "exact").values, game.shapley(), atol=1e-9)


@pytest.mark.parametrize("method", ["exact", "partial", "loo"])
def test_symmetric_players_get_equal_values(method):
    game = GloveGame(3, 4)  # players 0-2 are interchangeable, and so are 3-6
    values = estimate(game, method).values
    assert np.ptp(values[:3]) < 1e-12 and np.ptp(values[3:]) < 1e-12


def test_symmetric_players_equal_in_expectation_for_sampling():
    game = GloveGame(3, 4)
    for method in APPROXIMATE:
        est = estimate(game, method, budget=20_000, seed=3)
        assert np.ptp(est.values[:3]) < 0.03 and np.ptp(est.values[3:]) < 0.03


@pytest.mark.parametrize("method", METHODS)
def test_null_player_gets_zero(method):
    game = UnanimityGame(8, [0, 1, 2])  # players 3..7 never matter
    budget = {"exact": None, "loo": None, "partial": None}.get(method, 5_000)
    values = estimate(game, method, budget=budget, seed=0).values
    tol = 0.02 if method == "kernel" else 1e-12
    assert np.all(np.abs(values[3:]) <= tol)


@pytest.mark.parametrize("method", METHODS)
def test_budget_is_respected(method):
    game = UnanimityGame(9, [0, 4])
    for budget in (600, 1_000, 2_000):
        if method == "exact":
            budget = 2**9
        est = estimate(game, method, budget=budget, seed=0)
        assert 0 < est.n_evals <= budget
        assert game.n_evals >= est.n_evals  # the game saw every counted evaluation


@pytest.mark.parametrize("method", APPROXIMATE)
def test_same_seed_same_values_other_seed_other_values(method):
    game = WeightedVotingGame([6, 4, 3, 2, 2, 1, 1, 1], quota=11)
    a = estimate(game, method, budget=500, seed=7)
    b = estimate(game, method, budget=500, seed=7)
    c = estimate(game, method, budget=500, seed=8)
    assert np.array_equal(a.values, b.values) and np.array_equal(a.stderr, b.stderr)
    assert not np.array_equal(a.values, c.values)


@pytest.mark.parametrize("method", APPROXIMATE)
def test_stderr_describes_the_error(method):
    table = np.random.default_rng(0).normal(size=2**7)  # a game with no structure at all
    game = TableGame(7, lambda S: table[sum(1 << i for i in S)])
    truth = game.shapley()
    z = []
    for seed in range(20):
        est = estimate(game, method, budget=400, seed=seed)
        z.append((est.values - truth) / np.maximum(est.stderr, 1e-12))
    z = np.concatenate(z)
    # standardised errors: about unit spread, almost never beyond 4
    assert 0.5 < np.std(z) < 1.6
    assert np.mean(np.abs(z) > 4) < 0.02


def test_antithetic_halves_error_on_additive_structure():
    # Antithetic pairs make every additive game exact: the pair's marginals average out.
    game = AdditiveGame(np.linspace(-1, 1, 12))
    anti = estimate(game, "permutation", budget=200, seed=0)
    np.testing.assert_allclose(anti.values, game.shapley(), atol=1e-12)


def test_truncation_saves_evaluations_without_changing_a_unanimity_game():
    game = UnanimityGame(20, [0, 1])
    plain = estimate(game, "permutation", budget=4_000, seed=0)
    truncated = estimate(game, "permutation", budget=4_000, seed=0, truncation=1e-9)
    assert truncated.info["skipped_steps"] > 0
    np.testing.assert_allclose(truncated.values, game.shapley(), atol=1e-12)
    assert truncated.info["samples"] > plain.info["samples"]  # savings buy more walks
    zero_tol = estimate(game, "permutation", budget=4_000, seed=0, truncation=0.0)
    assert np.array_equal(zero_tol.values, plain.values)


def test_ranking_orders_least_valuable_first():
    est = estimate(AdditiveGame([3.0, -1.0, 2.0]), "exact")
    assert est.ranking.tolist() == [1, 2, 0]
    assert est.to_dict()["ranking"] == [1, 2, 0]


def test_errors_are_clear():
    with pytest.raises(ValueError, match="refused above 20 players"):
        estimate(UnanimityGame(21, [0]), "exact")
    with pytest.raises(ValueError, match="budget 10 is too small for permutation"):
        estimate(UnanimityGame(8, [0]), "permutation", budget=10)
    with pytest.raises(ValueError, match="budget 3 is too small for kernel"):
        estimate(UnanimityGame(8, [0]), "kernel", budget=3)
    with pytest.raises(ValueError, match="unknown method 'magic'; choose one of: exact"):
        estimate(UnanimityGame(3, [0]), "magic")
    with pytest.raises(ValueError, match="depth k >= 1"):
        estimate(UnanimityGame(3, [0]), "partial", k=0)


def _pruning_like_game(n: int = 8) -> TableGame:
    """Loss-like payoff: removing the last few units costs far more than the first few."""
    w = np.random.default_rng(3).uniform(0.5, 1.5, size=n)
    return TableGame(n, lambda S: -np.exp(-3 * sum(w[i] for i in S) / w.sum()))


def test_position_control_variate_cuts_the_error_and_stays_unbiased():
    game = _pruning_like_game()
    truth = game.shapley()

    def errors(**options):
        runs = [estimate(game, "permutation", budget=300, seed=s, **options) for s in range(30)]
        return np.array([r.values for r in runs]) - truth

    with_control, without = errors(), errors(control=False)
    rms = lambda e: np.sqrt(np.mean(e**2))  # noqa: E731
    assert rms(with_control) < 0.6 * rms(without)
    # unbiased: the mean error over seeds is within a few standard errors of zero
    mean, se = with_control.mean(axis=0), with_control.std(axis=0, ddof=1) / np.sqrt(30)
    assert np.all(np.abs(mean) < 4 * se + 1e-12)


def test_control_variate_keeps_the_axioms_exact():
    # a null player (2) stays exactly 0 and the values sum to v(N) - v(empty)
    w = [1.0, 2.0, 0.0, 0.5, 1.5]
    game = TableGame(5, lambda S: -np.exp(-sum(w[i] for i in S)))
    est = estimate(game, "permutation", budget=200, seed=1)
    assert est.info["control"] is True
    assert est.values[2] == 0.0
    full, empty = game.value(np.ones(5, bool)), game.value(np.zeros(5, bool))
    assert est.values.sum() == pytest.approx(float(full - empty), abs=1e-12)
