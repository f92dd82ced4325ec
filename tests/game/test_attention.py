"""Written-out attention: the q/k/v split, the heads one by one, removable heads."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shapprune.game.attention import (
    SlimMultiheadAttention,
    head_rows,
    in_projection,
    multihead_attention,
)


def _mha(**options) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True, **options).eval()
    with torch.no_grad():  # torch initialises the biases to 0: make them count
        for name, p in mha.named_parameters():
            if "bias" in name:
                p.normal_()
    return mha


def test_in_projection_reassembles_the_packed_weight():
    mha = _mha()
    weights, biases = in_projection(mha)
    assert torch.equal(torch.cat(weights), mha.in_proj_weight)
    assert torch.equal(torch.cat(biases), mha.in_proj_bias)
    for i, w in enumerate(weights):  # views of the parameter, not copies
        assert w.data_ptr() == mha.in_proj_weight[16 * i].data_ptr()


def test_in_projection_of_separate_weights_and_no_bias():
    mha = nn.MultiheadAttention(16, 4, kdim=8, vdim=12, bias=False)
    weights, biases = in_projection(mha)
    assert weights == (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
    assert [w.shape[1] for w in weights] == [16, 8, 12] and biases == (None, None, None)


def test_heads_one_by_one_by_hand():
    """The input of the output projection is the heads' outputs side by side."""
    mha = _mha()
    x = torch.randn(2, 5, 16)
    weights, biases = in_projection(mha)
    projections = tuple(
        lambda t, w=w, b=b: F.linear(t, w, b) for w, b in zip(weights, biases, strict=True)
    )
    with torch.no_grad():
        heads = multihead_attention(x, x, x, projections, nn.Identity(), num_heads=4,
                                    batch_first=True)  # fmt: skip
        q, k, v = (p(x) for p in projections)
        for start in range(0, 16, 4):  # head h: features 4h .. 4h + 3
            cols = slice(start, start + 4)
            attn = (q[..., cols] @ k[..., cols].transpose(1, 2) / 2.0).softmax(-1)
            torch.testing.assert_close(heads[..., cols], attn @ v[..., cols], atol=1e-5,
                                       rtol=1e-5)  # fmt: skip
        constant = multihead_attention(x, x, x, projections, nn.Identity(), num_heads=4,
                                       batch_first=True, constant_softmax=True)  # fmt: skip
        torch.testing.assert_close(constant, heads, atol=1e-5, rtol=1e-5)


def test_head_rows():
    assert head_rows([1], 2) == [2, 3]
    assert head_rows([0, 2], 2, parts=3, width=6) == [0, 1, 4, 5, 6, 7, 10, 11, 12, 13, 16, 17]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_slim_attention_equals_torch(batch_first, bias):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, bias=bias, batch_first=batch_first).eval()
    slim = SlimMultiheadAttention.from_torch(mha).eval()
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    with torch.no_grad():
        expected, _ = mha(x, x, x)
        out, weights = slim(x, x, x)
    assert weights is None
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_removing_heads_equals_zeroing_them():
    mha = _mha()
    slim = SlimMultiheadAttention.from_torch(mha).eval()
    x = torch.randn(2, 5, 16)
    keep = torch.tensor([h not in (0, 2) for h in range(4)]).repeat_interleave(4).float()
    hook = slim.out_proj.register_forward_pre_hook(lambda m, a: (a[0] * keep,))
    with torch.no_grad():
        expected, _ = slim(x, x, x)
        hook.remove()
        slim.remove_heads([0, 2])
        out, _ = slim(x, x, x)
    assert slim.num_heads == 2 and slim.q_proj.out_features == 8
    assert slim.out_proj.weight.shape == (16, 8)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_slim_attention_refuses_kdim():
    with pytest.raises(NotImplementedError, match="kdim"):
        SlimMultiheadAttention.from_torch(nn.MultiheadAttention(16, 4, kdim=8))


def test_slim_attention_inside_a_torch_encoder_layer_computes_what_torch_s_attention_did():
    """torch's encoder layer reads its attention's packed projection to choose its fused fast
    path; with the slim attention in its place it takes the path that calls it."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    with torch.inference_mode():
        expected = layer(x)  # the fast path
        layer.self_attn = SlimMultiheadAttention.from_torch(layer.self_attn)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
        layer.self_attn.remove_heads([1])
        assert layer(x).shape == (2, 5, 16)
