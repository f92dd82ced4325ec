"""The synthetic games' closed forms agree with brute force over all coalitions."""

import numpy as np
import pytest
import torch

from shapprune.game.synthetic import (
    AdditiveGame,
    GloveGame,
    TableGame,
    UnanimityGame,
    WeightedVotingGame,
)

GAMES = [
    AdditiveGame([1.0, -2.0, 0.5, 0.0, 3.0], constant=1.5),
    UnanimityGame(6, [1, 3, 4]),
    GloveGame(2, 4),
    WeightedVotingGame([5, 3, 2, 2, 1, 1], quota=8),
]


def brute_force(game) -> np.ndarray:
    n = game.n_players

    def fn(S):
        return float(game.value(torch.tensor([i in S for i in range(n)])))

    return TableGame(n, fn).shapley()


@pytest.mark.parametrize("game", GAMES, ids=lambda g: type(g).__name__)
def test_closed_form_equals_brute_force(game):
    np.testing.assert_allclose(game.shapley(), brute_force(game), atol=1e-12)


def test_weighted_voting_known_index():
    # Quota 3 of weights (2, 1, 1): player 0 is pivotal in 4 of 6 orderings.
    np.testing.assert_allclose(
        WeightedVotingGame([2, 1, 1], 3).shapley(), [2 / 3, 1 / 6, 1 / 6], atol=1e-12
    )


def test_value_shapes_and_counting():
    game = AdditiveGame([1.0, 2.0, 3.0])
    assert game.value(torch.tensor([True, False, True])).item() == 4.0
    out = game.value(torch.tensor([[True, True, True], [False, False, False]]))
    assert out.tolist() == [6.0, 0.0]
    assert game.n_evals == 3


def test_bad_members_refused():
    with pytest.raises(ValueError, match="subset"):
        UnanimityGame(3, [5])
