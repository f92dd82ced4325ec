"""Plans: targets, per-layer and global allocation, never emptying a layer."""

import numpy as np
import pytest
import torch

from shapprune.evaluation.measure import count_macs, count_params
from shapprune.pruning.plan import Target, make_plan, normalise, prunable_layers, unit_costs
from shapprune.pruning.removal import apply_removals
from shapprune.zoo.models import build_model


def _scores(layers, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=units.n_players) for name, units in layers.items()}


def test_target_parsing_and_errors():
    assert Target.parse("macs=0.5") == Target("macs", 0.5)
    assert Target.parse(0.3) == Target("channels", 0.3)
    assert str(Target.parse("params=0.25")) == "params=0.25"
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\), got 1.5"):
        Target.parse("macs=1.5")
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\), got 0"):
        Target.parse("channels=0")
    with pytest.raises(ValueError, match="unknown target 'flops'"):
        Target.parse("flops=0.5")
    with pytest.raises(ValueError, match="needs a number"):
        Target.parse("macs=half")


def test_normalisations_by_hand():
    s = np.array([1.0, -3.0, 4.0])
    np.testing.assert_allclose(normalise(s, "l1"), s / 8)
    np.testing.assert_allclose(normalise(s, "l2"), s / np.sqrt(26))
    np.testing.assert_allclose(normalise(s, "max"), s / 4)
    np.testing.assert_allclose(normalise(s, "rank"), [2 / 3, 1 / 3, 1.0])
    # LAMP: shifted by 3 to [4, 0, 7]; each unit's share of itself and those above it
    np.testing.assert_allclose(normalise(s, "lamp"), [4 / 11, 0.0, 1.0])
    np.testing.assert_allclose(normalise(np.array([1.0, 4.0, 2.0, 3.0]), "lamp"),
                               [1 / 10, 1.0, 2 / 9, 3 / 7])  # fmt: skip
    with pytest.raises(ValueError, match="unknown normalisation 'zscore'"):
        normalise(s, "zscore")


def test_prunable_layers_one_per_coupled_group():
    x = torch.randn(2, 1, 28, 28)
    resnet = prunable_layers(build_model("resnet20"), x)
    assert "fc" not in resnet  # the classifier's outputs are never players
    assert "conv1" in resnet and "layer1.0.conv2" not in resnet  # same residual stream
    assert "layer2.0.conv2" in resnet and "layer2.1.conv2" not in resnet
    vit = prunable_layers(build_model("vit"), x)
    assert "blocks.0.attn" in vit and "blocks.0.mlp.fc1" in vit
    assert not any(name.endswith(("qkv", "proj", "fc2", "head")) for name in vit)
    assert vit["blocks.0.attn"].kind == "heads"


def test_per_layer_channels_removes_the_lowest_and_never_empties():
    scores = {"a": np.array([5.0, 1.0, 3.0, 2.0]), "b": np.array([0.5, 0.1])}
    plan = make_plan(None, scores, "channels=0.5", None)
    assert plan.removals == {"a": [1, 3], "b": [1]}
    plan = make_plan(None, scores, "channels=0.99", None)
    assert plan.removals == {"a": [1, 2, 3], "b": [1]}  # one unit always stays
    ratios = make_plan(None, scores, "channels=0.5", None, ratios={"a": 0.25, "b": 0.5})
    assert ratios.removals == {"a": [1], "b": [1]}
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\), got 1.0 for 'b'"):
        make_plan(None, scores, "channels=0.5", None, ratios={"b": 1.0})


def test_global_ranks_units_across_layers_on_normalised_scores():
    scores = {"a": np.array([10.0, 10.0, 80.0]), "b": np.array([1.0, 2.0, 2.0, 5.0])}
    # l1-normalised: a -> .1 .1 .8, b -> .1 .2 .2 .5; the three lowest: a0, a1, b0
    plan = make_plan(None, scores, "channels=0.43", None, global_=True)
    assert plan.removals == {"a": [0, 1], "b": [0]}
    raw = make_plan(None, scores, "channels=0.43", None, global_=True, normalisation="none")
    assert raw.removals == {"a": [], "b": [0, 1, 2]}


