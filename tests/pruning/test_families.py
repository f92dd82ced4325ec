"""Model families beyond plain convolution stacks: listed, ranked, pruned, masking = removal.

RegNet (torchvision and timm: grouped convolutions, whose units are their groups), ShuffleNet
(channel split and shuffle: the units inside a branch are prunable, those that go through a
shuffle are refused) and Swin (torchvision: MLP neurons; timm: heads too). Random weights,
64 x 64 inputs, three examples, one or two layers each. Models on nn.MultiheadAttention
(torchvision's ViT, a user's nn.TransformerEncoder either way round) pruned end to end.
"""

import time

import pytest
import timm
import torch
import torchvision
from helpers import TORCH_ATTENTION, randomise_norms, save_tiny_hf_vit, toy_splits
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer

from shapprune.criteria.registry import get_criterion
from shapprune.estimators.registry import estimate
from shapprune.game.pruning_game import PruningGame
from shapprune.game.units import find_units
from shapprune.pruning.compress import prune_model
from shapprune.pruning.defaults import PRUNE_DEFAULTS
from shapprune.pruning.plan import Target, prunable_layers
from shapprune.pruning.removal import apply_removals
from shapprune.sources.checkpoint import load_checkpoint, save_pruned
from shapprune.zoo.models import build_model

TOL = 1e-5  # float32 across batch shapes and CPUs


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 3, 64, 64, generator=g), torch.tensor([0, 1, 2])


def _tv(name: str):
    return randomise_norms(build_model(f"torchvision:{name}", num_classes=10, seed=0))


def _timm(name: str, **kwargs):
    torch.manual_seed(0)
    return randomise_norms(timm.create_model(name, pretrained=False, num_classes=10, **kwargs))


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _rank_prune_compare(model, layer: str, x, y, rank: bool = True):
    """Rank ``layer``'s units by the game (leave-one-out), remove the lower half physically
    (every other unit if not ``rank``), and check that the game's coalition computes what
    the pruned model computes (logits and value)."""
    game = PruningGame(model, layer, (x, y))
    drop = list(range(0, game.n_players, 2))
    if rank:
        est = estimate(game, "loo")
        values = torch.as_tensor(est.values)
        assert values.shape == (game.n_players,) and bool(values.isfinite().all())
        drop = sorted(int(i) for i in est.ranking[: game.n_players // 2])
    removed = apply_removals(model, {layer: drop}, x[:2])
    assert _params(removed) < _params(model)
    keep = torch.ones(game.n_players, dtype=torch.bool)
    keep[drop] = False
    with torch.no_grad():
        pruned, full = removed(x), model.eval()(x)
    torch.testing.assert_close(game.logits(keep), pruned, atol=TOL, rtol=TOL)
    assert (pruned - full).abs().max() > 100 * TOL  # the removal changed the outputs
    loss = torch.nn.functional.cross_entropy(pruned.double(), y)
    assert abs(float(game.value(keep)) + float(loss)) < TOL
    return game, removed, drop


def test_regnet_units_of_grouped_convolutions_are_their_groups(tmp_path):
    model = _tv("regnet_y_400mf")
    x, y = _data()
    layers = prunable_layers(model, x[:2])
    a, b = "trunk_output.block1.block1-0.f.a.0", "trunk_output.block1.block1-0.f.b.0"
    grouped = model.get_submodule(b)
    assert grouped.groups == 6 and grouped.out_channels == 48
    assert a in layers and b not in layers  # one layer: f.a's channels and f.b's groups
    units = layers[a]
    assert units.n_players == 6 and units.kind == "groups" and b in units.coupled
    assert units.names[5] == f"{a}:group5"
    assert find_units(model, b, x[:2]).n_players == 6  # the same groups, from the other side
    game, removed, drop = _rank_prune_compare(model, a, x, y)
    assert len(drop) == 3
    slim = removed.get_submodule(b)
    assert (slim.groups, slim.in_channels, slim.out_channels) == (3, 24, 24)
    assert slim.weight.shape == (24, 8, 3, 3)  # each group keeps its 8 input channels

    # a second step on the pruned model, then its history rebuilds it from the base model
    pruned = apply_removals(removed, {a: [0]}, x[:2])
    assert pruned.get_submodule(b).groups == 2
    config = {"seed": 0}
    save_pruned(tmp_path / "r", pruned, base={"model": "torchvision:regnet_y_400mf",
                "config": config}, input_shape=(3, 64, 64))  # fmt: skip
    loaded, _ = load_checkpoint(tmp_path / "r")
    assert loaded.get_submodule(b).groups == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x), atol=0, rtol=0)


