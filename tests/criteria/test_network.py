"""The network-shapley criterion: one network game over the layers asked for."""

import json

import numpy as np
import pytest
import torch
from helpers import F32_ACROSS_SHAPES, run_cli

from shapprune.criteria.registry import CRITERIA, get_criterion
from shapprune.estimators.partial import partial_cost
from shapprune.estimators.registry import estimate
from shapprune.game.network_game import NetworkGame
from shapprune.pruning.checkpoint import load_checkpoint, save_checkpoint
from shapprune.zoo.models import build_model

LAYERS = ["conv1", "conv2", "fc1"]


def _data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture(scope="module")
def lenet():
    return build_model("lenet5", seed=0)


def test_scores_are_the_network_game_s_values_split_by_layer(lenet):
    x, y = _data()
    crit = get_criterion("network-shapley", budget=2400, metric="margin")
    scores = crit.score(lenet, LAYERS, (x, y), seed=3)
    assert [len(scores[k]) for k in LAYERS] == [20, 50, 500]
    game = NetworkGame(lenet, (x, y), LAYERS, metric="margin", compensate=True)  # the default
    direct = estimate(game, "permutation", budget=2400, seed=3).values
    np.testing.assert_allclose(np.concatenate([scores[k] for k in LAYERS]), direct, atol=1e-9)
    assert crit.players == game.players and crit.last_estimate.n_evals <= 2400
    # one game: all layers' values share out v(N) - v(empty), the whole network's worth
    # (per-layer games each share out their own layer's, against an intact network)
    ends = game.value(
        torch.stack([torch.ones(570, dtype=torch.bool), torch.zeros(570, dtype=torch.bool)])
    )
    assert sum(s.sum() for s in scores.values()) == pytest.approx((ends[0] - ends[1]).item())


def test_on_one_layer_it_is_that_layer_s_shapley_criterion(lenet):
    x, y = _data()
    net = get_criterion("network-shapley", budget=300).score(lenet, ["conv2"], (x, y), seed=1)
    one = get_criterion("shapley-permutation", budget=300).score(lenet, ["conv2"], (x, y), seed=1)
    np.testing.assert_allclose(net["conv2"], one["conv2"], atol=F32_ACROSS_SHAPES)


def test_estimator_options_pass_through_to_the_chosen_method(lenet):
    x, y = _data()
    crit = get_criterion("network-shapley", method="partial", k=1)
    crit.score(lenet, ["conv1", "conv2"], (x, y))
    assert crit.last_estimate.n_evals == partial_cost(70, 1)
    plain = get_criterion("network-shapley", budget=200).score(lenet, ["conv1"], (x, y))
    single = get_criterion("network-shapley", budget=200, antithetic=False)
    assert not np.allclose(single.score(lenet, ["conv1"], (x, y))["conv1"], plain["conv1"])


@pytest.mark.parametrize(
    "options,needle",
    [
        ({"method": "magic"}, "unknown method 'magic'"),
        ({"k": 2}, "k are not options of method 'permutation'; its options: antithetic"),
        ({"method": "loo", "antithetic": False}, "not options of method 'loo', which has none"),
        ({"metric": "f1"}, "unknown metric 'f1'"),
        ({"antithetic": "yes"}, "option 'antithetic' must be bool or None"),
    ],
)
def test_bad_options_are_one_clear_error(options, needle):
    with pytest.raises(ValueError, match=needle):
        get_criterion("network-shapley", **options)


def test_declared_options_list_the_method_and_each_estimator_s():
    described = CRITERIA["network-shapley"].describe()
    for name in ("method (str, default 'permutation')", "budget", "metric", "antithetic", "k"):
        assert name in described


def test_cli_prunes_globally_by_network_wide_value(tmp_path, monkeypatch, capsys, lenet):
    save_checkpoint(tmp_path / "base", lenet, name="lenet5", config={"seed": 0}, metrics={})
    out = tmp_path / "pruned"
    code, _, err = run_cli(
        monkeypatch, capsys, "prune", "--model", tmp_path / "base.json", "--per-class", "1",
        "--criterion", "network-shapley", "--budget", "2400", "--global", "--refine", "0",
        "--target", "channels=0.3", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["criterion"] == "network-shapley"
    plan = summary["plans"][0]
    assert plan["normalisation"] == "none"  # the criterion's own: one game, one scale
    removed, scores = plan["removals"], plan["scores"]
    assert sum(map(len, removed.values())) == round(0.3 * 570)
    # cut by value across layers: nothing removed is worth more than anything kept
    gone = [scores[k][i] for k in scores for i in removed[k]]
    kept = [s for k in scores for i, s in enumerate(scores[k]) if i not in set(removed[k])]
    assert max(gone) <= min(kept)
    model, _ = load_checkpoint(out / "model")
    widths = {"conv1": model.conv1.out_channels, "conv2": model.conv2.out_channels,
              "fc1": model.fc1.out_features}  # fmt: skip
    assert widths == {k: n - len(removed[k]) for k, n in zip(LAYERS, (20, 50, 500), strict=True)}


def test_global_plans_normalise_as_the_criterion_says_unless_told(lenet, mnist5k):
    from shapprune.pruning.compress import prune_model

    assert get_criterion("weight-l1").normalisation == "l1"
    kw = {"layers": ["conv1", "conv2"], "global_": True, "per_class": 1, "refine": 0}
    by = {
        (name, given): prune_model(lenet, mnist5k, get_criterion(name, **o), "channels=0.3",
                                   normalisation=given, **kw)[1]["plans"][0]["normalisation"]
        for name, o in (("weight-l1", {}), ("network-shapley", {"budget": 300}))
        for given in (None, "max")
    }  # fmt: skip
    assert by == {("weight-l1", None): "l1", ("weight-l1", "max"): "max",
                  ("network-shapley", None): "none", ("network-shapley", "max"): "max"}  # fmt: skip


def test_bandit_settles_the_units_a_channels_target_cuts(lenet, mnist5k):
    from shapprune.pruning.compress import prune_model

    crit = get_criterion("network-shapley", method="bandit", budget=1_500)
    pruned, summary = prune_model(
        lenet, mnist5k, crit, "channels=0.2", layers=["conv1", "conv2"], global_=True, per_class=2,
        refine=0,
    )  # fmt: skip
    est = crit.last_estimate
    assert est.info["k"] == round(0.2 * 70) and crit.cut_fraction is None  # restored
    assert est.n_evals <= 1_500 and sum(summary["removed"].values()) == 14
    # a k given by the user wins over the target's; a fraction k in (0, 1) is accepted
    crit = get_criterion("network-shapley", method="bandit", budget=1_500, k=0.1)
    crit.cut_fraction = 0.2
    crit.score(lenet, ["conv1", "conv2"], _data())
    assert crit.last_estimate.info["k"] == 7
    with pytest.raises(ValueError, match="option 'k' must be int"):
        get_criterion("network-shapley", method="partial", k=0.5).score(lenet, LAYERS, _data())
