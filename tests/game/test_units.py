"""The players of a layer: where they are masked, and the player <-> channel mapping."""

import pytest
import torch
import torch_pruning as tp
from helpers import EncoderClassifier
from torch import nn

from shapprune.game.units import (
    UNOWNED,
    MaskPoint,
    find_units,
    input_batch_dims,
    out_channel_pruner,
)
from shapprune.zoo.models import build_model


class Branches(nn.Module):
    """conv1 feeds a concatenation with conv2's output: conv3 reads conv1's channels at
    input channels 0..3 and conv2's at 4..5."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(1, 2, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 5 * 5, 5)

    def forward(self, x):
        x = torch.cat([torch.relu(self.conv1(x)), torch.relu(self.conv2(x))], dim=1)
        return self.fc(torch.relu(self.conv3(x)).flatten(1))


POINT = MaskPoint("m", 1, torch.tensor([1, UNOWNED, 0, 1, 2, UNOWNED]))


def test_channel_mask_follows_the_owners_and_keeps_unowned_channels():
    masks = torch.tensor([[True, False, True], [False, True, False], [False, False, False]])
    channel = POINT.channel_mask(masks)
    assert channel.dtype == torch.float32 and channel.shape == (3, 6)
    for row, players in zip(channel, masks, strict=True):
        for c, p in enumerate(POINT.player_of_channel.tolist()):
            assert row[c] == (1.0 if p == UNOWNED else float(players[p]))


def test_channels_round_trip_with_channel_mask():
    """The channels a mask zeroes are exactly the channels of the players it drops."""
    masks = torch.tensor([[True, False, True], [False, True, True], [True, True, True]])
    for row, players in zip(POINT.channel_mask(masks), masks, strict=True):
        dropped = (~players).nonzero().flatten().tolist()
        zeroed = (row == 0).nonzero().flatten()
        expected = POINT.channels(dropped) if dropped else torch.zeros(0, dtype=torch.long)
        assert zeroed.tolist() == expected.tolist()
    assert POINT.channels(UNOWNED).tolist() == [1, 5]
    assert POINT.channels([0, 2]).tolist() == [2, 4]


def test_one_channel_per_player_is_the_player_mask():
    point = MaskPoint("m", -1, torch.arange(4))
    masks = torch.rand(5, 4) > 0.5
    assert torch.equal(point.channel_mask(masks), masks.float())
    # fewer players than channels: not one-to-one, the owners are used
    wider = MaskPoint("m", -1, torch.tensor([0, 1, 1, UNOWNED]))
    assert wider.channel_mask(torch.tensor([[True, False]])).tolist() == [[1.0, 0.0, 0.0, 1.0]]


def test_per_player_sums_by_hand():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 6, 3, 4, generator=g, dtype=torch.float64)  # (examples, channels, h, w)
    per_channel = t.sum(dim=(0, 2, 3))
    expected = torch.stack(
        [per_channel[2], per_channel[0] + per_channel[3], per_channel[4]]
    )  # player 0: channel 2; player 1: channels 0 and 3; player 2: channel 4
    torch.testing.assert_close(POINT.per_player(t, 3), expected, rtol=0, atol=1e-12)
    by_example = POINT.per_player(t, 3, keep=1)
    assert by_example.shape == (2, 3) and by_example.dtype == torch.float64
    torch.testing.assert_close(by_example.sum(0), expected, rtol=0, atol=1e-12)
    out = torch.ones(2, 3, dtype=torch.float64)
    POINT.per_player(t, 3, keep=1, out=out)  # added into out
    torch.testing.assert_close(out, by_example + 1, rtol=0, atol=1e-12)
    # channels last (a linear layer's input)
    last = MaskPoint("m", -1, POINT.player_of_channel)
    torch.testing.assert_close(last.per_player(t.movedim(1, -1), 3), expected)


def test_concatenation_maps_consumer_channels_to_players():
    model = Branches().eval()
    x = torch.randn(2, 1, 5, 5)
    units = find_units(model, "conv2", x)
    assert units.kind == "channels" and units.n_players == 2
    assert units.names == ["conv2:ch0", "conv2:ch1"]
    (point,) = units.mask_points
    assert point.module == "conv3" and point.channel_dim == 1
    assert point.player_of_channel.tolist() == [UNOWNED] * 4 + [0, 1]
    # masking player 1 at conv3's input equals zeroing conv2's output channel 1
    hook = model.conv3.register_forward_pre_hook(
        lambda m, a: (a[0] * point.channel_mask(torch.tensor([[True, False]]))[:, :, None, None],)
    )
    with torch.no_grad():
        masked = model(x)
        hook.remove()
        model.conv2.weight[1] = 0
        model.conv2.bias[1] = 0
        torch.testing.assert_close(masked, model(x))


def test_flatten_maps_positions_to_their_channel():
    model = build_model("lenet5", seed=0)
    units = find_units(model, "conv2", torch.randn(2, 1, 28, 28))
    (point,) = units.mask_points
    owner = point.player_of_channel
    per_channel = len(owner) // units.n_players
    assert owner.tolist() == torch.arange(units.n_players).repeat_interleave(per_channel).tolist()
    assert units.coupled == ("conv2",)


def test_residual_stage_units_are_coupled_producers():
    model = build_model("resnet20", seed=0)
    units = find_units(model, "layer1.0.conv2", torch.randn(2, 1, 28, 28))
    assert "conv1" in units.coupled and "layer1.1.conv2" in units.coupled
    assert all(p.player_of_channel.max() < units.n_players for p in units.mask_points)


def test_heads_are_slices_of_the_output_projection_input():
    model = build_model("vit", seed=0)
    units = find_units(model, "blocks.0.attn", torch.randn(2, 1, 28, 28))
    assert units.kind == "heads" and units.names[0] == "blocks.0.attn:head0"
    (point,) = units.mask_points
    attn = model.blocks[0].attn
    assert point.module == "blocks.0.attn.proj"
    head_dim = attn.proj.in_features // attn.num_heads
    assert point.player_of_channel.tolist() == [c // head_dim for c in range(attn.proj.in_features)]


def test_out_channel_pruner_by_layer_kind():
    assert out_channel_pruner(nn.Conv2d(1, 2, 3)) is tp.prune_conv_out_channels
    assert out_channel_pruner(nn.Conv1d(1, 2, 3)) is tp.prune_conv_out_channels
    assert out_channel_pruner(nn.Linear(2, 3)) is tp.prune_linear_out_channels


def test_classifier_outputs_are_not_players():
    with pytest.raises(ValueError, match="classifier"):
        find_units(Branches(), "fc", torch.randn(2, 1, 5, 5))


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "sequence-first"])
def test_the_examples_dimension_of_each_module_s_input(batch_first):
    model = EncoderClassifier(batch_first=batch_first)
    x = torch.randn(16, 3, 32, 32)  # as many examples as tokens: shapes alone cannot tell
    inside = 0 if batch_first else 1  # (tokens, batch, features)
    expected = {
        "embed": 0,
        "encoder.layers.0.linear2": inside,
        "encoder.layers.1.norm1": inside,
        "head": 0,
        "encoder.layers.0.self_attn.out_proj": 0,  # never called (nn.MultiheadAttention)
    }
    assert input_batch_dims(model, expected, x) == expected
    assert not any(m._forward_pre_hooks for m in model.modules())
