"""LRP relevance criterion: hand checks, gradient-times-input identity, canonizers, robustness."""

import copy

import numpy as np
import pytest
import torch
from helpers import EncoderClassifier, randomise_norms
from torch import nn
from torchvision.models import DenseNet
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

from shapprune.criteria.lrp import (
    COMPOSITES,
    LRPCriterion,
    batch_norm_merges,
    canonized,
    make_composite,
)
from shapprune.evaluation.measure import evaluate
from shapprune.game.units import find_units
from shapprune.training import train_model
from shapprune.zoo.data import load_dataset, reference_set
from shapprune.zoo.models import build_model


def _data(shape, n=6, seed=0, classes=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def _tv_vit() -> nn.Module:
    torch.manual_seed(0)
    model = TorchvisionViT(16, 8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision initialises it to zeros
    return model.eval()


def _small_densenet() -> nn.Module:
    """torchvision's DenseNet, small: a BatchNorm over a concatenation follows, in child order,
    a convolution of fewer channels."""
    torch.manual_seed(0)
    model = DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=10)
    return randomise_norms(model)


def _snapshot(model: nn.Module) -> dict:
    """Parameters and buffers (values and objects) and the BatchNorms' eps."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "objects": dict(model.named_parameters()) | dict(model.named_buffers()),
        "eps": {n: m.eps for n, m in model.named_modules() if hasattr(m, "eps")},
    }


def _assert_untouched(model: nn.Module, before: dict, training: bool) -> None:
    after = model.state_dict()
    assert before["state"].keys() == after.keys()
    assert all(torch.equal(before["state"][k], after[k]) for k in after)
    objects = dict(model.named_parameters()) | dict(model.named_buffers())
    assert objects.keys() == before["objects"].keys()
    assert all(objects[k] is before["objects"][k] for k in objects)
    assert before["eps"] == {n: m.eps for n, m in model.named_modules() if hasattr(m, "eps")}
    for m in model.modules():
        assert m.training == training
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
        # nothing shadows a parameter, buffer or method (zennit 1.0 restores with setattr)
        assert not set(vars(m)) & {"forward", *m._parameters, *m._buffers}
        assert not any(n.startswith("canonizer") for n in m._modules)


def _grad_times_input(model: nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor):
    """Reference for LRP-0: sum_n |sum over the unit's entries of input * d logit_y / d input|."""
    units = find_units(model, layer, x[:2])
    modules = dict(model.named_modules())
    seen = []

    def hook(module, args):
        seen.append(args[0].clone())  # a tensor of its own: the gradient through this module only
        return (seen[-1],)

    hooks = [modules[p.module].register_forward_pre_hook(hook) for p in units.mask_points]
    try:
        x = x.clone().requires_grad_(True)
        logit = model(x).gather(1, y[:, None]).sum()
        grads = torch.autograd.grad(logit, seen)
    finally:
        for h in hooks:
            h.remove()
    rel = torch.zeros(len(x), units.n_players, dtype=torch.float64)
    for point, inp, g in zip(units.mask_points, seen, grads, strict=True):
        r = (inp * g).detach().movedim(point.channel_dim, -1)
        r = r.reshape(len(x), -1, r.shape[-1]).sum(1).double()
        owned = point.player_of_channel >= 0
        rel.index_add_(1, point.player_of_channel[owned], r[:, owned])
    return rel.abs().sum(0).numpy()


def test_unknown_composite_is_rejected_early():
    with pytest.raises(ValueError, match="unknown LRP composite 'x'; known: epsilon, "):
        LRPCriterion("x")
    with pytest.raises(ValueError, match="batch_size"):
        LRPCriterion(batch_size=0)


def test_two_layer_linear_network_by_hand():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 1, bias=False))
    x, _ = _data((3,), n=5)
    y = torch.zeros(5, dtype=torch.long)
    scores = LRPCriterion("epsilon", epsilon=1e-9).score(net, ["0"], (x, y))["0"]
    with torch.no_grad():
        contributions = net[0](x) * net[1].weight[0]  # a_j * w2_j, summing to the output
        assert torch.allclose(contributions.sum(1, keepdim=True), net(x))
    expected = contributions.abs().sum(0).double().numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "layer", "shape"),
    [
        ("lenet5", "conv1", (1, 28, 28)),  # conv -> relu -> maxpool -> conv
        ("lenet5", "conv2", (1, 28, 28)),  # conv -> flatten -> linear
        ("resnet20", "layer1.0.conv2", (1, 16, 16)),  # residual stream: Sum canonizer
        ("vgg", "features.4", (1, 16, 16)),  # BatchNorm merged into the convolution
    ],
)
def test_lrp0_equals_gradient_times_input(name, layer, shape):
    model = randomise_norms(build_model(name, image_size=shape[-1]))
    x, y = _data(shape)
    scores = LRPCriterion("epsilon", epsilon=1e-9).score(model, [layer], (x, y))[layer]
    np.testing.assert_allclose(scores, _grad_times_input(model, layer, x, y), rtol=2e-3)


