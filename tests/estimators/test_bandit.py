"""The bandit: the true bottom-k (or top-k) of games with known values, near-ties reported
rather than guessed, the budget kept, the seed's answer fixed, bad options refused."""

import numpy as np
import pytest
import torch
from helpers import SizeGame, assert_settled_bottom_k
from torch import nn

from shapprune.estimators.registry import default_budget, estimate
from shapprune.game.network_game import NetworkGame
from shapprune.game.synthetic import UnanimityGame, WeightedVotingGame


def _spread_game(n: int = 40, seed: int = 0) -> SizeGame:
    return SizeGame(np.random.default_rng(seed).permutation(np.linspace(0.0, 1.0, n)))


@pytest.mark.parametrize("k", [4, 10, 20, 0.25])
def test_settles_the_true_bottom_k(k):
    game = _spread_game()
    est = estimate(game, "bandit", budget=40_000, seed=0, k=k)
    assert_settled_bottom_k(est, game, k, budget=40_000)


def test_settled_players_stop_costing_evaluations():
    game = _spread_game()
    est = estimate(game, "bandit", budget=40_000, seed=0, k=10)
    low, median, high = est.info["samples"]
    assert est.info["skipped_steps"] > 0 and low < high  # far players: few samples
    plain = estimate(game, "permutation", budget=40_000, seed=0)
    assert est.n_evals < plain.n_evals / 2


def test_top_k_and_exact_known_values():
    game = WeightedVotingGame([6, 4, 3, 2, 2, 1, 1, 1], quota=11)
    top = estimate(game, "bandit", budget=20_000, seed=1, k=2, top=True)
    assert sorted(top.selected.tolist()) == [0, 1]
    assert top.info["settled"]
    bottom = estimate(game, "bandit", budget=20_000, seed=1, k=3)
    assert sorted(bottom.selected.tolist()) == [5, 6, 7]  # weight 1: tied among themselves
    # 0/1 marginals, rare for the weight-1 players: the range is the payoff's, never a
    # player's own (eight zeros in a row would settle a player with a zero-width interval)
    fooled = estimate(game, "bandit", budget=20_000, seed=1, k=3, player_range=True)
    assert fooled.info["samples"][0] < bottom.info["samples"][0]


def test_near_tie_at_the_cut_is_reported_not_hidden():
    # players 3 and 4 have the same value, and the cut (k = 4) falls between them
    w = np.array([0.0, 0.1, 0.2, 0.5, 0.5, 0.8, 0.9, 1.0, 1.1, 1.2])
    game = SizeGame(w)
    est = estimate(game, "bandit", budget=20_000, seed=0, k=4)
    assert est.n_evals <= 20_000
    assert not est.info["settled"] and est.info["in_doubt"] >= 2
    assert {3, 4} <= set(est.info["in_doubt_players"])
    assert est.confidence < est.info["target_confidence"] == pytest.approx(0.9)
    chosen = set(est.selected.tolist())
    assert {0, 1, 2} <= chosen and len(chosen & {3, 4}) == 1  # the best guess is still given


@pytest.mark.parametrize("budget", [80, 501, 3_001])
@pytest.mark.parametrize("truncation", [None, 0.05])
def test_budget_is_never_exceeded(budget, truncation):
    game = _spread_game()
    est = estimate(game, "bandit", budget=budget, seed=2, k=10, truncation=truncation)
    assert est.n_evals <= budget and len(est.selected) == 10
    assert np.all(np.isfinite(est.values)) and np.all(np.isfinite(est.intervals))


def test_the_seed_fixes_the_answer():
    game = _spread_game()
    a = estimate(game, "bandit", budget=3_000, seed=5, k=10)
    b = estimate(game, "bandit", budget=3_000, seed=5, k=10)
    c = estimate(game, "bandit", budget=3_000, seed=6, k=10)
    assert np.array_equal(a.values, b.values) and np.array_equal(a.selected, b.selected)
    assert a.n_evals == b.n_evals and a.info == b.info
    assert not np.array_equal(a.values, c.values)


