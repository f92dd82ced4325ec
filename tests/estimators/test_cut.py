"""The cut estimator: exact where the game allows it, the true k lowest (or highest) of games
with a planted gap, ties at the cut reported, a prior that helps when right and does no harm
when wrong, the budget kept, the seed's answer fixed, bad options refused."""

import numpy as np
import pytest
import torch
from helpers import SizeGame, assert_settled_bottom_k
from torch import nn

from shapprune.estimators.catalog import get_estimator
from shapprune.estimators.registry import ESTIMATORS, default_budget, estimate
from shapprune.game.network_game import NetworkGame
from shapprune.game.synthetic import AdditiveGame, WeightedVotingGame


class NoisySizeGame(SizeGame):
    """SizeGame plus unanimity games on random triples (v += c_T when all of T are in):
    marginals vary with the coalition, not only with its size, and antithetic pairs are
    not exact as they are for games of degree two; each triple's c_T splits evenly among
    its members, so the Shapley values stay in closed form."""

    def __init__(self, weights, c: float = 3.0, seed: int = 0, scale: float = 0.1) -> None:
        super().__init__(weights, c)
        rng = np.random.default_rng(seed)
        self.triples = np.stack([rng.choice(self.n_players, 3, replace=False) for _ in
                                 range(3 * self.n_players)])  # fmt: skip
        self.coef = rng.normal(0, scale, len(self.triples))

    def value(self, masks: torch.Tensor) -> torch.Tensor:
        z = masks.reshape(-1, self.n_players).numpy()
        together = z[:, self.triples].all(axis=2).astype(np.float64)  # (m, triples)
        return super().value(masks) + torch.from_numpy(together @ self.coef)

    def shapley(self) -> np.ndarray:
        share = np.zeros(self.n_players)
        np.add.at(share, self.triples.ravel(), np.repeat(self.coef / 3, 3))
        return super().shapley() + share


def _gap_game(n: int = 40, seed: int = 0) -> NoisySizeGame:
    """Values spread evenly over [0, 1] (plus c / n): a gap of 1 / (n - 1) between
    neighbours, whatever the triples add."""
    w = np.random.default_rng(seed).permutation(np.linspace(0.0, 1.0, n))
    game = NoisySizeGame(w, seed=seed)
    game.w = w - (game.shapley() - w - game.c / n)
    return game


def test_registered_with_its_options_and_the_cut_filled_by_a_target():
    assert "cut" in ESTIMATORS
    est = get_estimator("cut")
    assert est.fill_cut({}, 0.3) == {"k": 0.3} and est.fill_cut({"k": 4}, 0.3) == {"k": 4}
    assert default_budget("cut", 20) == default_budget("permutation", 20)


def test_an_additive_game_is_exact_and_settles_after_the_warm_up():
    w = np.array([0.3, -1.0, 2.0, 0.5, 0.1, 1.5, -0.2, 0.8])
    est = estimate(AdditiveGame(w, constant=4.0), "cut", budget=5_000, seed=0, k=3)
    np.testing.assert_allclose(est.values, w, atol=1e-12)
    assert sorted(est.selected.tolist()) == [1, 4, 6]
    assert est.info["settled"] and est.confidence == 1.0
    # the warm-up only (the memo answers the coalitions that repeat)
    assert est.n_evals <= get_estimator("cut").min_budget(8, est_options(k=3))
    assert est.info["pairs_whole"] == 3 and est.info["pairs_partial"] == 0


def est_options(**values):
    from shapprune.estimators.catalog import estimator_options

    return estimator_options("cut", values)


@pytest.mark.parametrize("k", [4, 10, 20, 0.25])
def test_settles_the_true_bottom_k_of_a_game_with_a_planted_gap(k):
    game = _gap_game()
    est = estimate(game, "cut", budget=60_000, seed=0, k=k)
    assert_settled_bottom_k(est, game, k, budget=60_000)


def test_values_match_the_exact_shapley_values_within_their_intervals():
    game = _gap_game(24, seed=3)
    est = estimate(game, "cut", budget=60_000, seed=1, k=6, tolerance=0.0, delta=0.01)
    truth = game.shapley()
    lo, hi = est.intervals.T
    assert np.mean((lo <= truth) & (truth <= hi)) >= 0.95
    assert np.max(np.abs(est.values - truth)) < 0.1


def test_settled_players_stop_costing_evaluations():
    game = _gap_game()
    est = estimate(game, "cut", budget=60_000, seed=0, k=10)
    low, _, high = est.info["samples"]
    assert est.info["pairs_partial"] > 0 and low < high  # far players: few samples
    assert est.info["settled"]


def test_top_k():
    game = _gap_game(20, seed=4)
    top = estimate(game, "cut", budget=60_000, seed=1, k=3, top=True)
    assert sorted(top.selected.tolist()) == sorted(np.argsort(game.shapley())[-3:].tolist())
    assert top.info["settled"] and top.ranking[:3].tolist() == sorted(
        top.selected.tolist(), key=lambda i: top.values[i]
    )


