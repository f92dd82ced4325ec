"""Tracing with visible heads: the traced model computes what the model computes."""

import pytest
import torch
import torchvision
from helpers import EncoderClassifier
from torch import nn

from shapprune.game.tracing import explicit_mha, trace
from shapprune.zoo.models import build_model

MHA = {
    "packed": dict(embed_dim=16, num_heads=4, batch_first=True),
    "seq-first": dict(embed_dim=16, num_heads=2, batch_first=False),
    "no-bias": dict(embed_dim=16, num_heads=4, bias=False, batch_first=True),
    "kdim-vdim": dict(embed_dim=16, num_heads=4, kdim=8, vdim=12, batch_first=True),
}


@pytest.mark.parametrize("options", list(MHA.values()), ids=list(MHA))
def test_explicit_mha_equals_torch(options):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(**options).eval()
    kdim, vdim = options.get("kdim", 16), options.get("vdim", 16)
    q, k, v = torch.randn(3, 5, 16), torch.randn(3, 7, kdim), torch.randn(3, 7, vdim)
    if not options["batch_first"]:  # (sequence, batch, features)
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    with torch.no_grad():
        expected, _ = mha(q, k, v, need_weights=False)
        out, weights = explicit_mha(mha, q, k, v, need_weights=False)
    assert weights is None
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_explicit_mha_refuses_masks():
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 3, 8)
    with pytest.raises(NotImplementedError, match="masks"):
        explicit_mha(mha, x, x, x, attn_mask=torch.zeros(3, 3, dtype=torch.bool))


@pytest.mark.parametrize(
    "builder,shape",
    [
        (lambda: build_model("resnet20", seed=0), (1, 28, 28)),
        (lambda: build_model("vit", seed=0), (1, 28, 28)),
        (lambda: torchvision.models.VisionTransformer(32, 8, 2, 4, 32, 64), (3, 32, 32)),
    ],
    ids=["resnet20", "vit", "torchvision-vit"],
)
def test_traced_model_equals_the_model(builder, shape):
    torch.manual_seed(0)
    model = builder().eval()
    x = torch.randn(3, *shape)
    gm = trace(model)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), atol=1e-5, rtol=1e-5)


def test_torch_attention_heads_enter_out_proj_as_a_module_call():
    model = torchvision.models.VisionTransformer(32, 8, 2, 4, 32, 64).eval()
    gm = trace(model)
    calls = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    for i in range(2):
        prefix = f"encoder.layers.encoder_layer_{i}.self_attention"
        assert prefix + ".out_proj" in calls and prefix not in calls


@pytest.mark.parametrize("norm_first", [False, True], ids=["norm-after", "norm-first"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "sequence-first"])
def test_torch_encoder_layers_are_written_out_with_their_heads_visible(batch_first, norm_first):
    """torch.fx can trace neither into nn.TransformerEncoderLayer (its fast-path checks) nor
    past it (a leaf hides the heads); written out, it computes what torch computes (its
    fused fast path, for batch-first inputs in inference)."""
    model = EncoderClassifier(batch_first=batch_first, norm_first=norm_first)
    x = torch.randn(3, 3, 32, 32)
    gm = trace(model)
    calls = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    for i in range(2):
        layer = f"encoder.layers.{i}"
        assert {layer + ".self_attn.out_proj", layer + ".linear1", layer + ".norm2"} <= calls
        assert layer not in calls and layer + ".self_attn" not in calls
    with torch.inference_mode():
        torch.testing.assert_close(gm(x), model(x), atol=1e-5, rtol=1e-5)