def test_truncation_skips_steps_and_keeps_the_answer():
    game = UnanimityGame(20, [0, 1, 2])  # after removing a member nothing changes
    plain = estimate(game, "bandit", budget=20_000, seed=0, k=17)
    cut = estimate(game, "bandit", budget=20_000, seed=0, k=17, truncation=1e-9, patience=1)
    assert cut.info["truncated_walks"] > 0
    assert sorted(cut.selected.tolist()) == sorted(plain.selected.tolist()) == list(range(3, 20))
    # once one member is gone the walk stops: fewer evaluations per walk
    assert cut.n_evals / cut.info["walks"] < 0.8 * plain.n_evals / plain.info["walks"]


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"k": 0}, "k must be a count >= 1 or a fraction in (0, 1), got 0"),
        ({"k": 12}, "k must leave players on both sides of the cut: k=12 of 12 players"),
        ({"k": 40}, "k=40 of 12 players"),
        ({"k": 2.5}, "k must be a whole count or a fraction in (0, 1), got 2.5"),
        ({"delta": 0}, "delta must be a probability in (0, 1), got 0"),
        ({"delta": 1.5}, "delta must be a probability in (0, 1), got 1.5"),
        ({"walks": 0}, "walks must be >= 1"),
        ({"min_samples": 1}, "min_samples must be >= 2"),
        ({"k": "3"}, "option 'k' must be float"),
    ],
)
def test_bad_options_are_one_line_value_errors(options, needle):
    with pytest.raises(ValueError) as err:
        estimate(_spread_game(12), "bandit", **options)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_budget_and_progress_with_status():
    game = _spread_game(12)
    assert default_budget("bandit", 12) == default_budget("permutation", 12)
    seen, plain = [], []
    estimate(game, "bandit", budget=2_000, seed=0, k=3, progress=lambda d, b, s: seen.append(
        (d, b, dict(s))))  # fmt: skip
    estimate(game, "bandit", budget=2_000, seed=0, k=3, progress=lambda d, b: plain.append(d))
    assert [d for d, _, _ in seen] == plain and all(b == 2_000 for _, b, _ in seen)
    doubts = [s["in_doubt"] for _, _, s in seen if "in_doubt" in s]
    assert doubts[0] == 12 and doubts[-1] < 12  # players settle as the run goes


def _tiny_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 10),
    ).eval()  # fmt: skip


def _tiny_game() -> NetworkGame:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    return NetworkGame(_tiny_network(), (x, y))


def test_bandit_on_a_network_game():
    game = _tiny_game()
    n = game.n_players
    assert n == 6 + 8 + 12
    est = estimate(game, "bandit", budget=3_000, seed=0, k=0.3, walks=8)
    assert len(est.selected) == round(0.3 * n) and est.n_evals <= 3_000
    long = estimate(game, "permutation", budget=20_000, seed=1)
    overlap = len(set(est.selected.tolist()) & set(long.ranking[: len(est.selected)].tolist()))
    assert overlap >= len(est.selected) - 2  # agrees with a long plain run, up to near-ties
    scores = game.scores(est.values)
    assert [len(v) for v in scores.values()] == [6, 8, 12]


def test_truncation_works_on_the_network_game():
    game = _tiny_game()
    _, v_empty = game.value(torch.stack([torch.ones(26, dtype=bool), torch.zeros(26, dtype=bool)]))
    plain = estimate(game, "permutation", budget=2_000, seed=0)
    tol = 0.5 * abs(float(v_empty))
    cut = estimate(game, "permutation", budget=2_000, seed=0, truncation=tol)
    assert cut.info["skipped_steps"] > 0 and cut.info["samples"] > plain.info["samples"]
    assert np.all(np.isfinite(cut.values))
    bandit = estimate(game, "bandit", budget=2_000, seed=0, k=5, truncation=tol)
    assert bandit.info["truncated_walks"] > 0 and bandit.n_evals <= 2_000


def test_an_interrupted_bandit_resumes_to_the_same_answer(tmp_path):
    from shapprune.estimators.resume import Checkpoint, using_checkpoint

    path, identity = tmp_path / "bandit.checkpoint.json", {"command": "test", "seed": 3}
    reference = estimate(_tiny_game(), "bandit", budget=1_500, seed=3, k=5)
    seen = []

    def stop(done, budget):
        seen.append(done)
        if len(seen) == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), using_checkpoint(Checkpoint(path, identity)):
        estimate(_tiny_game(), "bandit", budget=1_500, seed=3, k=5, progress=stop)
    resumed = Checkpoint(path, identity)
    assert resumed.resumed
    got = estimate(_tiny_game(), "bandit", budget=1_500, seed=3, k=5, checkpoint=resumed)
    assert np.array_equal(got.values, reference.values)
    assert np.array_equal(got.selected, reference.selected) and got.info == reference.info
    assert got.n_evals == reference.n_evals and resumed.replayed > 0
