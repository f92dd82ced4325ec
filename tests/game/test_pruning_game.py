"""The pruning game: masking equals physical removal, caching and stacking change nothing."""

import numpy as np
import pytest
import torch
import torchvision
from helpers import F32_ACROSS_SHAPES, randomise_norms
from torch import nn

from shapprune.estimators.registry import estimate
from shapprune.game.pruning_game import TABLE_STACK, PruningGame, metric_sums
from shapprune.game.split import SplitModel
from shapprune.game.tracing import trace
from shapprune.game.units import find_units
from shapprune.pruning.removal import remove_units
from shapprune.zoo.models import build_model


def _data(shape, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


CASES = [
    ("lenet5", "conv2", (1, 28, 28)),  # conv -> flatten -> linear consumer
    ("lenet5", "fc1", (1, 28, 28)),  # linear neurons
    ("vgg", "features.4", (3, 32, 32)),  # conv followed by BatchNorm
    ("resnet20", "layer1.1.conv2", (3, 32, 32)),  # residual stage: coupled producers
    ("resnet20", "layer2.0.conv1", (1, 28, 28)),
    ("vit", "blocks.1.attn", (1, 28, 28)),  # attention heads
    ("vit", "blocks.0.mlp.fc1", (3, 32, 32)),  # MLP neurons
]


def _removal_case(model, layer, shape, seed=0):
    x, y = _data(shape, seed=seed)
    game = PruningGame(model, layer, (x, y), metric="margin")
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(game.n_players, generator=g) > 0.4
    keep[0] = True
    removed = (~keep).nonzero().flatten().tolist()
    pruned = remove_units(model, layer, removed, x[:2])
    with torch.no_grad():
        expected = pruned(x)
    return game, keep, expected, pruned, x, y


@pytest.mark.parametrize("name,layer,shape", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_masking_equals_physical_removal(name, layer, shape):
    model = build_model(name, in_channels=shape[0], image_size=shape[1], seed=1)
    model = randomise_norms(model)
    game, keep, expected, pruned, _, y = _removal_case(model, layer, shape)
    assert game.cached
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in pruned.parameters()) < n_params
    torch.testing.assert_close(game.logits(keep), expected, atol=1e-5, rtol=1e-5)
    value = game.value(keep).item()
    assert value == pytest.approx(
        metric_sums(expected[None], y, "margin").item() / len(y), abs=1e-5
    )


@pytest.mark.parametrize(
    "builder,layer",
    [
        (lambda: torchvision.models.resnet18(num_classes=10), "layer2.0.conv2"),
        (lambda: torchvision.models.vgg11_bn(num_classes=10), "features.4"),
    ],
    ids=["resnet18-stage", "vgg11_bn-conv"],
)
def test_masking_equals_removal_on_torchvision_models(builder, layer):
    torch.manual_seed(0)
    model = randomise_norms(builder())
    game, keep, expected, _, _, _ = _removal_case(model, layer, (3, 32, 32))
    torch.testing.assert_close(game.logits(keep), expected, atol=1e-4, rtol=1e-4)


def test_torchvision_vit_heads_are_players():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(32, 4, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64).eval()
    x, y = _data((3, 32, 32))
    game = PruningGame(model, "encoder.layers.encoder_layer_1.self_attention", (x, y))
    assert game.n_players == 4 and game.cached
    with torch.no_grad():
        full = model(x)
    torch.testing.assert_close(
        game.logits(torch.ones(4, dtype=torch.bool)), full, atol=1e-5, rtol=0
    )
    # removing head 2 by hand: zero its slice of the concatenated heads before out_proj
    attn = model.encoder.layers.encoder_layer_1.self_attention
    handle = attn.out_proj.register_forward_pre_hook(
        lambda m, a: (a[0] * (torch.arange(32) // 8 != 2).float(),)
    )
    from shapprune.game.tracing import explicit_mha

    original = attn.forward
    attn.forward = lambda q, k, v, **kw: explicit_mha(attn, q, k, v, **kw)
    try:
        with torch.no_grad():
            by_hand = model(x)
    finally:
        attn.forward = original
        handle.remove()
    keep = torch.tensor([True, True, False, True])
    torch.testing.assert_close(game.logits(keep), by_hand, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layer", ["layer1.0.conv2", "layer3.1.conv1", "conv1"])
def test_cache_and_stacking_change_nothing(layer):
    model = randomise_norms(build_model("resnet20", in_channels=3, image_size=32, seed=2))
    x, y = _data((3, 32, 32), n=20)
    fast = PruningGame(model, layer, (x, y), batch_size=8, max_stack=4)
    one_at_a_time = PruningGame(model, layer, (x, y), max_stack=1)
    uncached = PruningGame(model, layer, (x, y), cache=False)
    masks = torch.rand(7, fast.n_players, generator=torch.Generator().manual_seed(0)) > 0.5
    a, b, c = fast.value(masks), one_at_a_time.value(masks), uncached.value(masks)
    torch.testing.assert_close(a, b, atol=F32_ACROSS_SHAPES, rtol=0)
    torch.testing.assert_close(a, c, atol=F32_ACROSS_SHAPES, rtol=0)
    assert fast.stack_size() > 1 and fast.decomposed > 0
    undecomposed = PruningGame(model, layer, (x, y), memory_mb=1e-3)
    assert undecomposed.decomposed == 0 and undecomposed.stack_size() == 1
    torch.testing.assert_close(a, undecomposed.value(masks), atol=F32_ACROSS_SHAPES, rtol=0)
    assert uncached.n_evals == 7 and not uncached.cached


def test_values_of_full_and_empty_coalitions():
    model = build_model("lenet5", seed=0)
    x, y = _data((1, 28, 28))
    with torch.no_grad():
        out = model(x)
    game = PruningGame(model, "conv1", (x, y), metric="loss")
    full = torch.ones(game.n_players, dtype=torch.bool)
    assert game.value(full).item() == pytest.approx(
        -nn.functional.cross_entropy(out, y).item(), abs=1e-5
    )
    # with every conv1 filter gone, conv2 sees zeros: the output is what biases alone give
    model_zero = build_model("lenet5", seed=0)
    with torch.no_grad():
        model_zero.conv1.weight.zero_()
        model_zero.conv1.bias.zero_()
        empty_out = model_zero(x)
    torch.testing.assert_close(game.logits(~full), empty_out, atol=1e-5, rtol=0)
    acc = PruningGame(model, "conv1", (x, y), metric="accuracy").value(full).item()
    assert acc == pytest.approx((out.argmax(1) == y).float().mean().item())


def test_metrics_by_hand():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 3.0, 1.0]]])
    y = torch.tensor([0, 2])
    assert metric_sums(logits, y, "accuracy").item() == 1.0
    assert metric_sums(logits, y, "margin").item() == pytest.approx((2.0 - 0.0) + (1.0 - 3.0))
    expected = -(nn.functional.cross_entropy(logits[0], y, reduction="sum").item())
    assert metric_sums(logits, y, "loss").item() == pytest.approx(expected)


