"""Prefix caching: the split model computes what the model computes, for any coalition."""

import pytest
import torch
from helpers import randomise_norms

from shapprune.game.split import SplitModel, _max_pool, tile
from shapprune.game.tracing import trace
from shapprune.game.units import find_units
from shapprune.zoo.models import build_model

CASES = [
    ("lenet5", "conv1", (1, 28, 28)),  # the suffix is nearly the network, a max pool in it
    ("lenet5", "conv2", (1, 28, 28)),  # flattened into a linear consumer
    ("lenet5", "fc1", (1, 28, 28)),  # linear neurons
    ("resnet20", "layer1.0.conv2", (1, 28, 28)),  # residual stream: many consumers
    ("vit", "blocks.0.attn", (1, 28, 28)),  # heads, masked before the projection
]
# how masked consumers fed by the prefix run: masked inputs, masked weights, output tables
WAYS = {"input": (0.0, False), "weights": (0.0, True), "table": (1e12, True)}


def _setup(name, layer, shape):
    model = randomise_norms(build_model(name, in_channels=shape[0], image_size=shape[1], seed=0))
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(0))
    return model, find_units(model, layer, x[:2]), x


def _masked_by_hooks(model, units, x, keep):
    """The model with the dropped players zeroed at their consumers, by forward pre-hooks."""
    modules = dict(model.named_modules())
    handles = []
    for point in units.mask_points:
        mask = point.channel_mask(keep[None])[0]

        def hook(_m, args, mask=mask, point=point):
            shape = [1] * args[0].dim()
            shape[point.channel_dim] = -1
            return (args[0] * mask.reshape(shape),) + args[1:]

        handles.append(modules[point.module].register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize("name,layer,shape", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_suffix_of_prefix_is_the_model_for_every_coalition(name, layer, shape, way):
    model, units, x = _setup(name, layer, shape)
    table_bytes, mask_weights = WAYS[way]
    split = SplitModel(trace(model), units.mask_points, x, units.n_players, table_bytes,
                       mask_weights)  # fmt: skip
    cache = split.prepare(x)
    n = units.n_players
    g = torch.Generator().manual_seed(1)
    masks = torch.cat([torch.ones(1, n, dtype=torch.bool), torch.rand(4, n, generator=g) > 0.5])
    logits = split.run(cache, masks)
    assert logits.shape == (5, len(x), 10)
    with torch.no_grad():
        torch.testing.assert_close(logits[0], model(x), atol=1e-5, rtol=1e-5)
    for keep, out in zip(masks, logits, strict=True):
        torch.testing.assert_close(out, _masked_by_hooks(model, units, x, keep), atol=1e-5,
                                   rtol=1e-5)  # fmt: skip


def test_the_ways_of_masking_are_chosen_as_asked():
    model, units, x = _setup("lenet5", "conv2", (1, 28, 28))
    kinds = {
        way: [
            e.kind
            for e in SplitModel(trace(model), units.mask_points, x, units.n_players, *args).edges
        ]  # fmt: skip
        for way, args in WAYS.items()
    }
    assert kinds == {"input": ["input"], "weights": ["weights"], "table": ["table"]}


def test_stacked_coalitions_equal_one_at_a_time_and_leave_the_cache_unchanged():
    model, units, x = _setup("resnet20", "layer1.0.conv2", (1, 28, 28))
    split = SplitModel(trace(model), units.mask_points, x, units.n_players)
    cache = split.prepare(x)
    before = [t.clone() for t in cache.tensors]
    masks = torch.rand(3, units.n_players, generator=torch.Generator().manual_seed(2)) > 0.3
    stacked = split.run(cache, masks)
    for j in range(3):
        torch.testing.assert_close(split.run(cache, masks[j : j + 1])[0], stacked[j], atol=1e-5,
                                   rtol=1e-5)  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(before, cache.tensors, strict=True))


def test_tile_stacks_copies_along_the_batch_dimension():
    value = torch.arange(6.0).reshape(2, 3)
    assert tile(value, 0, 3).tolist() == value.tolist() * 3
    assert torch.equal(tile(value, 1, 2), torch.cat([value, value], dim=1))


@pytest.mark.parametrize(
    "shape,window",
    [((3, 4, 8, 8), (2, 2)), ((2, 3, 9, 7), (2, 2)), ((2, 3, 9, 12), (3, 3)),
     ((5, 6, 6), (2, 3)), ((2, 3, 5, 5), (1, 1))],
)  # fmt: skip
def test_max_pool_by_strided_maximums_is_max_pool2d(shape, window):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    x.view(-1)[0] = float("nan")  # a NaN wins its window, as in max_pool2d
    expected = torch.nn.functional.max_pool2d(x, window)
    torch.testing.assert_close(_max_pool(x, window), expected, rtol=0, atol=0, equal_nan=True)


def test_only_non_overlapping_max_pools_of_the_suffix_are_rewritten_on_a_cpu():
    model, units, x = _setup("lenet5", "conv1", (1, 28, 28))
    # LeNet-5's own 2x2 pools, then overlapping 3x3 windows (stride 2): kept as they are
    pools = [(torch.nn.MaxPool2d(2), 50 * 4 * 4, True)]
    pools.append((torch.nn.MaxPool2d(3, stride=2), 50 * 3 * 3, False))
    for pool, features, rewritten in pools:
        model.pool2, model.fc1 = pool, torch.nn.Linear(features, 500)
        split = SplitModel(trace(model), units.mask_points, x, units.n_players)
        code = split.suffix.code
        assert ("_max_pool(" in code) == rewritten and ("pool2(" in code) != rewritten
        masks = torch.rand(4, units.n_players, generator=torch.Generator().manual_seed(3)) > 0.5
        logits = split.run(split.prepare(x), masks)
        for keep, out in zip(masks, logits, strict=True):
            torch.testing.assert_close(out, _masked_by_hooks(model, units, x, keep), atol=1e-5,
                                       rtol=1e-5)  # fmt: skip
