"""How good a ranking is: the one place for the ranking-quality measures.

A *ranking* lists unit indices, least important first (``ranking_from_scores``); its
*positions* are the inverse permutation. Scores are compared with reference values by
rank correlation (Spearman, Kendall) and nRMSE (``agreement``), and rankings with oracle
sets by the overlap of their k lowest units (``overlaps``). The oracle search and the
regrets, which need the game, are in :mod:`shapprune.evaluation.oracle`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
from scipy import stats


class HasSets(Protocol):
    """Anything with oracle sets (size k -> the k units), such as ``OracleSets``."""

    sets: Mapping[int, Sequence[int]]


def ranking_from_scores(scores) -> np.ndarray:
    """Unit indices from the lowest score to the highest (stable: ties by index)."""
    return np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")


def positions(ranking) -> np.ndarray:
    """The place of each unit in ``ranking`` (0 = least important): its inverse permutation."""
    ranking = np.asarray(ranking, dtype=np.int64)
    pos = np.empty(len(ranking), dtype=np.int64)
    pos[ranking] = np.arange(len(ranking))
    return pos


def lowest(ranking, k: int) -> list[int]:
    """The first k units of ``ranking`` (the k least important)."""
    ranking = np.asarray(ranking, dtype=np.int64)
    if not 1 <= k <= len(ranking):
        raise ValueError(f"k must be in 1..{len(ranking)}, got {k}")
    return ranking[:k].tolist()


def overlap_at_k(ranking, oracle: HasSets | Mapping[int, Sequence[int]], k: int) -> float:
    """|the k lowest units of ``ranking`` ∩ the oracle set of size k| / k (``oracle``:
    ``OracleSets`` or its ``sets``)."""
    sets = getattr(oracle, "sets", oracle)
    return len(set(lowest(ranking, k)) & set(sets[k])) / k


def overlaps(ranking, oracle: HasSets | Mapping[int, Sequence[int]]) -> dict[int, float]:
    """:func:`overlap_at_k` for every size k of the oracle."""
    sets = getattr(oracle, "sets", oracle)
    return {k: overlap_at_k(ranking, sets, k) for k in sorted(sets)}


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"scores and reference must be 1-d of equal length: {a.shape}, {b.shape}")
    return a, b


def spearman(scores, reference) -> float:
    """Spearman's rank correlation (ties share their mean rank; NaN if one is constant)."""
    a, b = _pair(scores, reference)
    with warnings.catch_warnings():  # a constant vector has no rank correlation: nan
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(a, b).statistic)


def kendall(scores, reference) -> float:
    """Kendall's tau-b (NaN if one is constant)."""
    a, b = _pair(scores, reference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.kendalltau(a, b).statistic)


def rank_correlation(scores, reference) -> dict[str, float]:
    """Spearman's rho and Kendall's tau between two score vectors (NaN if one is constant)."""
    return {"spearman": spearman(scores, reference), "kendall": kendall(scores, reference)}


def nrmse(values, reference) -> float:
    """The RMSE of ``values`` against ``reference``, divided by the reference's standard
    deviation (NaN for a constant reference)."""
    values, reference = _pair(values, reference)
    rmse = float(np.sqrt(np.mean((values - reference) ** 2)))
    std = float(np.std(reference))
    return rmse / std if std > 0 else math.nan


def agreement(values, reference) -> dict[str, float]:
    """How closely estimated values follow reference values: Spearman and Kendall rank
    correlations, and the RMSE divided by the reference's standard deviation (nRMSE)."""
    return {**rank_correlation(values, reference), "nrmse": nrmse(values, reference)}
