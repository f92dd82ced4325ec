"""Acting on plans: masking equals removal, saved models load back, bad input refused."""

import json

import pytest
import torch
import torchvision
from helpers import EncoderClassifier, randomise_norms

from shapprune.pruning.removal import apply_removals, history
from shapprune.sources.checkpoint import load_checkpoint, save_pruned
from shapprune.zoo.models import build_model


def _half(model, layers, x):
    from shapprune.game.units import find_units

    return {name: list(range(0, find_units(model, name, x).n_players, 2)) for name in layers}


CASES = [
    (lambda: build_model("lenet5", seed=0), ["conv1", "conv2", "fc1"], (1, 28, 28)),
    (lambda: build_model("vgg", seed=0), ["features.0", "features.4", "classifier.0"], (1, 28, 28)),
    (
        lambda: build_model("resnet20", seed=0),
        ["conv1", "layer2.0.conv1", "layer3.0.conv2"],
        (1, 28, 28),
    ),
    (lambda: build_model("vit", seed=0), ["blocks.0.attn", "blocks.1.mlp.fc1"], (1, 28, 28)),
    (
        lambda: torchvision.models.resnet18(num_classes=10),
        ["layer1.0.conv1", "layer3.0.conv2"],
        (3, 32, 32),
    ),
    (
        lambda: torchvision.models.vgg11_bn(num_classes=10),
        ["features.4", "classifier.0"],
        (3, 32, 32),
    ),
    (
        lambda: torchvision.models.vit_b_16(image_size=32, num_classes=10),
        ["encoder.layers.encoder_layer_1.self_attention", "encoder.layers.encoder_layer_3.mlp.0"],
        (3, 32, 32),
    ),
    (
        lambda: EncoderClassifier(batch_first=True),
        ["encoder.layers.0.self_attn", "encoder.layers.1.linear1", "encoder.layers.1.self_attn"],
        (3, 32, 32),
    ),
    (
        lambda: EncoderClassifier(batch_first=False),
        ["encoder.layers.0.self_attn", "encoder.layers.0.linear1"],
        (3, 32, 32),
    ),
]


@pytest.mark.parametrize(
    "build,layers,shape",
    CASES,
    ids=["lenet5", "vgg", "resnet20", "vit", "tv-resnet18", "tv-vgg11_bn", "tv-vit_b_16",
         "encoder-batch-first", "encoder-seq-first"],
)  # fmt: skip
def test_masked_equals_physically_pruned(build, layers, shape):
    torch.manual_seed(0)
    model = randomise_norms(build())
    x = torch.randn(4, *shape)
    removals = _half(model, layers, x[:2])
    masked = apply_removals(model, removals, x[:2], mode="mask")
    removed = apply_removals(model, removals, x[:2], mode="remove")
    assert sum(p.numel() for p in removed.parameters()) < sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in masked.parameters()) == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(masked(x), removed(x), atol=1e-4, rtol=1e-4)
    from shapprune.game.units import is_attention

    # in the order given, attention heads last (a swapped attention leaves the graph behind)
    heads = [layer for layer in layers if is_attention(model.get_submodule(layer))]
    expected = [layer for layer in layers if layer not in heads] + heads
    assert [step["layer"] for step in history(removed)] == expected


def test_heads_are_removed_and_num_heads_updated():
    model = build_model("vit", seed=0, num_heads=4)
    x = torch.randn(2, 1, 28, 28)
    removed = apply_removals(model, {"blocks.1.attn": [0, 2]}, x)
    assert removed.blocks[1].attn.num_heads == 2 and model.blocks[1].attn.num_heads == 4
    assert removed.blocks[1].attn.qkv.out_features == 3 * 32
    with torch.no_grad():
        assert removed(x).shape == (2, 10)


def test_save_load_round_trip_and_refusals(tmp_path):
    model = build_model("resnet20", seed=3)
    x = torch.randn(3, 1, 28, 28)
    pruned = apply_removals(model, {"layer1.0.conv1": [1, 2, 3], "conv1": [0, 5]}, x[:2])
    pruned = apply_removals(pruned, {"layer3.0.conv1": list(range(10))}, x[:2])  # a second step
    save_pruned(
        tmp_path / "p",
        pruned,
        base={"model": "resnet20", "config": {"seed": 3}},
        input_shape=(1, 28, 28),
    )
    meta = json.loads((tmp_path / "p.json").read_text())
    assert [s["layer"] for s in meta["pruning"]["history"]] == [
        "layer1.0.conv1",
        "conv1",
        "layer3.0.conv1",
    ]
    loaded, _ = load_checkpoint(tmp_path / "p.json")
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    with pytest.raises(FileExistsError):
        save_pruned(
            tmp_path / "p",
            pruned,
            base={"model": "resnet20", "config": {}},
            input_shape=(1, 28, 28),
        )
    (tmp_path / "p.safetensors").write_bytes(b"\x80\x04not safetensors at all")
    with pytest.raises(ValueError, match="is not a valid safetensors file"):
        load_checkpoint(tmp_path / "p")


