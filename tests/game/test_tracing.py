"""Tracing with visible heads: the traced model computes what the model computes."""

from __future__ import annotations  # the annotations are strings, as in many users' models

import pickle

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import EncoderClassifier
from torch import nn

from shapprune.game.tracing import explicit_mha, trace
from shapprune.zoo.models import build_model

SDPA = F.scaled_dot_product_attention  # the function itself, as imported

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


class FlaggedAttention(nn.Module):
    """Attention whose forward takes an ``is_causal`` flag and hands it to
    ``F.scaled_dot_product_attention``, as timm's ViT does: traced, the flag is a
    placeholder, which torch 2.8's scaled_dot_product_attention refused."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.head = nn.Linear(8, 24), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
        return self.head(out.transpose(1, 2).flatten(2).mean(1))


def test_a_flag_handed_to_scaled_dot_product_attention_traces():
    torch.manual_seed(0)
    model, x = FlaggedAttention().eval(), torch.randn(2, 5, 8)
    gm = trace(model)
    assert F.scaled_dot_product_attention is SDPA  # restored after the trace
    calls = [n for n in gm.graph.nodes if n.target is SDPA]
    assert len(calls) == 1 and calls[0].kwargs["is_causal"].op == "placeholder"
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(gm(x, True), model(x, True), atol=1e-6, rtol=1e-6)


class Annotated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
        return self.fc(x) * scale


@pytest.mark.parametrize(
    "builder,shape",
    [(Annotated, (8,)), (lambda: build_model("lenet5", seed=0), (1, 28, 28))],
    ids=["annotated", "lenet5"],
)
def test_a_traced_model_with_string_annotations_pickles(builder, shape):
    """A game goes to a worker process pickled, its traced model with it: string
    annotations (``from __future__ import annotations``, here and in the zoo's models)
    left a string global in the generated code that torch 2.8 could not pickle."""
    torch.manual_seed(0)
    model, x = builder().eval(), torch.randn(2, *shape)
    gm = trace(model)
    assert all(not isinstance(n.type, str) for n in gm.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(pickle.loads(pickle.dumps(gm))(x), model(x))


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
