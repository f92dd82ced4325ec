"""Refinement at the target: finds better sets than the lowest values, inside its budget."""

from itertools import combinations

import numpy as np
import pytest

from shapprune.estimators.registry import default_budget, estimate
from shapprune.evaluation.oracle import oracle_sets
from shapprune.game.synthetic import AdditiveGame, TableGame, WeightedVotingGame


def _redundant_pairs_game() -> TableGame:
    """Additive weights plus redundant pairs: a pair's bonus is lost only when both go.

    The Shapley value splits each bonus between the pair, so a pair member looks worth
    w + c/2, while removing it alone costs only w: the lowest values are the wrong set.
    """
    w = np.array([0.1, 0.1, 0.15, 0.15, 0.3, 0.35, 0.4, 0.45, 1.0, 1.2, 1.4, 1.6])
    pairs = [((0, 1), 0.6), ((2, 3), 0.5)]

    def value(S: frozenset) -> float:
        bonus = sum(c for (a, b), c in pairs if a in S or b in S)
        return float(sum(w[i] for i in S) + bonus)

    return TableGame(len(w), value)


def _removed_value(game, removed) -> float:
    mask = np.ones(game.n_players, dtype=bool)
    mask[list(removed)] = False
    return float(game.value(mask))


@pytest.mark.parametrize("base", ["exact", "permutation"])
def test_refinement_finds_the_oracle_set_that_the_lowest_values_miss(base):
    game = _redundant_pairs_game()
    k = 4
    oracle = oracle_sets(game, [k])
    assert oracle.exhaustive[k]
    shapley = estimate(game, "exact")
    lowest = np.argsort(shapley.values, kind="stable")[:k]
    assert oracle.values[k] - _removed_value(game, lowest) > 0.1  # Shapley's k lowest are wrong
    est = estimate(game, "refine", budget=1_500 + 2**12, seed=0, base=base, remove=k)
    assert sorted(est.selected.tolist()) == sorted(oracle.sets[k])
    assert est.info["value"] == pytest.approx(oracle.values[k])
    assert est.info["improvement"] > 0.1 and est.info["swapped"] >= 1
    assert sorted(est.ranking[:k].tolist()) == sorted(oracle.sets[k])  # selected first


def test_the_answer_is_a_swap_local_optimum_when_the_budget_allows():
    game = WeightedVotingGame([6, 4, 3, 2, 2, 1, 1, 1, 5, 3], quota=15)
    est = estimate(game, "refine", budget=5_000, seed=1, kept=0.6)
    best = est.info["value"]
    removed = set(est.selected.tolist())
    assert len(removed) == 4 and est.info["sets_evaluated"] < 5_000 // 2  # it stopped itself
    for out in removed:
        for into in set(range(10)) - removed:
            assert _removed_value(game, removed - {out} | {into}) <= best + 1e-12


@pytest.mark.parametrize("refine_budget", [None, 1, 7, 40])
def test_never_exceeds_its_budget_and_keeps_the_base_values(refine_budget):
    game = _redundant_pairs_game()
    for budget in (400, 600, 1_000):
        est = estimate(game, "refine", budget=budget, seed=3, remove=3, refine_budget=refine_budget)
        assert 0 < est.n_evals <= budget and game.n_evals >= est.n_evals
        search = refine_budget or budget // 2
        assert est.info["sets_evaluated"] <= budget - est.info["base_evals"]
        assert est.info["base_evals"] <= budget - search
        # the values are the base's own answer for its share of the budget and the same seed
        base = estimate(game, "permutation", budget=budget - search, seed=3)
        np.testing.assert_array_equal(est.values, base.values)


def test_an_optimal_seed_is_kept_and_large_games_stay_cheap():
    # additive game: the k lowest values are the best set, the search cannot improve them
    game = AdditiveGame(np.random.default_rng(0).normal(size=300))
    est = estimate(game, "refine", budget=2_000, seed=0, base="loo", kept=0.5)
    best = np.argsort(game.weights, kind="stable")[:150]
    assert sorted(est.selected.tolist()) == sorted(best.tolist())
    assert est.info["improvement"] == 0 and est.info["swapped"] == 0
    assert est.info["steps"] >= 2 and est.n_evals <= 2_000  # it searched, inside the budget


def test_seed_fixes_the_answer():
    game = WeightedVotingGame([6, 4, 3, 2, 2, 1, 1, 1, 5, 3], quota=15)
    a, b = (estimate(game, "refine", budget=300, seed=7, kept=0.5) for _ in range(2))
    assert np.array_equal(a.selected, b.selected) and np.array_equal(a.values, b.values)
    assert a.info == b.info
    others = [estimate(game, "refine", budget=300, seed=s, kept=0.5).values for s in range(3)]
    assert not all(np.array_equal(others[0], o) for o in others[1:])


def test_semivalue_base_and_default_budget():
    game = _redundant_pairs_game()
    options = {"base": "semivalue", "base_options": {"weights": "window", "kept": 0.7}}
    est = estimate(game, "refine", seed=0, kept=0.7, **options)
    n = game.n_players
    own = default_budget("semivalue", n, weights="window", kept=0.7)
    assert est.budget == default_budget("refine", n, **options) == 2 * own
    assert est.info["base"] == "semivalue" and est.info["base_info"]["weights"] == "window"
    assert len(est.selected) == n - round(0.7 * n)


