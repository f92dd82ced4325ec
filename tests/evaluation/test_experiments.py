"""Tests for the papers' experiments: robustness curves, accuracy vs. rate, cost-benefit."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shapprune.evaluation.experiments import (
    accuracy_vs_rate,
    cost_benefit,
    mean_accuracy,
    robustness_auc,
    robustness_curve,
    robustness_table,
    summarise,
)
from shapprune.evaluation.measure import evaluate
from shapprune.game.synthetic import WeightedVotingGame
from shapprune.zoo.data import Split
from shapprune.zoo.models import build_model


@pytest.fixture(scope="module")
def model():
    return build_model("tinycnn", seed=0)


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(30, 1, 28, 28, generator=gen), torch.randint(0, 10, (30,), generator=gen)


def test_robustness_curve_matches_hand_computation(model, images):
    ranking = np.array([3, 0, 7, 1, 5, 2, 6, 4])
    curve = robustness_curve(model, "conv1", ranking, images)
    assert curve.shape == (8,)
    assert curve[0] == 0.0
    x, y = images
    with torch.no_grad():
        base = F.cross_entropy(model(x), y).item()
        j = 3
        pruned = copy.deepcopy(model)
        pruned.conv2.weight[:, torch.as_tensor(ranking[:j])] = 0
        loss = F.cross_entropy(pruned(x), y).item()
    assert curve[j] == pytest.approx(loss - base, abs=1e-5)
    assert not np.allclose(curve[1:], 0)


def test_robustness_curve_rejects_a_non_permutation(model, images):
    with pytest.raises(ValueError, match="permutation"):
        robustness_curve(model, "conv1", [0, 0, 1, 2, 3, 4, 5, 6], images)


def test_robustness_auc_is_a_normalised_trapezoid():
    curve = np.array([0.0, 0.5, 1.0, 3.0])  # x = 0, 1/4, 2/4, 3/4
    area = 0.25 * ((0 + 0.5) / 2 + (0.5 + 1.0) / 2 + (1.0 + 3.0) / 2)
    assert robustness_auc(curve) == pytest.approx(area / (3.0 * 0.75))
    assert robustness_auc(curve, normaliser=6.0) == pytest.approx(area / (6.0 * 0.75))
    assert robustness_auc(np.array([0.0])) == 0.0


def test_robustness_table_uses_one_shared_normaliser():
    a = np.array([0.0, 0.2, 0.5, 1.0])
    table = robustness_table({"a": a, "b": 2 * a})
    assert table["b"] == pytest.approx(2 * table["a"])
    assert table["b"] == pytest.approx(robustness_auc(2 * a))  # its own max is the shared one
    assert 0 < table["a"] < table["b"] <= 1


def test_accuracy_vs_rate(model):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(120, 1, 28, 28, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # the intact model is right on every example
    test, example = Split(x, y), x[:2]
    rng = np.random.default_rng(0)
    scores = {"conv1": rng.random(8), "conv2": rng.random(16)}
    rates = [0.0, 0.25, 0.5, 0.75]
    accs = accuracy_vs_rate(model, scores, rates, test, example)
    assert len(accs) == len(rates)
    assert accs[0] == evaluate(model, test)["accuracy"] == 1.0
    reverse = {k: -v for k, v in scores.items()}
    assert accuracy_vs_rate(model, reverse, rates, test, example) != accs
    glob = accuracy_vs_rate(model, scores, [0.0, 0.5], test, example, global_=True)
    assert len(glob) == 2 and glob[0] == 1.0
    with pytest.raises(ValueError, match="rates"):
        accuracy_vs_rate(model, scores, [1.0], test, example)


def test_mean_accuracy_is_the_mean():
    assert mean_accuracy([1.0, 0.5, 0.0, 0.3]) == pytest.approx(0.45)


@pytest.fixture(scope="module")
def voting():
    game = WeightedVotingGame([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], quota=28)
    return game, game.shapley()


def test_cost_benefit_rows(voting):
    game, reference = voting
    oracle = np.argsort(reference, kind="stable")
    seeds = [0, 1, 2, 3]
    rows = cost_benefit(
        game, ["permutation", "loo", "partial"], [30, 400, 4000], seeds, reference, oracle
    )
    fields = {"method", "budget", "seed", "n_evals", "seconds", "spearman", "kendall", "nrmse"}
    for row in rows:
        assert fields | {"oracle_spearman"} <= set(row)
        assert row["n_evals"] <= row["budget"]
    perm = [r for r in rows if r["method"] == "permutation"]
    assert {r["budget"] for r in perm} == {400, 4000}  # 30 is below the minimum, 38
    assert len(perm) == 2 * len(seeds)
    for method in ("loo", "partial"):
        mine = [r for r in rows if r["method"] == method]
        budgets = [r["budget"] for r in mine]
        assert len(budgets) == len(set(budgets)) and all(r["seed"] == 0 for r in mine)
    assert [r["budget"] for r in rows if r["method"] == "loo"] == [30, 400, 4000]
    # no single player is pivotal against the full coalition: loo is constant, not "perfect"
    assert all(np.isnan(r["oracle_spearman"]) for r in rows if r["method"] == "loo")
    assert max(r["oracle_spearman"] for r in perm) > 0.9

    def mean_rho(budget):
        return np.mean([r["spearman"] for r in perm if r["budget"] == budget])

    assert mean_rho(4000) > mean_rho(400)
    plain = cost_benefit(game, ["loo"], [11], [0], reference)
    assert "oracle_spearman" not in plain[0]


def test_summarise_groups_by_method_and_budget():
    rows = [
        {"method": "a", "budget": 10, "seed": 0, "spearman": 0.5, "n_evals": 10},
        {"method": "a", "budget": 10, "seed": 1, "spearman": 0.7, "n_evals": 10},
        {"method": "a", "budget": 20, "seed": 0, "spearman": 0.9, "n_evals": 20},
        {"method": "b", "budget": 10, "seed": 0, "spearman": 0.1, "n_evals": 8},
    ]
    out = summarise(rows)
    assert [(s["method"], s["budget"], s["runs"]) for s in out] == [
        ("a", 10, 2),
        ("a", 20, 1),
        ("b", 10, 1),
    ]
    assert out[0]["spearman_mean"] == pytest.approx(0.6)
    assert out[0]["spearman_std"] == pytest.approx(0.1)
    assert out[2]["n_evals_mean"] == 8 and out[1]["spearman_std"] == 0.0
    assert "seed_mean" not in out[0]


def test_robustness_table_of_flat_curves_is_zero_not_nan():
    # no curve rises above 0: the shared normaliser falls back to 1 (as the report has it)
    table = robustness_table({"a": np.zeros(4), "b": np.array([0.0, -0.3, -0.6, -0.9])})
    assert table["a"] == 0.0
    assert table["b"] == pytest.approx(robustness_auc(np.array([0.0, -0.3, -0.6, -0.9]), 1.0))
