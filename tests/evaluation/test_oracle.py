"""Oracle sets against brute force, and the ranking-quality measures on known answers."""

import json
import math
from itertools import combinations

import numpy as np
import pytest
import torch
from helpers import F32_ACROSS_SHAPES

from shapprune.evaluation.oracle import (
    OracleSets,
    area_under_curve,
    oracle_rank,
    oracle_sets,
    regret_at_k,
    regrets,
)
from shapprune.evaluation.ranking import (
    overlap_at_k,
    overlaps,
    rank_correlation,
    ranking_from_scores,
)
from shapprune.game.pruning_game import PruningGame
from shapprune.game.synthetic import AdditiveGame, TableGame
from shapprune.zoo.models import build_model


def _random_table(n: int, seed: int, levels: int | None = None) -> TableGame:
    """A game with an independent random value per coalition (few levels: many ties)."""
    rng = np.random.default_rng(seed)
    table = rng.integers(0, levels, 2**n) if levels else rng.normal(size=2**n)
    return TableGame(n, lambda s: float(table[sum(1 << i for i in s)]))


def _brute_force(game, k: int) -> tuple[list[int], float]:
    """Naively: the best removal set of size k, ties to the lexicographically smallest."""
    n = game.n_players
    best, best_value = None, -math.inf
    for removed in combinations(range(n), k):
        mask = torch.tensor([i not in removed for i in range(n)])
        value = float(game.value(mask))
        if value > best_value:
            best, best_value = list(removed), value
    return best, best_value


@pytest.mark.parametrize("levels", [None, 3])
def test_exhaustive_equals_brute_force(levels):
    game = _random_table(7, seed=1, levels=levels)
    oracle = oracle_sets(game, chunk=5)
    assert sorted(oracle.sets) == list(range(1, 7))
    for k in range(1, 7):
        assert (oracle.sets[k], oracle.values[k]) == _brute_force(game, k)
        assert oracle.exhaustive[k]


def test_additive_oracle_sets_are_the_smallest_weights():
    weights = np.random.default_rng(0).normal(size=9)
    oracle = oracle_sets(AdditiveGame(weights))
    order = np.argsort(weights)
    for k, s in oracle.sets.items():
        assert s == sorted(order[:k].tolist())
    assert np.array_equal(oracle_rank(oracle, 9), order)


@pytest.mark.parametrize("levels", [None, 2])
def test_wide_beam_equals_exhaustive(levels):
    game = _random_table(7, seed=2, levels=levels)
    exact = oracle_sets(game)
    beam = oracle_sets(game, max_subsets=0, beam_width=math.comb(7, 3))
    assert beam.sets == exact.sets and beam.values == exact.values
    assert not any(beam.exhaustive.values())


def test_narrow_beam_is_approximate_and_mixed_plan():
    game = _random_table(7, seed=3)
    exact = oracle_sets(game)
    oracle = oracle_sets(game, ks=[5], max_subsets=7, beam_width=2)
    assert list(oracle.sets) == [5] and oracle.exhaustive == {5: False}
    assert oracle.values[5] <= exact.values[5]
    # k = 1 exhaustive (7 subsets) seeds the beam for k = 2..5
    mixed = oracle_sets(game, ks=[1, 2, 6], max_subsets=7, beam_width=2)
    assert mixed.exhaustive == {1: True, 2: False, 6: True}
    assert mixed.sets[1] == exact.sets[1] and mixed.sets[6] == exact.sets[6]


def test_n_evals_counted():
    game = _random_table(7, seed=4)
    oracle = oracle_sets(game, chunk=4)
    assert oracle.n_evals == game.n_evals == 2**7 - 2
    game, seen = _random_table(7, seed=4), []
    oracle = oracle_sets(
        game, ks=[2], max_subsets=0, beam_width=3, progress=lambda *a: seen.append(a)
    )
    # 7 singletons, then 3 seeds x 6 extensions, less the 3 pairs reached twice
    assert oracle.n_evals == game.n_evals == 7 + 3 * 6 - 3
    assert seen[-1][0] == seen[-1][1] > 0


def test_to_dict_round_trip():
    oracle = oracle_sets(_random_table(5, seed=5))
    record = json.loads(json.dumps(oracle.to_dict()))
    assert OracleSets.from_dict(record) == oracle