def test_rare_pivots_do_not_settle_on_zero_width_intervals():
    # a voting game: 0/1 marginals, rare for the weight-1 players (three equal samples
    # would give a zero variance): the pooled variance keeps their intervals open
    game = WeightedVotingGame([6, 4, 3, 2, 2, 1, 1, 1], quota=11)
    est = estimate(game, "cut", budget=5_000, seed=1, k=3)
    assert sorted(est.selected.tolist()) == [5, 6, 7]  # weight 1: tied among themselves
    assert est.info["samples"][2] > 3 and np.all(est.stderr > 0)


def test_a_tie_at_the_cut_is_reported_not_hidden():
    # players 3 and 4 have the same value, and the cut (k = 4) falls between them
    w = np.array([0.0, 0.1, 0.2, 0.5, 0.5, 0.8, 0.9, 1.0, 1.1, 1.2])
    game = NoisySizeGame(w, seed=1)
    game.w = w - (game.shapley() - w - game.c / len(w))
    est = estimate(game, "cut", budget=20_000, seed=0, k=4, tolerance=0.0)
    assert est.n_evals <= 20_000
    assert not est.info["settled"] and {3, 4} <= set(est.info["in_doubt_players"])
    assert est.confidence < est.info["target_confidence"] == pytest.approx(0.9)
    chosen = set(est.selected.tolist())
    assert {0, 1, 2} <= chosen and len(chosen & {3, 4}) == 1  # the best guess is still given
    # within the tolerance the tie is not worth separating: it settles
    settled = estimate(game, "cut", budget=20_000, seed=0, k=4, tolerance=0.5)
    assert settled.info["settled"] and settled.n_evals < 20_000


def test_a_right_prior_saves_evaluations_and_a_wrong_one_does_no_harm():
    game = _gap_game(40, seed=2)
    truth = game.shapley()
    plain = estimate(game, "cut", budget=60_000, seed=0, k=10)
    right = estimate(game, "cut", budget=60_000, seed=0, k=10, prior=tuple(truth))
    shuffled = tuple(np.random.default_rng(0).permutation(truth))  # says nothing
    wrong = estimate(game, "cut", budget=60_000, seed=0, k=10, prior=shuffled)
    best = sorted(np.argsort(truth)[:10].tolist())
    for est in (plain, right, wrong):
        assert est.info["settled"] and sorted(est.selected.tolist()) == best
    assert right.n_evals < plain.n_evals and right.info["prior_weight"] > 0
    assert wrong.info["prior_weight"] < 0.1


@pytest.mark.parametrize("budget", [236, 501, 3_001])
@pytest.mark.parametrize("options", [{}, {"focus": 0.5, "pairs": 1}, {"prior": "right"}])
def test_budget_is_never_exceeded(budget, options):
    game = _gap_game()
    if options.get("prior") == "right":
        options = {"prior": tuple(game.shapley())}
    est = estimate(game, "cut", budget=budget, seed=2, k=10, **options)
    assert est.n_evals <= budget and len(est.selected) == 10
    assert np.all(np.isfinite(est.values)) and np.all(np.isfinite(est.intervals))


def test_too_small_a_budget_is_refused():
    with pytest.raises(ValueError, match="needs at least 236 evaluations"):
        estimate(_gap_game(), "cut", budget=235, k=10)


def test_the_seed_fixes_the_answer():
    game = _gap_game()
    a = estimate(game, "cut", budget=3_000, seed=5, k=10)
    b = estimate(game, "cut", budget=3_000, seed=5, k=10)
    c = estimate(game, "cut", budget=3_000, seed=6, k=10)
    assert np.array_equal(a.values, b.values) and np.array_equal(a.selected, b.selected)
    assert a.n_evals == b.n_evals and a.info == b.info
    assert not np.array_equal(a.values, c.values)


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"k": 0}, "k must be a count >= 1 or a fraction in (0, 1), got 0"),
        ({"k": 12}, "k must leave players on both sides of the cut: k=12 of 12 players"),
        ({"delta": 1.5}, "delta must be a probability in (0, 1), got 1.5"),
        ({"tolerance": -1.0}, "tolerance must be >= 0"),
        ({"warmup": 2}, "warmup must be >= 3 pairs"),
        ({"pairs": 0}, "pairs must be >= 1"),
        ({"focus": 0.0}, "focus must be a fraction in (0, 1]"),
        ({"prior": (1.0, 2.0)}, "prior has 2 scores for 12 players"),
        ({"prior": (1.0, float("nan"))}, "prior must be one finite score per player"),
    ],
)
def test_bad_options_are_one_line_value_errors(options, needle):
    with pytest.raises(ValueError) as err:
        estimate(_gap_game(12), "cut", **{"k": 3, **options})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_progress_reports_the_players_in_doubt():
    seen = []
    estimate(_gap_game(12), "cut", budget=3_000, seed=0, k=3,
             progress=lambda d, b, s: seen.append(dict(s)))  # fmt: skip
    doubts = [s["in_doubt"] for s in seen if "in_doubt" in s]
    assert doubts[0] == 12 and doubts[-1] < 12


def test_on_a_network_game():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 10),
    ).eval()  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    game = NetworkGame(model, (x, y))
    est = estimate(game, "cut", budget=3_000, seed=0, k=0.3)
    k = round(0.3 * game.n_players)
    assert len(est.selected) == k and est.n_evals <= 3_000
    long = estimate(game, "permutation", budget=20_000, seed=1)
    assert len(set(est.selected.tolist()) & set(long.ranking[:k].tolist())) >= k - 2