def test_timm_regnetx_grouped_convolutions():
    model = _timm("regnetx_002")
    x, y = _data(1)
    layers = prunable_layers(model, x[:2])
    a, b = "s2.b1.conv1.conv", "s2.b1.conv2.conv"
    grouped = model.get_submodule(b)
    assert 1 < grouped.groups < grouped.in_channels and a in layers and b not in layers
    assert layers[a].n_players == grouped.groups
    _, removed, drop = _rank_prune_compare(model, a, x, y)
    assert removed.get_submodule(b).groups == grouped.groups - len(drop)


def test_shufflenet_branches_are_prunable_and_shuffled_channels_refused():
    model = _tv("shufflenet_v2_x0_5")
    x, y = _data(2)
    layers = prunable_layers(model, x[:2])
    assert "conv1.0" in layers and "conv5.0" in layers
    assert all(f"stage2.{i}.branch2.0" in layers for i in range(4))
    assert not any("branch1" in name or name.endswith("branch2.5") for name in layers)
    with pytest.raises(ValueError, match="'stage2.0.branch1.2' go through a channel shuffle"):
        find_units(model, "stage2.0.branch1.2", x[:2])
    _rank_prune_compare(model, "stage4.1.branch2.0", x, y)


def test_torchvision_swin_lists_fast_and_prunes_mlp_neurons():
    torch.manual_seed(0)
    model = torchvision.models.swin_t(weights=None, num_classes=10).eval()
    x, y = _data(3)
    start = time.perf_counter()
    layers = prunable_layers(model, x[:2])
    assert time.perf_counter() - start < 30  # was minutes, in torch-pruning's group search
    assert sorted(layers) == sorted(
        f"features.{s}.{b}.mlp.0" for s, n in ((1, 2), (3, 2), (5, 6), (7, 2)) for b in range(n)
    )
    with pytest.raises(ValueError, match="applies its projections as functions"):
        find_units(model, "features.1.0.attn", x[:2])
    with pytest.raises(ValueError, match="coupled to .*LayerNorm"):
        find_units(model, "features.2.reduction", x[:2])
    _rank_prune_compare(model, "features.5.3.mlp.0", x, y, rank=False)  # 1536 neurons

    # ranked on a small Swin of the same modules (leave-one-out on 384 neurons takes a minute)
    torch.manual_seed(0)
    small = SwinTransformer([4, 4], 16, [2, 2], [2, 4], [4, 4], mlp_ratio=2, num_classes=10)
    small = small.eval()
    expected = [f"features.{s}.{b}.mlp.0" for s in (1, 3) for b in (0, 1)]
    assert list(prunable_layers(small, x[:2])) == expected
    _rank_prune_compare(small, "features.3.0.mlp.0", x, y)


def test_timm_swin_heads_and_neurons():
    model = _timm("swin_tiny_patch4_window7_224", img_size=64)
    x, y = _data(4)
    layers = prunable_layers(model, x[:2])
    attn = "layers.1.blocks.0.attn"
    assert layers[attn].kind == "heads" and layers[attn].n_players == 6
    assert "layers.0.blocks.1.mlp.fc1" in layers
    _, removed, drop = _rank_prune_compare(model, attn, x, y)
    slim = removed.get_submodule(attn)
    assert slim.num_heads == 3 and slim.relative_position_bias_table.shape[-1] == 3
    _rank_prune_compare(model, "layers.0.blocks.1.mlp.fc1", x, y, rank=False)


def test_resnext_grouped_bottleneck():
    model = build_model("torchvision:resnext50_32x4d", num_classes=10, seed=0)
    x, _ = _data(5)
    units = find_units(model, "layer1.0.conv1", x[:2])
    assert units.n_players == 32 and "layer1.0.conv2" in units.coupled
    masked = apply_removals(model, {"layer1.0.conv1": [1, 5, 30]}, x[:2], mode="mask")
    removed = apply_removals(model, {"layer1.0.conv1": [1, 5, 30]}, x[:2])
    assert removed.layer1[0].conv2.groups == 29
    with torch.no_grad():
        torch.testing.assert_close(masked(x), removed(x), atol=TOL, rtol=TOL)