def test_bad_removals_are_refused():
    model = build_model("lenet5", seed=0)
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(ValueError, match=r"has units 0..19; got \[20\]"):
        apply_removals(model, {"conv1": [20]}, x)
    with pytest.raises(ValueError, match="would empty 'conv1'"):
        apply_removals(model, {"conv1": list(range(20))}, x)
    with pytest.raises(ValueError, match="no layer named 'conv3'"):
        apply_removals(model, {"conv3": [0]}, x)
    with pytest.raises(ValueError, match="unknown mode 'zero'"):
        apply_removals(model, {"conv1": [0]}, x, mode="zero")


def test_torchvision_vit_heads_round_trip(tmp_path):
    model = build_model("torchvision:vit_b_16", image_size=32, seed=4)
    x = torch.randn(2, 3, 32, 32)
    layer = "encoder.layers.encoder_layer_0.self_attention"
    pruned = apply_removals(model, {layer: [2, 5]}, x)
    pruned = apply_removals(pruned, {layer: [0]}, x)  # heads of the already slimmed module
    assert pruned.get_submodule(layer).num_heads == 9
    config = {"image_size": 32, "seed": 4}
    save_pruned(tmp_path / "v", pruned, base={"model": "torchvision:vit_b_16", "config": config},
                input_shape=(3, 32, 32))  # fmt: skip
    loaded, _ = load_checkpoint(tmp_path / "v")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x), atol=0, rtol=0)
    with pytest.raises(ValueError, match="torchvision has no model 'resnet9000'"):
        build_model("torchvision:resnet9000")


@pytest.mark.parametrize("mode", ["mask", "remove"])
def test_units_passed_on_give_the_same_model(mode, monkeypatch):
    from shapprune.game import units as units_module
    from shapprune.game.units import layer_units
    from shapprune.pruning import removal

    model = randomise_norms(build_model("resnet20", seed=0))
    x = torch.randn(3, 1, 28, 28)
    layers = ["conv1", "layer2.0.conv1", "layer3.0.conv2"]
    removals = _half(model, layers, x[:2])
    expected = apply_removals(model, removals, x[:2], mode=mode)
    known = layer_units(model, layers, x[:2])
    found = []
    monkeypatch.setattr(removal, "find_units", lambda *a, **k: found.append(a[1]) or
                        units_module.find_units(*a, **k))  # fmt: skip
    got = apply_removals(model, removals, x[:2], mode=mode, units=known)
    assert found == []  # none found again
    with torch.no_grad():
        torch.testing.assert_close(got(x), expected(x), atol=1e-5, rtol=1e-5)
    assert history(got) == history(expected)


def test_a_layer_coupled_to_an_earlier_removal_is_found_anew():
    from shapprune.game.units import layer_units

    model = build_model("resnet20", seed=0)
    x = torch.randn(2, 1, 28, 28)
    # conv1 and layer1.0.conv2 write the same residual stream: removing from one narrows both
    known = layer_units(model, ["conv1", "layer1.0.conv2"], x)
    assert "layer1.0.conv2" in known["conv1"].coupled
    n = known["conv1"].n_players
    removals = {"conv1": [0, 1], "layer1.0.conv2": [n - 1]}  # valid only for the old width
    with pytest.raises(ValueError, match=f"units 0..{n - 3}"):
        apply_removals(model, removals, x, units=known)


@pytest.mark.parametrize("compensate", [False, True])
def test_a_pruned_copy_is_freed_without_the_garbage_collector(compensate):
    """The dependency graphs built on the copy are released: their reference cycles held
    every pruned copy of a plan's bisection until a full collection (gigabytes)."""
    import gc
    import weakref

    model = build_model("resnet20", seed=0).eval()
    x = torch.randn(2, 1, 28, 28)
    removals = _half(model, ["layer1.0.conv1", "layer2.0.conv2"], x)
    gc.collect()
    gc.disable()
    try:
        pruned = apply_removals(model, removals, x, compensate=x if compensate else None)
        alive = weakref.ref(pruned.layer2[0].conv2)
        del pruned
        assert alive() is None
    finally:
        gc.enable()