@pytest.mark.parametrize(
    ("name", "layer", "shape"),
    [
        ("lenet5", "conv2", (1, 28, 28)),
        ("vgg", "features.0", (1, 16, 16)),
        ("resnet20", "layer1.0.conv1", (1, 16, 16)),
        ("resnet20", "layer2.1.conv2", (1, 16, 16)),
        ("vit", "blocks.1.attn", (1, 16, 16)),
        ("vit", "blocks.0.mlp.fc1", (1, 16, 16)),
    ],
)
def test_one_finite_nonnegative_score_per_unit(name, layer, shape):
    model = randomise_norms(build_model(name, image_size=shape[-1]))
    x, y = _data(shape)
    before = _snapshot(model)
    scores = LRPCriterion().score(model, [layer], (x, y))[layer]
    assert scores.shape == (find_units(model, layer, x[:2]).n_players,)
    assert np.isfinite(scores).all() and (scores >= 0).all() and scores.sum() > 0
    _assert_untouched(model, before, training=False)


def test_scores_under_inference_mode_like_outside():
    model = build_model("lenet5")
    x, y = _data((1, 28, 28), n=2)
    expected = LRPCriterion().score(model, ["conv2"], (x, y))["conv2"]
    with torch.inference_mode():
        data = (x.clone(), y.clone())  # inference tensors
        scores = LRPCriterion().score(model, ["conv2"], data)["conv2"]
    np.testing.assert_array_equal(scores, expected)


@pytest.mark.parametrize("composite", COMPOSITES)
def test_every_composite_runs(composite):
    x, y = _data((1, 28, 28), n=3)
    scores = LRPCriterion(composite).score(build_model("lenet5"), ["conv2"], (x, y))["conv2"]
    assert scores.shape == (50,)
    assert np.isfinite(scores).all() and (scores >= 0).all() and scores.sum() > 0


@pytest.mark.parametrize("canonize", [True, False])
def test_torchvision_multihead_attention_heads(canonize):
    model = _tv_vit()
    x, y = _data((3, 16, 16), n=3, classes=1000)
    layer = "encoder.layers.encoder_layer_1.self_attention"
    before = _snapshot(model)
    scores = LRPCriterion("epsilon", canonize=canonize).score(model, [layer], (x, y))[layer]
    assert scores.shape == (2,)
    assert np.isfinite(scores).all() and (scores > 0).all()
    _assert_untouched(model, before, training=False)


def test_a_sequence_first_transformer_scores_as_its_batch_first_twin():
    """Units of nn.TransformerEncoder layers, whose inputs are (tokens, batch, features)
    when not batch-first: each example's relevance is summed over its own tokens, so the
    scores are the batch-first twin's (as many examples as tokens: shapes cannot tell)."""
    seq = EncoderClassifier(batch_first=False)
    twin = EncoderClassifier(batch_first=True)
    twin.load_state_dict(seq.state_dict())
    x, y = _data((3, 32, 32), n=16)
    layers = ["encoder.layers.0.self_attn", "encoder.layers.1.linear1"]
    expected = LRPCriterion().score(twin, layers, (x, y))
    scores = LRPCriterion().score(seq, layers, (x, y))
    for layer, n_units in zip(layers, (4, 32), strict=True):  # heads, MLP neurons
        assert expected[layer].shape == (n_units,)
        np.testing.assert_allclose(scores[layer], expected[layer], rtol=1e-4)