@pytest.mark.parametrize(
    ("name", "criterion", "options"),
    [
        ("torchvision-vit", PRUNE_DEFAULTS.criterion, {}),
        ("torchvision-vit", "shapley-permutation", {"budget": 260}),  # 64 MLP neurons: >= 254
        ("torchvision-vit", "weight-l1", {}),
        ("encoder-batch-first", PRUNE_DEFAULTS.criterion, {}),
        ("encoder-sequence-first", PRUNE_DEFAULTS.criterion, {}),
    ],
    ids=["tv-vit-lrp", "tv-vit-shapley", "tv-vit-l1", "encoder-batch-first", "encoder-seq-first"],
)
def test_torch_attention_models_prune_with_the_command_s_defaults(name, criterion, options):
    """Heads of nn.MultiheadAttention and MLP neurons, scored, planned on both scopes,
    removed zeroed and compensated (compensation "auto" builds both), refined."""
    model = TORCH_ATTENTION[name]()
    data = toy_splits(n=20)
    target = Target.parse("macs=0.5")
    pruned, summary = prune_model(  # as `shapprune prune` calls it, with a short refinement
        model, data, get_criterion(criterion, **options), target, global_="auto",
        cost=target.kind, refine=3, per_class=2,
    )  # fmt: skip
    assert summary["compensate"] == "auto" and summary["plans"][0]["compensated"] in (True, False)
    assert 0.5 <= 1 - summary["after"]["macs"] / summary["before"]["macs"] < 0.6
    heads = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    assert len(heads) == 2 and set(heads) <= set(summary["layers"])
    assert sum(summary["removed"].get(layer, 0) for layer in heads) > 0
    for layer in heads:
        assert pruned.get_submodule(layer).num_heads == 4 - summary["removed"].get(layer, 0)
    with torch.no_grad():
        out = pruned(data.test.x[:3])
    assert out.shape == (3, 10) and bool(out.isfinite().all())


def test_hugging_face_vit_heads_and_neurons_through_the_defaults(tmp_path):
    """A Hugging Face ViT from its folder: heads (separate q/k/v projections) and MLP neurons
    are players, masking computes what removal computes, prune's defaults meet the target,
    and the pruned model saves and reloads (its head counts follow the removal)."""
    from shapprune.sources.checkpoint import save_pruned
    from shapprune.sources.models import load_model

    save_tiny_hf_vit(tmp_path / "vit", image_size=32, patch_size=8, num_channels=3,
                     num_hidden_layers=2, num_attention_heads=4)  # fmt: skip
    model, meta = load_model(f"hf:{tmp_path / 'vit'}")
    data = toy_splits(n=20)
    x, y = data.val.x[:6], data.val.y[:6]
    layers = prunable_layers(model, x[:2])
    attn = [n for n, u in layers.items() if u.kind == "heads"]
    assert len(attn) == 2 and all(layers[n].n_players == 4 for n in attn)
    assert not [n for n in layers if n.endswith(("q_proj", "k_proj", "v_proj", "query"))]
    _, removed, drop = _rank_prune_compare(model, attn[0], x, y)
    assert removed.get_submodule(attn[0]).num_attention_heads == 4 - len(drop)
    pruned, summary = prune_model(model, data, target="macs=0.3", refine=3, per_class=2)
    assert 0.3 <= 1 - summary["after"]["macs"] / summary["before"]["macs"] < 0.4
    for layer in attn:
        cut = summary["removed"].get(layer, 0)
        assert pruned.get_submodule(layer).num_attention_heads == 4 - cut
    save_pruned(tmp_path / "out" / "model", pruned, base=meta, input_shape=(3, 32, 32))
    again, _ = load_model(str(tmp_path / "out"))
    with torch.no_grad():
        torch.testing.assert_close(again(x), pruned(x), atol=TOL, rtol=TOL)
    from shapprune.pruning.export import export_model

    done = export_model(pruned, x, "exported-program", tmp_path / "vit.pt2")  # checked inside
    assert done.max_abs_diff <= TOL and torch.export.load(done.path).module()(x).shape == (6, 10)
