"""Tests for the model zoo."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from shapprune.zoo.models import MODELS, Attention, build_model

SHAPES = [(1, 28), (3, 32)]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("channels", "size"), SHAPES)
def test_output_shape_and_fx_trace(name: str, channels: int, size: int) -> None:
    model = build_model(name, in_channels=channels, image_size=size, num_classes=7)
    assert not model.training
    x = torch.randn(3, channels, size, size)
    with torch.no_grad():
        y = model(x)
        traced = torch.fx.symbolic_trace(model)
        assert torch.allclose(traced(x), y, atol=1e-6)
    assert y.shape == (3, 7)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_build_model_is_deterministic_given_seed(name: str) -> None:
    a = build_model(name, seed=3).state_dict()
    b = build_model(name, seed=3).state_dict()
    c = build_model(name, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_build_model_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("lenet5", seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'alexnet'") as info:
        build_model("alexnet")
    for name in MODELS:
        assert name in str(info.value)


def test_lenet5_layer_names_and_flatten_size() -> None:
    m28 = build_model("lenet5")
    m32 = build_model("lenet5", in_channels=3, image_size=32)
    assert (m28.conv1.out_channels, m28.conv2.out_channels) == (20, 50)
    assert (m28.fc1.in_features, m32.fc1.in_features) == (50 * 4 * 4, 50 * 5 * 5)
    assert (m28.fc1.out_features, m28.fc2.out_features) == (500, 10)


def test_resnet_structure_follows_depth_and_width() -> None:
    m = build_model("resnet20", depth=32, width=2)
    assert [len(m.layer1), len(m.layer2), len(m.layer3)] == [5, 5, 5]
    assert m.layer1[0].downsample is None
    assert isinstance(m.layer2[0].downsample[0], nn.Conv2d)
    assert m.layer2[0].conv1.stride == (2, 2)
    assert m.fc.in_features == 128
    with pytest.raises(ValueError, match="6n\\+2"):
        build_model("resnet20", depth=21)


def test_vgg_cfg_is_configurable() -> None:
    m = build_model("vgg", cfg=[8, "M", 16], hidden=None)
    convs = [layer for layer in m.features if isinstance(layer, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16]
    assert sum(isinstance(layer, nn.BatchNorm2d) for layer in m.features) == 2
    assert m.classifier[-1].in_features == 16
    with pytest.raises(ValueError, match="'X'"):
        build_model("vgg", cfg=[8, "X"])


def test_vit_is_timm_style() -> None:
    m = build_model("vit", in_channels=3, image_size=32)
    assert m.patch_embed.proj.kernel_size == (4, 4) == m.patch_embed.proj.stride
    assert m.pos_embed.shape == (1, 8 * 8 + 1, 64)
    assert len(m.blocks) == 4
    attn = m.blocks[0].attn
    assert isinstance(attn, Attention)
    assert (attn.num_heads, attn.head_dim) == (4, 16)
    assert attn.qkv.out_features == 192 and attn.proj.in_features == 64
    assert m.blocks[0].mlp.fc1.out_features == 128
    with pytest.raises(ValueError, match="patch_size 5"):
        build_model("vit", patch_size=5)


def test_attention_runs_after_a_head_is_physically_removed() -> None:
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=4).eval()
    x = torch.randn(2, 5, 16)
    keep = [0, 2, 3]  # drop head 1
    d = attn.head_dim

    # reference: zero head 1's output before proj
    def masked(x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = attn.qkv(x).reshape(B, N, 3, 4, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        o = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(-1) @ v
        o[:, 1] = 0
        return attn.proj(o.transpose(1, 2).reshape(B, N, C))

    rows = torch.cat(
        [torch.arange(s * 16 + h * d, s * 16 + (h + 1) * d) for s in range(3) for h in keep]
    )
    cols = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep])
    pruned = Attention(dim=16, num_heads=4)
    pruned.qkv = nn.Linear(16, len(rows))
    pruned.proj = nn.Linear(len(cols), 16)
    with torch.no_grad():
        pruned.qkv.weight.copy_(attn.qkv.weight[rows])
        pruned.qkv.bias.copy_(attn.qkv.bias[rows])
        pruned.proj.weight.copy_(attn.proj.weight[:, cols])
        pruned.proj.bias.copy_(attn.proj.bias)
        pruned.num_heads = 3
        assert torch.allclose(pruned(x), masked(x), atol=1e-6)