@pytest.mark.parametrize(
    ("build", "shape", "n_merged"),
    [
        (lambda: randomise_norms(build_model("vgg", image_size=16)), (1, 16, 16), 4),
        (lambda: randomise_norms(build_model("resnet20", image_size=16)), (1, 16, 16), 21),
        (_small_densenet, (3, 32, 32), 5),  # the 6 BatchNorms over concatenations are not
        (lambda: build_model("vit", image_size=16), (1, 16, 16), 0),
        (_tv_vit, (3, 16, 16), 0),
    ],
    ids=["vgg", "resnet20", "densenet", "vit", "torchvision-vit"],
)
def test_canonized_model_computes_the_same_and_is_restored(build, shape, n_merged):
    model = build()
    x, _ = _data(shape, n=4)
    before = _snapshot(model)
    with torch.no_grad():
        expected = model(x)
        with canonized(model, x[:2]) as canon:
            added = any(n.startswith("canonizer") for m in canon.modules() for n in m._modules)
            norms = [m for m in canon.modules() if isinstance(m, nn.BatchNorm2d)]
            merged = [m for m in norms if "forward" in vars(m)]  # the identity while merged
            assert len(merged) == n_merged and (added or merged)
            assert all(m.eps > 0 for m in norms)  # torch >= 2.11 refuses eps = 0
            own = [(n, p) for n, p in canon.named_parameters() if "canonizer" not in n]
            changed = [n for n, p in own if p is not before["objects"].get(n)]
            assert len(changed) == 2 * n_merged  # the merged layers' weights and biases
            out = canon(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    _assert_untouched(model, before, training=False)


class _ChildOrderMisleads(nn.Module):
    """``bn`` follows ``a`` in child order but reads ``b``; ``c``'s output is read by its
    BatchNorm and by the addition; ``d`` has no bias."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(3, 4, 3)
        self.c, self.bn_c = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.d, self.bn_d = nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x).relu() + self.bn(self.b(x))
        h = self.c(h)
        h = self.bn_c(h) + h
        return self.head(self.bn_d(self.d(h)).mean((2, 3)))


def test_batch_norms_merge_by_the_data_flow_not_child_order():
    model = randomise_norms(_ChildOrderMisleads())
    x, y = _data((3, 8, 8), n=4, classes=3)
    assert batch_norm_merges(model, x[:2]) == [("b", "bn"), ("d", "bn_d")]
    before = _snapshot(model)
    with torch.no_grad():
        expected = model(x)
        with canonized(model, x[:2]) as canon:
            assert canon.d.bias is not None and "forward" in vars(canon.bn_d)
            assert "forward" not in vars(canon.bn_c)
            torch.testing.assert_close(canon(x), expected, rtol=1e-4, atol=1e-5)
    _assert_untouched(model, before, training=False)
    assert model.d.bias is None
    scores = LRPCriterion().score(model, ["a", "b", "c"], (x, y))
    assert all(np.isfinite(v).all() and v.sum() > 0 for v in scores.values())


def test_densenet_scores_with_batch_norms_over_concatenations():
    model = _small_densenet()
    x, y = _data((3, 32, 32), n=3)
    layers = ["features.conv0", "features.denseblock1.denselayer2.conv2"]
    before = _snapshot(model)
    scores = LRPCriterion().score(model, layers, (x, y))
    assert [len(scores[n]) for n in layers] == [16, 8]
    assert all(np.isfinite(v).all() and (v >= 0).all() and v.sum() > 0 for v in scores.values())
    _assert_untouched(model, before, training=False)


def test_deterministic_batch_invariant_and_model_unchanged():
    model = randomise_norms(build_model("vgg", image_size=16)).train()
    x, y = _data((1, 16, 16), n=7)
    before = _snapshot(model)
    first = LRPCriterion(batch_size=3).score(model, ["features.4"], (x, y))["features.4"]
    second = LRPCriterion(batch_size=3).score(model, ["features.4"], (x, y))["features.4"]
    np.testing.assert_array_equal(first, second)
    _assert_untouched(model, before, training=True)  # mode and BN statistics kept
    one_batch = LRPCriterion(batch_size=64).score(model.eval(), ["features.4"], (x, y))[
        "features.4"
    ]
    # batches of 3 and of 7: float32 sums in other orders, near-zero scores included
    np.testing.assert_allclose(first, one_batch, rtol=1e-5, atol=1e-6 * np.abs(one_batch).max())


def test_the_batch_shrinks_to_the_memory_allowed(monkeypatch):
    """memory_mb bounds one pass's activations: the batch is what fits (at least one
    example), and the scores are those of larger batches."""
    from shapprune.criteria import lrp
    from shapprune.game.pruning_game import activation_bytes

    model = build_model("vgg", image_size=16).eval()
    x, y = _data((1, 16, 16), n=7)
    per = lrp.LRP_MEMORY_FACTOR * activation_bytes(model, x[:1])
    assert LRPCriterion()._batch(model, x) == 64  # the zoo's sizes fit in 2 GB
    assert LRPCriterion(memory_mb=2.5 * per / 2**20)._batch(model, x) == 2
    assert LRPCriterion(memory_mb=1e-6)._batch(model, x) == 1
    sizes = []
    real = lrp.relevance
    monkeypatch.setattr(lrp, "relevance", lambda *a: sizes.append(a[-1]) or real(*a))
    small = LRPCriterion(memory_mb=2.5 * per / 2**20).score(model, ["features.4"], (x, y))
    whole = LRPCriterion().score(model, ["features.4"], (x, y))
    assert sizes == [2, 64]
    np.testing.assert_allclose(small["features.4"], whole["features.4"], rtol=1e-5,
                               atol=1e-6 * np.abs(whole["features.4"]).max())  # fmt: skip
    with pytest.raises(ValueError, match="memory_mb"):
        LRPCriterion(memory_mb=0)


def test_least_relevant_filters_matter_least():
    data = load_dataset("mnist5k")
    model = build_model("tinycnn")
    train_model(model, data, epochs=1, lr=3e-3, batch_size=64, progress=False)
    ref = reference_set(data.train, per_class=10, seed=0)
    scores = LRPCriterion().score(model, ["conv1"], (ref.x, ref.y))["conv1"]
    order = np.argsort(scores)

    def accuracy_without(filters):
        pruned = copy.deepcopy(model)
        with torch.no_grad():
            pruned.conv1.weight[filters] = 0
            pruned.conv1.bias[filters] = 0
        return evaluate(pruned, data.test)["accuracy"]

    assert accuracy_without(order[:4]) > accuracy_without(order[-4:])


class _Residual(nn.Module):
    def __init__(self, width: int, in_place: bool) -> None:
        super().__init__()
        self.f, self.in_place = nn.Linear(width, width, bias=False), in_place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_place:  # as ConvNeXt and EfficientNet write it
            out = self.f(x)
            out += x
            return out
        return x + self.f(x)


def _residual_stack(depth: int) -> nn.Module:
    torch.manual_seed(0)
    blocks = [_Residual(6, in_place=i % 2 == 1) for i in range(depth)]
    return nn.Sequential(nn.Linear(4, 6, bias=False), *blocks, nn.Linear(6, 3, bias=False))


def test_residual_additions_split_relevance_in_proportion():
    model = _residual_stack(40).eval().requires_grad_(False)
    x, _ = _data((4,), n=5)
    expected = model(x)
    composite = make_composite("epsilon", model, epsilon=1e-9)
    with composite.context(model):
        x = x.clone().requires_grad_(True)
        out = model(x)
        (relevance,) = torch.autograd.grad(out, x, grad_outputs=out)
    torch.testing.assert_close(out, expected)
    # conserved from the logits to the input (no biases): the gradient would double it
    # at each of the 40 additions
    torch.testing.assert_close(relevance.sum(1), out.sum(1), rtol=1e-3, atol=1e-4)
    _assert_untouched(model, _snapshot(model), training=False)
