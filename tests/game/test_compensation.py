"""Removal with compensation: masking still computes exactly what removal computes, and a
removed unit leaves its mean contribution behind."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import F32_ACROSS_SHAPES, TORCH_ATTENTION, randomise_norms
from torch import nn

from shapprune.game.compensation import compensation_matrix, consumer_means, fold_means
from shapprune.game.network_game import NetworkGame
from shapprune.game.pruning_game import PruningGame, metric_sums
from shapprune.game.units import find_units
from shapprune.pruning.removal import apply_removals
from shapprune.sources.checkpoint import load_checkpoint, save_pruned
from shapprune.zoo.models import build_model


def _data(shape, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def _coalition(game, seed=0, p_drop=0.4):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(game.n_players, generator=g) > p_drop
    removals = {}
    for layer in game.layer_slices:
        sl = game.players_of(layer)
        keep[sl.start] = True  # removal never empties a layer
        removals[layer] = (~keep[sl]).nonzero().flatten().tolist()
    return keep, removals


def _assert_equals_compensated_removal(model, game, x, y, reference, seed=0):
    keep, removals = _coalition(game, seed)
    pruned = apply_removals(model, removals, x[:2], compensate=reference)
    zeroed = apply_removals(model, removals, x[:2])
    with torch.no_grad():
        expected = pruned(x)
        assert (expected - zeroed(x)).abs().max() > 1e-2  # compensation changed the outputs
    torch.testing.assert_close(game.logits(keep), expected, atol=1e-5, rtol=1e-5)
    value = metric_sums(expected[None], y, game.metric).item() / len(y)
    assert game.value(keep).item() == pytest.approx(value, abs=F32_ACROSS_SHAPES)


ZOO = [
    ("lenet5", (1, 28, 28)),
    ("vgg", (3, 32, 32)),
    ("resnet20", (3, 32, 32)),
    ("vit", (1, 28, 28)),
]


@pytest.mark.parametrize("name,shape", ZOO, ids=[c[0] for c in ZOO])
def test_network_game_with_compensation_equals_compensated_removal(name, shape):
    model = randomise_norms(build_model(name, in_channels=shape[0], image_size=shape[1], seed=1))
    x, y = _data(shape)
    reference, _ = _data(shape, n=9, seed=5)  # means over other inputs than the game's
    game = NetworkGame(model, (x, y), metric="margin", compensate=reference)
    assert game.cached and game.compensated
    _assert_equals_compensated_removal(model, game, x, y, reference)


def test_a_game_given_the_means_already_read_plays_as_one_given_the_inputs():
    """prune reads the consumers' means once: a game given them (``consumer_means``)
    values every coalition as a game that reads them from the same inputs does."""
    model = randomise_norms(build_model("resnet20", in_channels=3, image_size=32, seed=1))
    x, y = _data((3, 32, 32))
    reference, _ = _data((3, 32, 32), n=9, seed=5)
    read = NetworkGame(model, (x, y), metric="margin", compensate=reference)
    points = [p for u in read.layer_units for p in u.mask_points]
    means = consumer_means(model, points, reference)
    given = NetworkGame(model, (x, y), metric="margin", compensate=means)
    assert given.compensated
    for seed in range(3):
        keep, _ = _coalition(read, seed)
        torch.testing.assert_close(given.logits(keep), read.logits(keep), atol=1e-5, rtol=1e-5)
    _assert_equals_compensated_removal(model, given, x, y, reference)


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "hooks"])
def test_one_layer_game_with_compensation_equals_removal_cached_or_not(cache):
    model = randomise_norms(build_model("vgg", in_channels=3, image_size=32, seed=0))
    x, y = _data((3, 32, 32), n=8)
    game = PruningGame(model, "features.4", (x, y), metric="margin", compensate=True, cache=cache)
    assert game.cached == cache
    _assert_equals_compensated_removal(model, game, x, y, x, seed=2)


def test_torchvision_resnet18_with_compensation_equals_removal():
    torch.manual_seed(0)
    model = randomise_norms(torchvision.models.resnet18(num_classes=10))
    x, y = _data((3, 32, 32), n=3)
    layers = ["conv1", "layer1.0.conv1", "layer2.1.conv1", "layer4.0.conv1"]
    game = NetworkGame(model, (x, y), layers, metric="margin", compensate=True)
    _assert_equals_compensated_removal(model, game, x, y, x, seed=1)


def test_the_empty_coalition_keeps_each_linear_consumer_at_its_mean_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    x, y = _data((5,), n=20)
    game = PruningGame(model, "0", (x, y), compensate=True)
    mean_hidden = torch.relu(model[0](x)).mean(0)
    expected = model[2](mean_hidden).expand(20, 3)  # every example gets the mean prediction
    torch.testing.assert_close(game.logits(torch.zeros(4, dtype=torch.bool)), expected)
    plain = PruningGame(model, "0", (x, y))
    torch.testing.assert_close(
        plain.logits(torch.zeros(4, dtype=torch.bool)), model[2].bias.expand(20, 3)
    )


def test_folding_adds_each_removed_channel_mean_times_its_summed_kernel():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3, bias=False)).eval()
    x = torch.randn(4, 1, 9, 9)
    point = find_units(model, "0", x[:2]).mask_points[0]
    means = consumer_means(model, [point], x)["2"]
    torch.testing.assert_close(means, torch.relu(model[0](x)).mean((0, 2, 3)))
    d = compensation_matrix(model[2], means)
    assert d.shape == (3, 2)
    folded = model
    fold_means(folded, [(point, [1])], x)
    torch.testing.assert_close(folded[2].bias, means[1] * model[2].weight[:, 1].sum((1, 2)))


def test_a_compensated_pruned_model_saves_and_loads_with_its_new_biases(tmp_path):
    config = {"in_channels": 3, "image_size": 32, "seed": 0}
    model = randomise_norms(build_model("vgg", **config))
    x, _ = _data((3, 32, 32), n=8)
    assert model.get_submodule("features.4").bias is None  # the consumer of features.0
    pruned = apply_removals(
        model, {"features.0": [0, 2], "features.4": [1, 5]}, x[:2], compensate=x
    )
    assert pruned.get_submodule("features.4").bias is not None
    save_pruned(
        tmp_path / "p", pruned, base={"model": "vgg", "config": config}, input_shape=(3, 32, 32)
    )
    loaded, _ = load_checkpoint(tmp_path / "p")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x))


def test_a_grouped_consumer_cannot_be_compensated():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2)).eval()
    x = torch.randn(2, 1, 8, 8)
    from shapprune.game.units import MaskPoint

    point = MaskPoint("2", 1, torch.arange(4))
    with pytest.raises(ValueError, match="only plain convolutions and linear layers"):
        consumer_means(model, [point], x)


class _Attending(nn.Module):
    """x (batch, tokens, features) through one ``nn.MultiheadAttention``, either layout."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
        with torch.no_grad():
            self.attn.in_proj_bias.normal_()  # torch initialises it to 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x if self.attn.batch_first else x.transpose(0, 1)
        out = self.attn(x, x, x)[0]
        return out if self.attn.batch_first else out.transpose(0, 1)


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "sequence-first"])
def test_a_torch_attention_s_out_proj_means_are_its_heads_mean_outputs(batch_first):
    """nn.MultiheadAttention never calls its out_proj; the means are measured all the same."""
    model = _Attending(batch_first)
    x = torch.randn(6, 5, 16)
    point = find_units(model, "attn", x[:2]).mask_points[0]
    assert point.module == "attn.out_proj"
    means = consumer_means(model, [point], x)["attn.out_proj"]
    w, b = model.attn.in_proj_weight.detach(), model.attn.in_proj_bias.detach()
    q, k, v = (
        F.linear(x, w[16 * i : 16 * (i + 1)], b[16 * i : 16 * (i + 1)])
        .reshape(6, 5, 4, 4)
        .transpose(1, 2)
        for i in range(3)
    )  # (examples, heads, tokens, head width)
    heads = ((q @ k.transpose(-2, -1)) / 2.0).softmax(-1) @ v
    expected = heads.transpose(1, 2).reshape(-1, 16).mean(0)  # head h: features 4h .. 4h + 3
    torch.testing.assert_close(means, expected, atol=1e-5, rtol=1e-5)
    assert not any(m._forward_pre_hooks or m._forward_pre_hooks_with_kwargs
                   for m in model.modules())  # fmt: skip


@pytest.mark.parametrize("build", TORCH_ATTENTION.values(), ids=TORCH_ATTENTION.keys())
def test_torch_attention_models_game_with_compensation_equals_compensated_removal(build):
    """Heads and MLP neurons of every block: removed heads leave their mean behind in
    out_proj's bias, as the game adds it."""
    model = build()
    x, y = _data((3, 32, 32))
    reference, _ = _data((3, 32, 32), n=9, seed=5)
    game = NetworkGame(model, (x, y), metric="margin", compensate=reference)
    assert game.cached and game.compensated
    assert sum(u.kind == "heads" for u in game.layer_units) == 2
    _assert_equals_compensated_removal(model, game, x, y, reference)
