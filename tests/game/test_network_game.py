"""The network game: the units of many layers as players; masking equals removing their union."""

import numpy as np
import pytest
import torch
import torchvision
from helpers import F32_ACROSS_SHAPES, randomise_norms
from torch import nn

from shapprune.estimators.registry import estimate
from shapprune.game.network_game import NetworkGame
from shapprune.game.pruning_game import PruningGame, metric_sums
from shapprune.pruning.plan import prunable_layers
from shapprune.pruning.removal import apply_removals
from shapprune.zoo.models import build_model


def _data(shape, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def _keep_and_removals(game, seed=0, p_drop=0.4):
    """A random coalition keeping at least one unit of each layer (removal never empties a
    layer), and the same coalition as ``apply_removals`` takes it."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(game.n_players, generator=g) > p_drop
    removals = {}
    for layer in game.layers:
        sl = game.players_of(layer)
        keep[sl.start] = True
        removals[layer] = (~keep[sl]).nonzero().flatten().tolist()
    return keep, removals


def _assert_masking_equals_removal(model, game, x, y, seed=0):
    keep, removals = _keep_and_removals(game, seed)
    assert sum(map(len, removals.values())) > 0.2 * game.n_players
    pruned = apply_removals(model, removals, x[:2], mode="remove")
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        expected, full = pruned(x), model(x)
    assert (expected - full).abs().max() > 1e-2  # the removal changed the outputs
    torch.testing.assert_close(game.logits(keep), expected, atol=1e-5, rtol=1e-5)
    reference = metric_sums(expected[None], y, game.metric).item() / len(y)
    assert game.value(keep).item() == pytest.approx(reference, abs=F32_ACROSS_SHAPES)


ZOO = [
    ("lenet5", (1, 28, 28)),  # conv -> conv -> flatten -> linear neurons
    ("vgg", (3, 32, 32)),  # BatchNorm after every conv
    ("resnet20", (3, 32, 32)),  # coupled residual channels: one player per stream channel
    ("vit", (1, 28, 28)),  # heads and MLP neurons of every block
]


@pytest.mark.parametrize("name,shape", ZOO, ids=[c[0] for c in ZOO])
def test_masking_equals_removal_of_the_union_on_zoo_models(name, shape):
    model = randomise_norms(build_model(name, in_channels=shape[0], image_size=shape[1], seed=1))
    x, y = _data(shape)
    game = NetworkGame(model, (x, y), metric="margin")
    assert game.cached
    assert game.layers == list(prunable_layers(model, x[:2]))  # every prunable layer
    assert len(game.layers) >= 3
    _assert_masking_equals_removal(model, game, x, y)


def _torchvision_vit():
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(num_classes=10, image_size=32)
    nn.init.normal_(model.heads.head.weight, std=0.05)  # torchvision zeroes the classifier
    blocks = "encoder.layers.encoder_layer_"
    layers = [f"{blocks}0.self_attention", f"{blocks}0.mlp.0", f"{blocks}11.self_attention",
              f"{blocks}11.mlp.0"]  # fmt: skip
    return model.eval(), layers


TORCHVISION = {
    "resnet18": lambda: (torchvision.models.resnet18(num_classes=10), None),
    "vgg11_bn": lambda: (
        torchvision.models.vgg11_bn(num_classes=10),
        ["features.0", "features.4", "features.8", "features.15", "classifier.0"],
    ),
    "vit_b_16": _torchvision_vit,
}


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_masking_equals_removal_of_the_union_on_torchvision_models(name):
    torch.manual_seed(0)
    model, layers = TORCHVISION[name]()
    model = randomise_norms(model)
    x, y = _data((3, 32, 32), n=3)
    game = NetworkGame(model, (x, y), layers, metric="margin")
    assert game.cached and game.layers == (layers or list(prunable_layers(model, x[:2])))
    _assert_masking_equals_removal(model, game, x, y)


class _Concat(nn.Module):
    """Two convolutions concatenated into one consumer: two layers' mask points on one input."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(7)
        self.mix = nn.Conv2d(7, 5, 3)
        self.fc = nn.Linear(5, 10)

    def forward(self, x):
        h = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))
        return self.fc(torch.relu(self.mix(h)).mean((2, 3)))


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "hooks"])
def test_a_consumer_fed_by_several_layers_is_masked_by_each(cache):
    torch.manual_seed(0)
    model = randomise_norms(_Concat())
    x, y = _data((1, 8, 8))
    game = NetworkGame(model, (x, y), ["a", "b", "mix"], metric="margin", cache=cache)
    assert game.n_players == 12 and game.cached == cache
    assert game.players[2:4] == ["a:ch2", "b:ch0"]
    _assert_masking_equals_removal(model, game, x, y, seed=3)
    # dropping all of b's channels but one, and none of a's, is seen by the consumer
    keep = torch.ones(12, dtype=torch.bool)
    keep[game.players_of("b")] = torch.tensor([True, False, False, False])
    assert game.value(keep) != game.value(torch.ones(12, dtype=torch.bool))


def test_one_layer_of_the_network_game_is_that_layer_s_pruning_game():
    model = randomise_norms(build_model("resnet20", in_channels=1, image_size=28, seed=2))
    x, y = _data((1, 28, 28), n=8)
    game = NetworkGame(model, (x, y), ["conv1", "layer2.0.conv1", "layer3.1.conv1"])
    layer = "layer2.0.conv1"
    one = PruningGame(model, layer, (x, y))
    sl = game.players_of(layer)
    assert game.players[sl] == one.players and sl == slice(16, 48)
    sub = torch.rand(5, one.n_players, generator=torch.Generator().manual_seed(0)) > 0.5
    masks = torch.ones(5, game.n_players, dtype=torch.bool)
    masks[:, sl] = sub
    torch.testing.assert_close(game.value(masks), one.value(sub), atol=F32_ACROSS_SHAPES, rtol=0)
    # the layers' players interact: dropping two layers is not the sum of dropping each
    a, b = game.players_of("conv1"), game.players_of("layer3.1.conv1")
    drops = torch.ones(4, game.n_players, dtype=torch.bool)
    drops[1, a], drops[2, b], drops[3, a], drops[3, b] = False, False, False, False
    v = game.value(drops)
    assert abs((v[3] - v[0]) - (v[1] - v[0]) - (v[2] - v[0])) > 1e-4