GRAPH_CASES = {
    "resnet20": (lambda: build_model("resnet20", seed=0), (1, 28, 28)),
    "vit": (lambda: build_model("vit", seed=0), (1, 28, 28)),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (3, 32, 32)),
    "densenet": (lambda: torchvision.models.DenseNet(8, (2, 2), 16, num_classes=10), (3, 32, 32)),
    "shufflenet": (lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=10), (3, 32, 32)),
    "mobilenet_v3": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), (3, 32, 32)),
}  # concatenations (DenseNet), channel shuffles (ShuffleNet), heads (ViT)


@pytest.mark.parametrize("name", GRAPH_CASES)
def test_a_copy_made_with_the_models_graph_prunes_as_a_fresh_graph_does(name):
    """Removal through the graph copied with the model (``copy_with_graph``) gives the same
    model, zeroed or compensated, as removal through graphs built on the copy; the graph
    given is left describing its own model, unchanged."""
    from shapprune.game.units import build_graph
    from shapprune.pruning.plan import prunable_layers

    make, shape = GRAPH_CASES[name]
    torch.manual_seed(0)
    model = randomise_norms(make())
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    graph = build_graph(model, x[:2])
    units = prunable_layers(model, x[:2], graph)
    removals = {name: list(range(0, u.n_players, 3)) for name, u in units.items()
                if u.n_players > 3}  # fmt: skip
    nodes = {id(n) for n in graph.module2node.values()}
    for fill in (None, x):
        fresh = apply_removals(model, removals, x[:2], units=units, compensate=fill)
        copied = apply_removals(model, removals, x[:2], units=units, compensate=fill,
                                graph=graph)  # fmt: skip
        assert {k: v.shape for k, v in copied.state_dict().items()} == {
            k: v.shape for k, v in fresh.state_dict().items()}  # fmt: skip
        with torch.no_grad():
            torch.testing.assert_close(copied(x), fresh(x), rtol=0, atol=0)
    assert {id(n) for n in graph.module2node.values()} == nodes
    mine = set(dict(model.named_modules()).values())
    layers = {m for m in graph.module2node if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)}
    assert layers and layers <= mine  # the original's layers, not a copy's
    assert prunable_layers(model, x[:2], graph).keys() == units.keys()  # still the model's


def _hf_vit():
    import tempfile

    from helpers import save_tiny_hf_vit

    from shapprune.sources.models import LogitsOf

    with tempfile.TemporaryDirectory() as folder:
        vit = save_tiny_hf_vit(folder, image_size=32, patch_size=8, num_channels=3,
                               num_hidden_layers=2, num_attention_heads=4)  # fmt: skip
    return LogitsOf(vit)


ATTENTION_CASES = {
    "zoo-vit": (lambda: build_model("vit", seed=0), (1, 28, 28)),
    "tv-vit": (
        lambda: torchvision.models.VisionTransformer(32, 8, 2, 4, 32, 64, num_classes=10),
        (3, 32, 32),
    ),  # fmt: skip
    "hf-vit": (_hf_vit, (3, 32, 32)),
}


@pytest.mark.parametrize("name", ATTENTION_CASES)
def test_heads_and_neurons_in_one_call_as_layer_by_layer(name):
    """One call removing heads and MLP neurons of every block (heads last, one graph kept
    across layers where it still holds) builds the model that one call per layer (a graph
    each) builds."""
    from shapprune.pruning.plan import prunable_layers

    make, shape = ATTENTION_CASES[name]
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    units = prunable_layers(model, x[:2])
    removals = {layer: list(range(0, u.n_players, 2)) for layer, u in units.items()}
    assert {u.kind for u in units.values()} >= {"heads"} and len(removals) >= 4
    once = apply_removals(model, removals, x[:2])
    step = model
    for layer, idxs in removals.items():
        step = apply_removals(step, {layer: idxs}, x[:2])
    assert {k: v.shape for k, v in once.state_dict().items()} == {
        k: v.shape for k, v in step.state_dict().items()}  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(once(x), step(x), rtol=0, atol=0)