def test_a_global_plan_on_lamp_shares():
    scores = {"a": np.array([6.0, 7.0, 8.0]), "b": np.array([5.0, 4.0, 3.0])}
    # LAMP: a -> 6/21, 7/15, 1; b -> 5/5, 4/9, 3/12; each layer's best unit has share 1 (last
    # to go); the three lowest: b2 (.25), a0 (.29), b1 (.44)
    plan = make_plan(None, scores, "channels=0.5", None, global_=True, normalisation="lamp")
    assert plan.removals == {"a": [0], "b": [1, 2]}


def test_headroom_caps_what_a_global_plan_takes_from_one_layer():
    scores = {"a": np.arange(1.0, 11.0), "b": np.arange(1.0, 11.0) * 100}  # a is all cheaper
    free = make_plan(None, scores, "channels=0.4", None, global_=True, normalisation="none")
    assert free.removals == {"a": list(range(8)), "b": []}
    # 40% of all units: a layer gives at most 0.4 + 0.5 * 0.6 = 70% of its own
    capped = make_plan(None, scores, "channels=0.4", None, global_=True, normalisation="none",
                       headroom=0.5)  # fmt: skip
    assert capped.removals == {"a": list(range(7)), "b": [0]}
    assert capped.info["headroom"] == 0.5
    even = make_plan(None, scores, "channels=0.4", None, global_=True, normalisation="none",
                     headroom=0.0)  # fmt: skip
    assert even.removals == {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}  # still by score within
    with pytest.raises(ValueError, match=r"headroom is a fraction in \[0, 1\], got 1.5"):
        make_plan(None, scores, "channels=0.4", None, global_=True, headroom=1.5)


@pytest.mark.parametrize(
    "name,global_", [("lenet5", False), ("resnet20", False), ("resnet20", True)]
)
def test_half_the_macs(name, global_):
    model = build_model(name, seed=0)
    x = torch.randn(2, 1, 28, 28)
    layers = prunable_layers(model, x)
    plan = make_plan(model, _scores(layers), "macs=0.5", x, global_=global_)
    pruned = apply_removals(model, plan.removals, x)
    reduction = 1 - count_macs(pruned, x) / count_macs(model, x)
    assert 0.5 <= reduction < 0.55 and reduction == pytest.approx(plan.achieved)


def test_params_target_and_unreachable_target():
    model = build_model("lenet5", seed=0)
    x = torch.randn(2, 1, 28, 28)
    apply = lambda m, r: apply_removals(m, r, x)  # noqa: E731
    scores = _scores(prunable_layers(model, x))
    plan = make_plan(model, scores, "params=0.3", x, apply=apply)
    assert make_plan(model, scores, "params=0.3", x).removals == plan.removals  # the default
    pruned = apply(model, plan.removals)
    assert 1 - count_params(pruned) / count_params(model) >= 0.3
    with pytest.raises(ValueError, match="target macs=0.95 is unreachable"):
        make_plan(model, {"conv1": scores["conv1"]}, "macs=0.95", x, apply=apply)


def test_layer_units_are_the_units_found_one_by_one():
    from shapprune.game.units import find_units, layer_units
    from shapprune.pruning.compress import select_layers

    model, x = build_model("resnet20"), torch.randn(2, 1, 28, 28)
    found = layer_units(model, ["conv1", "layer2.0.conv1"], x)
    for name, units in found.items():
        alone = find_units(model, name, x)
        assert (units.layer, units.kind, units.n_players, units.coupled) == (
            alone.layer, alone.kind, alone.n_players, alone.coupled,
        )  # fmt: skip
        assert [(p.module, p.player_of_channel.tolist()) for p in units.mask_points] == [
            (p.module, p.player_of_channel.tolist()) for p in alone.mask_points
        ]
    chosen = select_layers(model, x, ["layer2.0.conv1"])  # the layers, with their units
    assert list(chosen) == ["layer2.0.conv1"] and chosen["layer2.0.conv1"].n_players == 32