def test_search_alone_reaches_the_oracle_from_any_seed():
    # a small game where every set can be checked: from the worst seed, with the whole
    # neighbourhood affordable, the beam climbs to the best set
    game = _redundant_pairs_game()
    from shapprune.estimators._budget import BudgetedGame
    from shapprune.estimators.refine import refine_search

    k = 3
    best = max(combinations(range(12), k), key=lambda r: _removed_value(game, r))
    worst_first = -np.arange(12.0)  # seeds the search with the three most valuable units
    found, info = refine_search(BudgetedGame(game, 10_000), worst_first, k, 10_000, beam=4)
    assert info["value"] == pytest.approx(_removed_value(game, best))
    assert info["steps"] >= 3


def test_swaps_within_groups_keep_each_group_s_count_and_start_where_told():
    game = _redundant_pairs_game()
    from shapprune.estimators._budget import BudgetedGame
    from shapprune.estimators.refine import refine_search

    groups = np.array([0] * 6 + [1] * 6)
    start = (0, 1, 6)  # two of group 0, one of group 1
    values = np.zeros(12)
    found, info = refine_search(
        BudgetedGame(game, 10_000), values, 3, 10_000, start=start, groups=groups
    )
    assert info["seed_value"] == pytest.approx(_removed_value(game, start))
    assert sum(u < 6 for u in found) == 2 and sum(u >= 6 for u in found) == 1
    allowed = [r for r in combinations(range(12), 3) if sum(u < 6 for u in r) == 2]
    best = max(_removed_value(game, r) for r in allowed)
    assert info["value"] == pytest.approx(best)  # the whole group-respecting space is searched
    with pytest.raises(ValueError, match="the start set must be 3 distinct players"):
        refine_search(BudgetedGame(game, 100), values, 3, 100, start=(0, 0, 1))


def test_the_search_starts_no_step_after_its_deadline():
    """A time budget running out: the seed set is valued, no swap is tried, and the record
    says why it stopped (a deadline far away changes nothing)."""
    import time

    from shapprune.estimators._budget import BudgetedGame
    from shapprune.estimators.refine import refine_search

    game = _redundant_pairs_game()
    values = np.zeros(12)
    budgeted = BudgetedGame(game, 1000)
    found, info = refine_search(budgeted, values, 3, 1000, start=(0, 1, 6),
                                deadline=time.perf_counter() - 1)  # fmt: skip
    assert found == (0, 1, 6) and budgeted.n_evals == 1 and info["stopped"] == "time"
    far = refine_search(BudgetedGame(game, 1000), values, 3, 1000, start=(0, 1, 6),
                        deadline=time.perf_counter() + 3600)  # fmt: skip
    plain = refine_search(BudgetedGame(game, 1000), values, 3, 1000, start=(0, 1, 6))
    assert far == plain and "stopped" not in plain[1]


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"base": "refine"}, "refine cannot refine itself"),
        ({"base": "magic"}, "unknown method 'magic'"),
        ({"kept": 0.5, "remove": 2}, "give kept (a fraction) or remove (a count), not both"),
        ({"remove": 12}, "the target removes 12 of 12 players; it must remove 1..11"),
        ({"kept": 1.0}, "kept must be a fraction in (0, 1)"),
        ({"beam": 0}, "beam must be >= 1"),
        ({"refine_budget": 0}, "refine_budget must be >= 1"),
        ({"base_options": {"depth": 3}}, "method 'permutation' has no option 'depth'"),
    ],
)
def test_bad_options_are_one_line_errors(options, needle):
    with pytest.raises(ValueError) as info:
        estimate(_redundant_pairs_game(), "refine", **options)
    assert needle in str(info.value) and "\n" not in str(info.value)


def _swaps_by_full_sort(beam, values, tried, limit, groups=None):
    """The swaps as first written: the whole cost matrix sorted (the reference)."""
    n, keys = len(values), {}
    for rank, (removed, _) in enumerate(beam):
        inside = np.array(removed)
        outside = np.setdiff1d(np.arange(n), inside)
        cost = values[outside][None, :] - values[inside][:, None]
        if groups is not None:
            cost = np.where(groups[inside][:, None] == groups[outside][None, :], cost, np.inf)
        order = np.argsort(cost, axis=None, kind="stable")
        found = 0
        for a, b in zip(*np.unravel_index(order, cost.shape), strict=True):
            if not np.isfinite(cost[a, b]):
                break
            new = tuple(sorted((*(u for u in removed if u != inside[a]), int(outside[b]))))
            if new not in tried and new not in keys:
                keys[new] = (float(cost[a, b]), rank, new)
                found += 1
                if found == limit:
                    break
    return sorted(keys, key=keys.__getitem__)[:limit]


@pytest.mark.parametrize("seed", range(6))
def test_swaps_by_partial_selection_are_those_of_the_whole_sort(seed):
    """Group by group and by partial selection, the same swaps in the same order as the
    whole cost matrix sorted, ties (values rounded to a few levels) and tried sets
    included."""
    from shapprune.estimators.refine import _swaps

    rng = np.random.default_rng(seed)
    n = 40
    values = np.round(rng.random(n) * 4) / 4  # many ties
    groups = rng.integers(0, 3, n) if seed % 2 else None
    beam = [(tuple(sorted(rng.choice(n, 12, replace=False).tolist())), 0.0) for _ in range(3)]
    tried = {}
    for limit in (1, 5, 30, 500):
        got = _swaps(beam, values, tried, limit, groups)
        assert got == _swaps_by_full_sort(beam, values, tried, limit, groups)
        tried.update(dict.fromkeys(got[: len(got) // 2], 0.0))  # the next call skips these
