"""Ranking quality against scipy and by hand."""

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from shapprune.evaluation.ranking import (
    agreement,
    kendall,
    lowest,
    nrmse,
    overlap_at_k,
    overlaps,
    positions,
    rank_correlation,
    ranking_from_scores,
    spearman,
)

A = [0.3, -1.0, 2.5, 0.3, 4.0, 1.1]  # with a tie
B = [1.0, 0.0, 2.0, 3.0, 5.0, 0.5]


def test_correlations_equal_scipy_with_ties():
    assert spearman(A, B) == pytest.approx(stats.spearmanr(A, B).statistic, abs=1e-12)
    assert kendall(A, B) == pytest.approx(stats.kendalltau(A, B).statistic, abs=1e-12)
    assert rank_correlation(A, B) == {"spearman": spearman(A, B), "kendall": kendall(A, B)}


def test_spearman_by_hand_without_ties():
    a, b = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]  # rank differences 1, 1, 1, 1, 0
    assert spearman(a, b) == pytest.approx(1 - 6 * 4 / (5 * (25 - 1)))
    # 10 pairs, 2 discordant: (1, 2) and (3, 4)
    assert kendall(a, b) == pytest.approx((8 - 2) / 10)


def test_nrmse_and_agreement_by_hand():
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    est = ref + np.array([0.5, -0.5, 0.5, -0.5])
    assert nrmse(est, ref) == pytest.approx(0.5 / np.std(ref))
    assert agreement(est, ref) == {**rank_correlation(est, ref), "nrmse": nrmse(est, ref)}
    assert math.isnan(nrmse(est, np.ones(4)))


def test_constant_input_is_nan_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = agreement(np.zeros(4), [1.0, 2.0, 3.0, 4.0])
    assert math.isnan(result["spearman"]) and math.isnan(result["kendall"])


def test_shapes_must_match():
    with pytest.raises(ValueError, match="equal length"):
        spearman([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="1-d"):
        agreement(np.ones((2, 2)), np.ones((2, 2)))


def test_ranking_and_positions_are_inverse():
    ranking = ranking_from_scores(A)
    assert ranking.tolist() == [1, 0, 3, 5, 2, 4]  # ties by index
    pos = positions(ranking)
    assert pos[ranking].tolist() == list(range(6)) and ranking[pos].tolist() == list(range(6))
    assert lowest(ranking, 2) == [1, 0]
    with pytest.raises(ValueError, match="k must be"):
        lowest(ranking, 7)


class _Oracle:
    sets = {1: [0], 2: [1, 3]}


def test_overlaps_with_sets_or_an_oracle():
    ranking = [0, 3, 1, 2]
    assert overlaps(ranking, _Oracle()) == {1: 1.0, 2: 0.5}
    assert overlaps(ranking, _Oracle.sets) == overlaps(ranking, _Oracle())
    assert overlap_at_k(ranking, _Oracle.sets, 2) == 0.5