def test_own_sets_have_overlap_one_and_regret_zero():
    game = AdditiveGame(np.random.default_rng(6).normal(size=8))
    oracle = oracle_sets(game)
    ranking = oracle_rank(oracle, 8)
    assert all(v == 1.0 for v in overlaps(ranking, oracle).values())
    before = game.n_evals
    assert regrets(game, ranking, oracle) == pytest.approx(dict.fromkeys(range(1, 8), 0.0))
    assert game.n_evals == before + 7


def test_overlap_and_regret_by_hand():
    # v = 10 - 4*[0 removed] - 3*[1 removed] - 1*[2 removed] - 2*[3 removed]
    # + 5 if both 2 and 3 are removed (a synergy: the best sets are not nested)
    cost = {0: 4.0, 1: 3.0, 2: 1.0, 3: 2.0}

    def v(kept):
        removed = set(range(4)) - kept
        return 10 - sum(cost[i] for i in removed) + (5.0 if {2, 3} <= removed else 0.0)

    game = TableGame(4, v)
    oracle = oracle_sets(game)
    assert oracle.sets == {1: [2], 2: [2, 3], 3: [1, 2, 3]}
    assert oracle.values == {1: 9.0, 2: 12.0, 3: 9.0}
    ranking = np.array([2, 0, 3, 1])  # lowest 1: {2}; lowest 2: {0, 2}; lowest 3: {0, 2, 3}
    assert overlaps(ranking, oracle) == {1: 1.0, 2: 0.5, 3: pytest.approx(2 / 3)}
    assert overlap_at_k(ranking, oracle, 2) == 0.5
    assert regrets(game, ranking, oracle) == {1: 0.0, 2: 12.0 - 5.0, 3: 9.0 - 8.0}
    assert regret_at_k(game, ranking, oracle, 2) == 7.0
    assert np.array_equal(oracle_rank(oracle, 4), [2, 3, 1, 0])


def test_oracle_rank_ties_and_missing_units():
    oracle = OracleSets(sets={2: [4, 1]}, values={2: 0.0}, exhaustive={2: True}, n_evals=0)
    assert oracle_rank(oracle, 5).tolist() == [1, 4, 0, 2, 3]


def test_ranking_and_rank_correlation():
    scores = np.array([0.3, -1.0, 0.3, 2.0])
    assert ranking_from_scores(scores).tolist() == [1, 0, 2, 3]
    x = np.random.default_rng(7).normal(size=10)
    assert rank_correlation(x, x) == pytest.approx({"spearman": 1.0, "kendall": 1.0})
    assert rank_correlation(x, -x) == pytest.approx({"spearman": -1.0, "kendall": -1.0})
    with pytest.raises(ValueError):
        rank_correlation(x, x[:-1])


def test_area_under_curve_by_hand():
    assert area_under_curve([0, 0.5, 1], [1, 1, 0]) == pytest.approx(0.75)
    assert area_under_curve([1, 3], [2, 4]) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        area_under_curve([1], [1])


def test_bad_sizes_rejected():
    with pytest.raises(ValueError, match="ks"):
        oracle_sets(_random_table(4, seed=0), ks=[0])
    with pytest.raises(ValueError, match="ks"):
        oracle_sets(_random_table(4, seed=0), ks=[5])


def test_pruning_game_oracle_beats_random_subsets():
    torch.manual_seed(0)
    x, y = torch.randn(20, 1, 28, 28), torch.randint(0, 10, (20,))
    game = PruningGame(build_model("tinycnn", seed=0), "conv1", (x, y))
    assert game.n_players == 8
    oracle = oracle_sets(game, ks=[1, 2, 3])
    assert oracle.n_evals == game.n_evals == 8 + 28 + 56
    rng = np.random.default_rng(0)
    for k in (1, 2, 3):
        removed = [rng.choice(8, size=k, replace=False) for _ in range(10)]
        masks = torch.ones(10, 8, dtype=torch.bool)
        for row, r in enumerate(removed):
            masks[row, r] = False
        # the oracle's value came from a stack of 56 coalitions, these from stacks of 10 and 1
        assert (game.value(masks).numpy() <= oracle.values[k] + F32_ACROSS_SHAPES).all()
        mask = torch.ones(8, dtype=torch.bool)
        mask[oracle.sets[k]] = False
        assert float(game.value(mask)) == pytest.approx(oracle.values[k], abs=F32_ACROSS_SHAPES)