def test_unit_costs_are_what_removing_one_unit_saves():
    model = build_model("lenet5", seed=0)
    x = torch.randn(2, 1, 28, 28)
    layers = prunable_layers(model, x)
    costs = unit_costs(model, {n: u.n_players for n, u in layers.items()}, x, "macs")
    conv1, conv2 = model.conv1, model.conv2
    # conv1: its own 5x5 filter over 24x24 outputs, and conv2's input column over 8x8 outputs
    own = 24 * 24 * 25 * conv1.in_channels
    consumer = 8 * 8 * 25 * conv2.out_channels
    assert costs["conv1"] >= own + consumer and costs["conv1"] > costs["fc1"] > 0
    with pytest.raises(ValueError, match="unknown cost 'flops'"):
        unit_costs(model, {"conv1": 6}, x, "flops")


def test_a_cost_aware_global_plan_meets_the_target_and_spares_cheap_units():
    model = build_model("lenet5", seed=0)
    x = torch.randn(2, 1, 28, 28)
    layers = prunable_layers(model, x)
    for seed in range(3):
        scores = {n: np.abs(s) for n, s in _scores(layers, seed).items()}
        plan = make_plan(model, scores, "macs=0.5", x, global_=True, cost="macs")
        pruned = apply_removals(model, plan.removals, x)
        reduction = 1 - count_macs(pruned, x) / count_macs(model, x)
        assert 0.5 <= reduction < 0.52 and plan.info["cost"] == "macs"
    # equal values: the units that cost most go first, conv1's before fc1's
    alike = {name: np.ones(u.n_players) for name, u in layers.items()}
    plan = make_plan(
        model, alike, "channels=0.1", x, global_=True, cost="macs", normalisation="none"
    )
    assert plan.removals["conv1"] and not plan.removals["fc1"]
    with pytest.raises(ValueError, match="needs global_=True"):
        make_plan(model, alike, "macs=0.5", x, cost="macs")


def test_the_search_finds_the_first_amount_meeting_the_target_within_its_bound():
    """Regula falsi with bisection steps, against a linear scan, on monotone step functions
    (flat stretches, jumps, curvature): the same answer, within ``probe_bound`` probes."""
    import numpy as np

    from shapprune.pruning.plan import _smallest_meeting, probe_bound

    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(2, 400))
        steps = rng.random(n) ** (1 + 3 * rng.random()) * (rng.random(n) < 0.7)
        values = np.cumsum(steps) / max(steps.sum(), 1e-9)  # 0 ... 1, monotone
        amounts = list(np.linspace(0, 1, n))
        table = dict(zip(amounts, values, strict=True))
        fraction = float(rng.uniform(0.01, 1.0)) if trial % 7 else float(values[0])
        probes = []

        def reduction(a, table=table, probes=probes):
            probes.append(a)
            return table[a]

        first = next(a for a, v in zip(amounts, values, strict=True) if v >= fraction)
        assert _smallest_meeting(reduction, fraction, amounts) == first
        assert len(set(probes)) <= probe_bound(n)


def test_a_macs_plan_measures_fewer_candidates_than_bisection_and_the_same_set():
    from shapprune.pruning.plan import _amounts, probe_bound

    model = build_model("vgg", seed=0)
    x = torch.randn(2, 1, 28, 28)
    layers = prunable_layers(model, x)
    scores = _scores(layers)
    calls = []

    def apply(m, removals):
        calls.append(sum(len(v) for v in removals.values()))
        return apply_removals(m, removals, x, units=layers)

    plan = make_plan(model, scores, "macs=0.5", x, global_=True, apply=apply, units=layers)
    sizes = {k: len(v) for k, v in scores.items()}
    assert (
        len(calls) <= probe_bound(len(_amounts(sizes, True))) and len(calls) < 16
    )  # bisection: 16
    one_fewer = {k: list(v) for k, v in plan.removals.items()}  # the plan less its last unit
    flat = sorted(
        (s / np.abs(scores[k]).sum(), k, i) for k, v in plan.removals.items() for i in v
        for s in [scores[k][i]]
    )  # fmt: skip
    _, layer, unit = flat[-1]
    one_fewer[layer].remove(unit)
    smaller = apply_removals(model, one_fewer, x)
    assert 1 - count_macs(smaller, x) / count_macs(model, x) < 0.5 <= plan.achieved
