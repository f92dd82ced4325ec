"""Criteria: one finite score per unit, hand-computed references, the model left untouched."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shapprune.criteria.base import Criterion
from shapprune.criteria.registry import CRITERIA, get_criterion, score_layers
from shapprune.estimators.catalog import estimator_options, get_estimator
from shapprune.estimators.registry import estimate
from shapprune.game.pruning_game import PruningGame
from shapprune.zoo.models import build_model

NAMES = [name for name in CRITERIA if name != "lrp"]
SIZE = 16  # small images keep the Shapley criteria fast


def _data(shape=(1, SIZE, SIZE), n=6, seed=0, classes=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def _model(name: str, seed: int = 0) -> nn.Module:
    return build_model(name, image_size=SIZE, seed=seed)


def _cheap(name: str, n: int) -> Criterion:
    """The criterion with the smallest budget its estimator accepts on n players."""
    if name in ("shapley-permutation", "network-shapley"):
        return get_criterion(name, budget=2 + 2 * (n - 1), antithetic=False)
    if name == "shapley-kernel":
        return get_criterion(name, budget=2 + 2 * n)
    if name == "shapley-bandit":
        return get_criterion(name, budget=2 + 2 * (n - 1))
    if name in ("shapley-semivalue", "shapley-refine"):
        method = name.removeprefix("shapley-")
        least = get_estimator(method).min_budget(n, estimator_options(method, {}))
        return get_criterion(name, budget=least)
    return get_criterion(name)


def _mlp(seed: int = 0) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()


def _small_vgg(seed: int = 0) -> nn.Module:
    """A VGG with BatchNorm and an 8-channel first conv: every criterion applies to it."""
    return build_model("vgg", image_size=SIZE, cfg=(8, "M", 8, "M"), hidden=8, seed=seed)


CASES = [  # model, layer, units
    ("lenet5", "conv2", 50),  # conv -> flatten -> linear consumer
    ("vgg", "features.4", 64),  # conv followed by BatchNorm
    ("resnet20", "layer1.0.conv2", 16),  # residual stream: four coupled producers
    ("vit", "blocks.1.attn", 4),  # heads
    ("vit", "blocks.0.mlp.fc1", 128),  # MLP neurons
]
HAS_BN = {"vgg", "resnet20"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from threads, and lose much on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zoo():
    return {name: _model(name, seed=1) for name in ("lenet5", "vgg", "resnet20", "vit")}


COMBINATIONS = [  # exact Shapley only where the layer is small
    (criterion, *case)
    for criterion in NAMES
    for case in CASES
    if criterion != "shapley-exact" or case[2] <= 8
]


@pytest.mark.parametrize(
    "criterion,model_name,layer,n",
    COMBINATIONS,
    ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in COMBINATIONS],
)
def test_one_finite_score_per_unit(zoo, criterion, model_name, layer, n):
    data = _data(n=3 if model_name == "resnet20" else 6)
    crit = _cheap(criterion, n)
    if criterion == "bn-scale" and model_name not in HAS_BN:
        with pytest.raises(ValueError, match=f"bn-scale needs a BatchNorm after '{layer}'"):
            crit.score(zoo[model_name], [layer], data)[layer]
        return
    scores = crit.score(zoo[model_name], [layer], data, seed=0)[layer]
    assert scores.dtype == np.float64 and scores.shape == (n,)
    assert np.all(np.isfinite(scores))


@pytest.mark.parametrize("criterion", NAMES)
def test_same_seed_same_scores(criterion):
    model, data = _small_vgg(), _data()
    a = _cheap(criterion, 8).score(model, ["features.0"], data, seed=3)["features.0"]
    b = _cheap(criterion, 8).score(model, ["features.0"], data, seed=3)["features.0"]
    np.testing.assert_array_equal(a, b)


def test_random_differs_across_seeds():
    model, data = _model("tinycnn"), _data()
    crit = get_criterion("random")
    assert not np.allclose(
        crit.score(model, ["conv1"], data, seed=0)["conv1"],
        crit.score(model, ["conv1"], data, seed=1)["conv1"],
    )
    np.testing.assert_array_equal(
        crit.score(model, ["conv1"], data, seed=5)["conv1"], np.random.default_rng(5).random(8)
    )


def test_weight_norms_rank_hand_set_rows():
    net = _mlp()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2, 0, 0], [3, 0, 0, 0], [0, 0, 0, 0.5]]))
    data = (torch.randn(4, 4), torch.tensor([0, 1, 0, 1]))
    l1 = get_criterion("weight-l1").score(net, ["0"], data)["0"]
    l2 = get_criterion("weight-l2").score(net, ["0"], data)["0"]
    np.testing.assert_allclose(l1, [3, 3, 0.5])
    np.testing.assert_allclose(l2, [math.sqrt(5), 3, 0.5])
    assert l2.argsort().tolist() == [2, 0, 1]


def test_weight_norm_sums_the_coupled_producers():
    model = _model("resnet20")
    producers = ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    modules = dict(model.named_modules())
    expected = sum(modules[p].weight.detach().double().abs().sum((1, 2, 3)) for p in producers)
    scores = get_criterion("weight-l1").score(model, ["layer1.0.conv2"], _data(n=2))[
        "layer1.0.conv2"
    ]
    np.testing.assert_allclose(scores, expected.numpy())


def test_weight_norm_of_fused_qkv_heads():
    model = _model("vit")
    qkv = model.blocks[1].attn.qkv  # 64 -> 3 * 64, four heads of 16
    with torch.no_grad():
        qkv.weight.zero_()
        qkv.weight[64 + 32 : 64 + 48] = -1.0  # the k rows of head 2
    scores = get_criterion("weight-l1").score(model, ["blocks.1.attn"], _data(n=2))["blocks.1.attn"]
    np.testing.assert_allclose(scores, [0, 0, 16 * 64, 0])


class _TorchAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x)[0].mean(1))


def test_weight_norm_of_torch_multihead_attention():
    model = _TorchAttention()
    with torch.no_grad():
        model.attn.in_proj_weight.zero_()
        model.attn.in_proj_weight[16 + 4 : 16 + 8] = 2.0  # the v rows of head 1
    data = (torch.randn(2, 5, 8), torch.tensor([0, 1]))
    np.testing.assert_allclose(
        get_criterion("weight-l1").score(model, ["attn"], data)["attn"], [0, 64]
    )
    np.testing.assert_allclose(
        get_criterion("weight-l2").score(model, ["attn"], data)["attn"], [0, math.sqrt(128)]
    )


def test_activation_criteria_refuse_unhooked_consumers():
    data = (torch.randn(2, 5, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="never seen"):
        get_criterion("taylor").score(_TorchAttention(), ["attn"], data)["attn"]


def _mlp_reference(net, x, y):
    """Hidden activation h (the input of net[2]), dL/dh of the mean loss, per-example grads."""
    h = torch.relu(net[0](x)).detach().requires_grad_(True)
    losses = F.cross_entropy(net[2](h), y, reduction="none")
    g = torch.autograd.grad(losses.mean(), h, retain_graph=True)[0]
    per_example = torch.stack(
        [torch.autograd.grad(losses[i], h, retain_graph=True)[0][i] for i in range(len(x))]
    )
    return h.detach().double(), g.double(), per_example.double()


@pytest.mark.parametrize("batch_size", [3, 256])
def test_gradient_criteria_match_autograd(batch_size):
    net = _mlp(seed=2)
    with torch.no_grad():
        net[0].bias.copy_(torch.tensor([0.5, 0.2, -0.1]))
    x, y = _data((4,), n=10, seed=4, classes=2)
    h, g, per_example = _mlp_reference(net, x, y)
    signed = -(h * g).sum(0)
    assert signed.abs().min() > 1e-6  # a real test: no all-zero unit
    opts = {"batch_size": batch_size}
    got = {
        n: get_criterion(n, **opts).score(net, ["0"], (x, y))["0"]
        for n in ("taylor", "sensitivity")
    }
    got["taylor-signed"] = get_criterion("taylor-signed", **opts).score(net, ["0"], (x, y))["0"]
    # float32 sums over other batch shapes: error relative to the terms summed, not the sum
    atol = 1e-6 * float((h * g).abs().sum(0).max())
    np.testing.assert_allclose(got["taylor-signed"], signed.numpy(), rtol=1e-5, atol=atol)
    np.testing.assert_allclose(got["taylor"], signed.abs().numpy(), rtol=1e-5, atol=atol)
    sens = per_example.abs().mean(0)
    np.testing.assert_allclose(got["sensitivity"], sens.numpy(), rtol=1e-5)


def test_taylor_sums_channels_positions_of_a_conv():
    model, (x, y) = _model("lenet5"), _data(n=5)
    a = model.pool2(model.relu2(model.conv2(model.pool1(model.relu1(model.conv1(x))))))
    a = a.detach().requires_grad_(True)
    loss = F.cross_entropy(model.fc2(model.relu3(model.fc1(a.flatten(1)))), y)
    g = torch.autograd.grad(loss, a)[0]
    expected = -(a.double() * g.double()).sum((0, 2, 3))
    scores = get_criterion("taylor-signed").score(model, ["conv2"], (x, y))["conv2"]
    atol = 1e-6 * float((a.detach().double() * g.detach().double()).abs().sum((0, 2, 3)).max())
    np.testing.assert_allclose(scores, expected.detach().numpy(), rtol=1e-4, atol=atol)


def test_taylor_signed_estimates_loss_increase_of_removal():
    net = _mlp(seed=2)
    x, y = _data((4,), n=10, seed=4, classes=2)
    scores = get_criterion("taylor-signed").score(net, ["0"], (x, y))["0"]
    loo = get_criterion("loo").score(net, ["0"], (x, y))["0"]  # exact loss increase on removal
    assert np.sign(scores[np.abs(loo) > 1e-3]).tolist() == np.sign(loo[np.abs(loo) > 1e-3]).tolist()


def test_gradient_criteria_work_under_inference_mode():
    net, data = _mlp(), _data((4,), n=4, classes=2)
    expected = get_criterion("taylor").score(net, ["0"], data)["0"]
    with torch.inference_mode():
        np.testing.assert_array_equal(
            get_criterion("taylor").score(net, ["0"], data)["0"], expected
        )


def test_apoz_matches_hand_count():
    net = _mlp(seed=1)
    with torch.no_grad():
        net[0].bias.copy_(torch.tensor([-100.0, 100.0, 0.0]))  # never, always, sometimes on
    x, y = _data((4,), n=20, seed=2, classes=2)
    h = torch.relu(net[0](x))
    scores = get_criterion("apoz", batch_size=7).score(net, ["0"], (x, y))["0"]
    zeros = (h == 0).double().mean(0)
    assert 0 < zeros[2] < 1
    np.testing.assert_allclose(scores, (1 - zeros).numpy())
    assert scores[0] == 0 and scores[1] == 1


def test_apoz_counts_over_positions_of_a_conv():
    model, (x, y) = _model("lenet5"), _data(n=5)
    with torch.no_grad():
        a = model.pool2(model.relu2(model.conv2(model.pool1(model.relu1(model.conv1(x))))))
    scores = get_criterion("apoz").score(model, ["conv2"], (x, y))["conv2"]
    np.testing.assert_allclose(scores, 1 - (a == 0).double().mean((0, 2, 3)).numpy())


def test_bn_scale_is_abs_gamma():
    model = _model("vgg")
    gamma = torch.linspace(-2, 2, 64)
    with torch.no_grad():
        model.features[5].weight.copy_(gamma)
    scores = get_criterion("bn-scale").score(model, ["features.4"], _data(n=2))["features.4"]
    np.testing.assert_allclose(scores, gamma.abs().double().numpy())


def test_bn_scale_sums_over_coupled_producers():
    model = _model("resnet20")
    norms = [model.bn1] + [model.layer1[i].bn2 for i in range(3)]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in norms:
            bn.weight.copy_(torch.randn(16, generator=g))
    expected = sum(bn.weight.detach().double().abs() for bn in norms)
    scores = get_criterion("bn-scale").score(model, ["layer1.0.conv2"], _data(n=2))[
        "layer1.0.conv2"
    ]
    np.testing.assert_allclose(scores, expected.numpy())


def test_bn_scale_needs_a_batchnorm():
    with pytest.raises(ValueError, match="bn-scale needs a BatchNorm after 'blocks.1.attn'"):
        get_criterion("bn-scale").score(_model("vit"), ["blocks.1.attn"], _data(n=2))[
            "blocks.1.attn"
        ]


def _snapshot(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


@pytest.mark.parametrize("criterion", NAMES)
def test_model_is_left_unchanged(criterion):
    model = _small_vgg().train()
    model.features[1].eval()
    model.classifier[2].weight.requires_grad_(False)
    state, training, grads = _snapshot(model)
    _cheap(criterion, 8).score(model, ["features.0"], _data(n=4), seed=0)["features.0"]
    after = _snapshot(model)
    assert after[1] == training and after[2] == grads
    assert state.keys() == after[0].keys()
    assert all(torch.equal(state[k], after[0][k]) for k in state)
    for m in model.modules():
        assert not (m._forward_pre_hooks or m._forward_hooks or m._backward_hooks)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "name,method,options",
    [
        ("shapley-exact", "exact", {}),
        ("shapley-permutation", "permutation", {"budget": 60, "antithetic": True}),
        ("shapley-permutation", "permutation", {"budget": 60, "truncation": 0.01}),
        ("shapley-kernel", "kernel", {"budget": 40}),
        ("shapley-partial", "partial", {"k": 2}),
        ("loo", "loo", {}),
    ],
)
def test_shapley_criteria_agree_with_estimate(name, method, options):
    model, data = _model("tinycnn", seed=2), _data(n=8)
    crit = get_criterion(name, metric="margin", **options)
    scores = crit.score(model, ["conv1"], data, seed=7)["conv1"]
    budget = options.pop("budget", None)
    game = PruningGame(model, "conv1", data, metric="margin", compensate=True)  # the default
    direct = estimate(game, method, budget=budget, seed=7, **options)
    np.testing.assert_array_equal(scores, direct.values)
    assert crit.last_estimate.n_evals == direct.n_evals
    assert crit.last_estimate.method == method


def test_unknown_criterion_lists_the_known():
    with pytest.raises(ValueError, match="unknown criterion 'nope'; known criteria: apoz, ") as e:
        get_criterion("nope")
    assert all(name in str(e.value) for name in CRITERIA)


def test_options_are_checked_early():
    with pytest.raises(ValueError, match="has no option 'antithetc'"):
        get_criterion("shapley-permutation", antithetc=True)
    with pytest.raises(ValueError, match="batch_size"):
        get_criterion("taylor", batch_size=0)
    with pytest.raises(ValueError, match="unknown metric"):
        get_criterion("loo", metric="f1")


def test_score_layers():
    model, data = _model("lenet5"), _data(n=3)
    scores = score_layers("weight-l2", model, ["conv1", "conv2", "fc1"], data)
    assert {k: len(v) for k, v in scores.items()} == {"conv1": 20, "conv2": 50, "fc1": 500}
    crit = get_criterion("taylor")
    np.testing.assert_array_equal(
        score_layers(crit, model, ["conv2"], data)["conv2"],
        crit.score(model, ["conv2"], data)["conv2"],
    )


@pytest.mark.parametrize("name", ["taylor", "sensitivity", "apoz", "weight-l1"])
def test_several_layers_at_once_equal_one_at_a_time(name):
    """The units of every layer are found before any is scored: a gradient criterion leaves
    the parameters without gradients until it returns, which the dependency graph skips."""
    model, data = _model("lenet5"), _data(n=4)
    together = get_criterion(name).score(model, ["conv1", "conv2", "fc1"], data)
    for layer in ("conv1", "conv2", "fc1"):
        alone = get_criterion(name).score(model, [layer], data)[layer]
        np.testing.assert_allclose(together[layer], alone, rtol=1e-6, atol=1e-12)


def test_a_settled_set_is_what_the_criterion_cuts_first():
    model, data = _model("tinycnn", seed=2), _data(n=8)
    crit = get_criterion("shapley-refine", metric="margin", budget=400, remove=3)
    scores = crit.score(model, ["conv1"], data, seed=1)["conv1"]
    est = crit.last_estimate
    assert est.selected is not None and len(est.selected) == 3
    assert set(np.argsort(scores, kind="stable")[:3]) == set(est.selected.tolist())
    assert sorted(scores.tolist()) == list(range(len(scores)))  # positions in its ranking