def test_cache_stacking_memory_and_hooks_change_nothing():
    model = randomise_norms(build_model("vgg", in_channels=3, image_size=32, seed=0))
    x, y = _data((3, 32, 32), n=10)
    fast = NetworkGame(model, (x, y), batch_size=4, max_stack=4)
    masks = torch.rand(7, fast.n_players, generator=torch.Generator().manual_seed(0)) > 0.3
    a = fast.value(masks)
    others = [
        NetworkGame(model, (x, y), max_stack=1),
        NetworkGame(model, (x, y), memory_mb=1e-3),  # one example per pass, no tables
        NetworkGame(model, (x, y), cache=False),  # forward pre-hooks on the whole network
    ]
    assert fast.stack_size() > 1 and others[1].batch_size == 1 and not others[2].cached
    for other in others:
        torch.testing.assert_close(other.value(masks), a, atol=F32_ACROSS_SHAPES, rtol=0)
    assert fast.n_evals == 7 and others[2].n_evals == 7


class _Toy(nn.Module):
    """Three layers of 4, 4 and 3 units: a network game of 11 players, exact in 2^11."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3)
        self.fc1, self.fc2 = nn.Linear(4 * 4 * 4, 3), nn.Linear(3, 10)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))


@pytest.fixture(scope="module")
def toy_game():
    torch.manual_seed(0)
    return NetworkGame(_Toy().eval(), _data((1, 8, 8), n=16))


def test_exact_shapley_on_a_small_network_game_is_efficient(toy_game):
    game = toy_game
    assert game.n_players == 11 and game.layers == ["conv1", "conv2", "fc1"]
    exact = estimate(game, "exact")
    full = game.value(torch.ones(11, dtype=torch.bool)).item()
    empty = game.value(torch.zeros(11, dtype=torch.bool)).item()
    assert exact.values.sum() == pytest.approx(full - empty, abs=1e-9)
    assert np.ptp(exact.values) > 0.01
    scores = game.scores(exact.values)
    assert list(scores) == game.layers and [len(s) for s in scores.values()] == [4, 4, 3]
    np.testing.assert_array_equal(scores["conv2"], exact.values[4:8])


@pytest.mark.parametrize("method", ["permutation", "kernel", "partial", "loo"])
def test_every_estimator_plays_the_network_game_unchanged(toy_game, method):
    exact = estimate(toy_game, "exact").values
    budget = 11 + 1 if method == "loo" else 600
    est = estimate(toy_game, method, budget=budget, seed=0)
    assert est.values.shape == (11,) and np.all(np.isfinite(est.values))
    assert est.n_evals <= budget
    if method != "loo":  # LOO is not the Shapley value; the samplers approach it
        corr = np.corrcoef(est.values, exact)[0, 1]
        assert corr > 0.9, corr
    again = estimate(toy_game, method, budget=budget, seed=0)
    np.testing.assert_array_equal(again.values, est.values)


def test_bad_input_gives_clear_errors():
    model = randomise_norms(build_model("resnet20", in_channels=1, image_size=28, seed=0))
    x, y = _data((1, 28, 28), n=4)
    with pytest.raises(ValueError, match="'conv1' and 'layer1.0.conv2' are coupled"):
        NetworkGame(model, (x, y), ["conv1", "layer1.0.conv2"])
    with pytest.raises(ValueError, match="no layer named 'conv9'"):
        NetworkGame(model, (x, y), ["conv1", "conv9"])
    with pytest.raises(ValueError, match="named more than once: conv1"):
        NetworkGame(model, (x, y), ["conv1", "conv1"])
    with pytest.raises(ValueError, match="at least one layer"):
        NetworkGame(model, (x, y), [])
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        NetworkGame(model, (x, y), metric="f1")
    game = NetworkGame(model, (x, y), ["conv1", "layer1.0.conv1"])
    with pytest.raises(ValueError, match=r"shape \(32,\).*network game over 2 layers"):
        game.value(torch.ones(16, dtype=torch.bool))
    with pytest.raises(ValueError, match="'fc' is not a layer of this game; its layers: conv1"):
        game.players_of("fc")
    with pytest.raises(ValueError, match="expected 32 values"):
        game.scores(np.zeros(16))


def test_units_passed_on_are_used_and_name_the_layers():
    model = build_model("lenet5", seed=0)
    x, y = _data((1, 28, 28), n=4)
    found = prunable_layers(model, x[:2])
    game = NetworkGame(model, (x, y), units=found)
    assert game.layers == list(found) and all(u is found[u.layer] for u in game.layer_units)
    only = NetworkGame(model, (x, y), ["fc1", "conv1"], units=found)  # the order asked for
    assert only.layers == ["fc1", "conv1"] and only.players[0] == "fc1:n0"
    masks = torch.rand(3, game.n_players, generator=torch.Generator().manual_seed(0)) > 0.5
    fresh = NetworkGame(model, (x, y))
    torch.testing.assert_close(game.value(masks), fresh.value(masks), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="units given for 'conv1' are 'conv2'.s"):
        NetworkGame(model, (x, y), ["conv1"], units={"conv1": found["conv2"]})