def test_value_counts_evaluations_and_uses_exactly_the_data():
    model = build_model("lenet5", seed=0)
    x, y = _data((1, 28, 28), n=10)
    game = PruningGame(model, "conv2", (x, y))
    masks = torch.ones(3, game.n_players, dtype=torch.bool)
    masks[1, :10] = False
    v = game.value(masks)
    assert v.shape == (3,) and game.n_evals == 3
    assert v[0] == v[2] and v[1] != v[0]
    single = game.value(masks[1])
    assert single.dim() == 0 and game.n_evals == 4
    assert single.item() == pytest.approx(v[1].item(), abs=F32_ACROSS_SHAPES)
    assert game.players[:2] == ["conv2:ch0", "conv2:ch1"] and game.n_players == 50


def test_bad_input_gives_clear_errors():
    model = build_model("lenet5", seed=0)
    x, y = _data((1, 28, 28), n=4)
    with pytest.raises(ValueError, match="no layer named 'conv9'.*prunable layers: conv1, conv2"):
        PruningGame(model, "conv9", (x, y))
    with pytest.raises(ValueError, match="has no prunable units"):
        PruningGame(build_model("vgg", seed=0), "features", (x, y))
    with pytest.raises(ValueError, match="classifier's outputs are not prunable"):
        PruningGame(model, "fc2", (x, y))
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        PruningGame(model, "conv1", (x, y), metric="f1")
    game = PruningGame(model, "conv1", (x, y))
    with pytest.raises(ValueError, match=r"masks must have shape \(20,\)"):
        game.value(torch.ones(5, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool tensor"):
        game.value(torch.ones(20))
    with pytest.raises(ValueError, match="labels y of shape"):
        PruningGame(model, "conv1", (x, y[:2]))
    vit = build_model("vit", seed=0)
    with pytest.raises(ValueError, match="coupled to .*LayerNorm"):
        PruningGame(vit, "blocks.0.attn.proj", (x, y))


def test_estimators_on_a_trained_layer_approach_exact(mnist5k, tiny_cnn):
    from shapprune.zoo.data import reference_set

    ref = reference_set(mnist5k.val, per_class=20, seed=0)
    game = PruningGame(tiny_cnn, "conv1", ref)
    assert game.n_players == 8
    exact = estimate(game, "exact")
    spread = np.ptp(exact.values)
    assert spread > 0
    for method in ("permutation", "kernel"):
        err = {}
        for budget in (60, 1500):
            runs = [estimate(game, method, budget=budget, seed=s) for s in range(3)]
            err[budget] = np.mean([np.abs(r.values - exact.values).max() for r in runs])
            for r in runs:
                assert r.n_evals <= budget
        assert err[1500] < err[60], method
        big = estimate(game, method, budget=1500, seed=10)
        assert np.all(np.abs(big.values - exact.values) <= 4 * big.stderr + 1e-3 * spread)
    shallow = estimate(game, "partial", k=1)
    deep = estimate(game, "partial", k=3)
    full = estimate(game, "partial", k=4)
    e1, e3 = (np.abs(e.values - exact.values).max() for e in (shallow, deep))
    assert e3 < e1
    # partial re-evaluates the coalitions exact saw, in other stacks
    np.testing.assert_allclose(full.values, exact.values, atol=F32_ACROSS_SHAPES)


@pytest.mark.parametrize(
    "name,layer",
    [("resnet18", "layer2.1.conv1"), ("vit_tiny_patch16_224", "blocks.1.attn")],
)
def test_timm_models_mask_as_they_are_pruned(name, layer):
    import timm

    kwargs = {"img_size": 32, "patch_size": 4, "depth": 3} if "vit" in name else {}
    torch.manual_seed(0)
    model = randomise_norms(timm.create_model(name, num_classes=10, **kwargs))
    game, keep, expected, _, _, _ = _removal_case(model, layer, (3, 32, 32))
    assert game.cached
    torch.testing.assert_close(game.logits(keep), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cache", [True, False])
def test_memory_budget_shrinks_the_examples_per_pass(cache):
    model = randomise_norms(build_model("resnet20", in_channels=1, image_size=28)).eval()
    x, y = _data((1, 28, 28), n=32)
    roomy = PruningGame(model, "layer2.0.conv1", (x, y), cache=cache)
    per_example = roomy._per_coalition / len(x)
    budget_mb = 8 * per_example / 2**20  # room for one coalition over 8 examples
    tight = PruningGame(model, "layer2.0.conv1", (x, y), memory_mb=budget_mb, cache=cache)
    assert tight.batch_size == 8 and roomy.batch_size == len(x)
    assert tight.stack_size() * tight._per_coalition <= budget_mb * 2**20
    masks = torch.rand(20, roomy.n_players, generator=torch.Generator().manual_seed(0)) > 0.5
    torch.testing.assert_close(
        tight.value(masks), roomy.value(masks), rtol=0, atol=F32_ACROSS_SHAPES
    )


def test_tables_read_in_every_pass_get_a_stack_of_coalitions_per_read():
    # LeNet-5 conv1: conv2 runs from its per-player table even for one coalition, and 256
    # examples of conv2's outputs on would fill the working set with one coalition
    model = build_model("lenet5", seed=0)
    x, y = _data((1, 28, 28), n=256)
    game = PruningGame(model, "conv1", (x, y))
    assert game._split.tables_read_alone and game.stack_size() >= TABLE_STACK
    sizes = [len(cx) for cx, _ in game._chunks]  # passes of nearly equal sizes
    assert game.batch_size < len(x) and max(sizes) - min(sizes) < len(sizes)
    one = PruningGame(model, "conv1", (x, y), max_stack=1)  # a stack given: examples kept
    later = PruningGame(model, "conv2", (x, y))  # enough coalitions per pass already
    assert one.batch_size == len(x) and later.batch_size == len(x)
    masks = torch.rand(20, game.n_players, generator=torch.Generator().manual_seed(0)) > 0.5
    torch.testing.assert_close(game.value(masks), one.value(masks), rtol=0, atol=F32_ACROSS_SHAPES)


def test_metrics_match_float64_references_on_large_logits():
    g = torch.Generator().manual_seed(0)
    logits = 30 * torch.randn(3, 50, 7, generator=g)  # far from where exp() is safe
    y = torch.randint(0, 7, (50,), generator=g)
    wide = logits.double()
    loss = torch.stack([-nn.functional.cross_entropy(c, y, reduction="sum") for c in wide])
    torch.testing.assert_close(metric_sums(logits, y, "loss"), loss, rtol=1e-6, atol=1e-4)
    correct = wide.gather(2, y.view(1, -1, 1).expand(3, -1, 1)).squeeze(2)
    others = wide.scatter(2, y.view(1, -1, 1).expand(3, -1, 1), -float("inf")).amax(2)
    torch.testing.assert_close(metric_sums(logits, y, "margin"), (correct - others).sum(1))
    hits = (wide.argmax(2) == y).double().sum(1)
    assert torch.equal(metric_sums(logits, y, "accuracy"), hits)


@pytest.mark.parametrize("layer", ["conv2", "fc1"])
def test_weight_masked_linear_consumers_equal_masked_inputs(layer):
    model = build_model("lenet5", seed=0)
    x, _ = _data((1, 28, 28), n=12)
    units = find_units(model, layer, x[:2])
    points, n = units.mask_points, units.n_players
    folded = SplitModel(trace(model), points, x, n, mask_weights=True)
    copied = SplitModel(trace(model), points, x, n, mask_weights=False)
    assert [e.kind for e in folded.edges] == ["weights"]  # fc1 for conv2, fc2 for fc1
    assert [e.kind for e in copied.edges] == ["input"]
    masks = torch.rand(5, n, generator=torch.Generator().manual_seed(1)) > 0.5
    a = folded.run(folded.prepare(x), masks)
    b = copied.run(copied.prepare(x), masks)
    assert a.shape == (5, 12, 10)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_tables_are_built_only_for_passes_that_repay_reading_them():
    model = randomise_norms(build_model("resnet20", in_channels=3, image_size=32, seed=2))
    x, _ = _data((3, 32, 32), n=6)
    units = find_units(model, "layer1.0.conv2", x[:2])
    split = SplitModel(trace(model), units.mask_points, x, units.n_players, table_bytes=1e9)
    tabled = [j for j, e in enumerate(split.edges) if e.kind == "table"]
    assert tabled  # 3x3 convolutions of 16 channels: fan-in 144 >= 2 x 17
    masks = torch.rand(8, units.n_players, generator=torch.Generator().manual_seed(0)) > 0.5
    cache = split.prepare(x)
    one_by_one = torch.cat([split.run(cache, masks[i : i + 1]) for i in range(8)])
    assert all(cache.tables[j] is None for j in tabled)  # 144 < 10 x 17: the convolution ran
    together = split.run(cache, masks)
    assert all(cache.tables[j] is not None for j in tabled)  # 8 x 144 >= 10 x 17
    torch.testing.assert_close(one_by_one, together, atol=1e-5, rtol=1e-5)


def test_units_passed_on_give_the_same_game():
    model = build_model("lenet5", seed=0)
    x, y = _data((1, 28, 28), n=8)
    units = find_units(model, "conv2", x[:2])
    game = PruningGame(model, "conv2", (x, y), units=units)
    assert game.units is units
    masks = torch.rand(3, units.n_players, generator=torch.Generator().manual_seed(0)) > 0.5
    expected = PruningGame(model, "conv2", (x, y)).value(masks)
    torch.testing.assert_close(game.value(masks), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="'conv2'.s, not 'conv1'"):
        PruningGame(model, "conv1", (x, y), units=units)
