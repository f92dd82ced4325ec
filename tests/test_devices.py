"""Devices: naming one, and the game, criteria, removal and measurement on the model's device.

No tensor on the hot path may be created without an explicit device: the meta checks run the
model and the data on the CPU while ``torch.set_default_device("meta")`` is in force, so a
tensor created with no device lands on "meta" and the computation fails; the values must equal
those computed normally. The device checks run on every device ``available_devices()`` lists
(the CPU everywhere, CUDA / MPS where present) against the CPU.
"""

import contextlib

import numpy as np
import pytest
import torch
from helpers import randomise_norms
from torch import nn

from shapprune.criteria.registry import get_criterion
from shapprune.devices import (
    as_float64,
    autocast,
    available_devices,
    check_precision,
    resolve_device,
)
from shapprune.evaluation.measure import count_macs, evaluate
from shapprune.game.network_game import NetworkGame
from shapprune.game.pruning_game import PruningGame
from shapprune.pruning.compress import prune_model
from shapprune.pruning.removal import apply_removals
from shapprune.training import train_model
from shapprune.zoo.data import DatasetSplits, Split
from shapprune.zoo.models import build_model

DEVICES = available_devices()


@contextlib.contextmanager
def stray_tensors_on_meta():
    """Tensors created without a device land on "meta" (no data): mixing them with the real
    CPU tensors fails, and reading them back fails."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def _data(shape, n=12, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def _masks(n_players, m=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(m, n_players, generator=g) > 0.4
    masks[0] = True
    return masks


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so the game uses hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.fc = nn.Linear(6 * 26 * 26, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        if h.sum() > 0:
            h = h * 1.0
        return self.fc(h.flatten(1))


class _TorchMHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.attn(x, x, x)[0].mean(1))


def _game_cases():
    torch.manual_seed(0)
    cases = [
        ("lenet5-conv1", build_model("lenet5"), "conv1", (1, 28, 28)),
        ("lenet5-conv2-tables", build_model("lenet5"), "conv2", (1, 28, 28)),
        ("resnet20-residual", randomise_norms(build_model("resnet20")), "conv1", (1, 28, 28)),
        ("vit-heads", build_model("vit", patch_size=7), "blocks.0.attn", (1, 28, 28)),
        ("vit-mlp", build_model("vit", patch_size=7), "blocks.0.mlp.fc1", (1, 28, 28)),
        ("torch-mha-heads", _TorchMHA().eval(), "attn", (5, 16)),
        ("hooks", _Untraceable().eval(), "conv", (1, 28, 28)),
    ]
    return [pytest.param(*case, id=case[0]) for case in cases]


def test_resolve_device_names_and_refusals():
    assert resolve_device(None) == torch.device(DEVICES[0])
    assert resolve_device("auto") == torch.device(DEVICES[0])
    assert resolve_device("cpu") == torch.device("cpu")
    assert DEVICES[-1] == "cpu" and len(set(DEVICES)) == len(DEVICES)
    for bad in ("gpu", "cuda:99", "", "tpu:0"):
        with pytest.raises(ValueError, match=r"is not available here; use 'auto' or one of: .*cpu"):
            resolve_device(bad)
    if "cuda" not in DEVICES:
        with pytest.raises(ValueError, match="'cuda' is not available"):
            resolve_device("cuda")


def test_as_float64_keeps_values():
    t = torch.tensor([1.5, -2.25], dtype=torch.float32)
    out = as_float64(t)
    assert out.dtype == torch.float64 and out.tolist() == [1.5, -2.25]


@pytest.mark.parametrize(("label", "model", "layer", "shape"), _game_cases())
def test_game_creates_no_tensor_off_device(label, model, layer, shape):
    x, y = _data(shape)
    _no_tensor_off_device(label, lambda: PruningGame(model, layer, (x, y), max_stack=2))


def _no_tensor_off_device(label: str, make) -> None:
    """A game built and evaluated while stray tensors land on meta gives the same values
    (and logits) as one built normally: nothing was created off the model's device."""
    hooks = label == "hooks"
    with pytest.warns(UserWarning) if hooks else contextlib.nullcontext():
        game = make()
    assert game.cached == (not hooks)
    masks = _masks(game.n_players)
    expected = game.value(masks)
    single = game.logits(masks[1])
    with stray_tensors_on_meta():
        with pytest.warns(UserWarning) if hooks else contextlib.nullcontext():
            fresh = make()
        got = fresh.value(masks)
        got_single = fresh.logits(masks[1])
    assert got.device.type == "cpu" and got.dtype == torch.float64
    assert torch.equal(got, expected)
    assert torch.equal(got_single, single)


def _network_cases():
    torch.manual_seed(0)
    cases = [
        ("lenet5", build_model("lenet5"), (1, 28, 28)),
        ("resnet20-residual", randomise_norms(build_model("resnet20")), (1, 28, 28)),
        ("vit-heads-and-mlp", build_model("vit", patch_size=7), (1, 28, 28)),
        ("torch-mha-heads", _TorchMHA().eval(), (5, 16)),
        ("hooks", _Untraceable().eval(), (1, 28, 28)),
    ]
    return [pytest.param(*case, id=case[0]) for case in cases]


@pytest.mark.parametrize(("label", "model", "shape"), _network_cases())
def test_network_game_creates_no_tensor_off_device(label, model, shape):
    x, y = _data(shape)
    _no_tensor_off_device(label, lambda: NetworkGame(model, (x, y), max_stack=2))


CRITERIA = ["weight-l1", "taylor", "sensitivity", "apoz", "lrp", "random", "loo"]


@pytest.mark.parametrize("name", CRITERIA)
def test_criteria_create_no_tensor_off_device(name):
    torch.manual_seed(0)
    model = build_model("lenet5")
    x, y = _data((1, 28, 28))
    expected = get_criterion(name).score(model, ["conv1"], (x, y), seed=0)["conv1"]
    with stray_tensors_on_meta():
        got = get_criterion(name).score(model, ["conv1"], (x, y), seed=0)["conv1"]
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)


def test_bn_scale_and_shapley_create_no_tensor_off_device():
    torch.manual_seed(0)
    model = randomise_norms(build_model("resnet20"))
    x, y = _data((1, 28, 28), n=6)
    options = {"bn-scale": {}, "shapley-permutation": {"budget": 80}}
    expected = {
        k: get_criterion(k, **o).score(model, ["conv1"], (x, y))["conv1"]
        for k, o in options.items()
    }
    with stray_tensors_on_meta():
        got = {
            k: get_criterion(k, **o).score(model, ["conv1"], (x, y))["conv1"]
            for k, o in options.items()
        }
    for k in options:
        np.testing.assert_array_equal(got[k], expected[k])


@pytest.mark.parametrize(
    ("model", "removals", "shape"),
    [
        (build_model("lenet5"), {"conv1": [0, 2], "fc1": [1, 5]}, (1, 28, 28)),
        (build_model("vit", patch_size=7), {"blocks.0.attn": [1], "blocks.1.mlp.fc1": [0]},
         (1, 28, 28)),
        (_TorchMHA().eval(), {"attn": [0, 3]}, (5, 16)),
    ],
    ids=["lenet5", "vit", "torch-mha"],
)  # fmt: skip
@pytest.mark.parametrize("mode", ["remove", "mask"])
def test_removal_and_measurement_create_no_tensor_off_device(model, removals, shape, mode):
    x, y = _data(shape)
    expected = apply_removals(model, removals, x[:2], mode=mode)(x)
    with stray_tensors_on_meta():
        pruned = apply_removals(model, removals, x[:2], mode=mode)
        got = pruned(x)
        quality = evaluate(pruned, Split(x, y)) if len(shape) == 3 else None
        macs = count_macs(pruned, x)
    assert torch.equal(got, expected)
    assert macs == count_macs(pruned, x) > 0
    if quality is not None:
        assert quality == evaluate(pruned, Split(x, y))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("label", "model", "layer", "shape"), _game_cases())
def test_game_on_each_device_matches_the_cpu(device, label, model, layer, shape):
    x, y = _data(shape)
    with pytest.warns(UserWarning) if label == "hooks" else contextlib.nullcontext():
        _same_values_on(device, lambda m: PruningGame(m, layer, (x, y)), model)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("label", "model", "shape"), _network_cases()[:3])
def test_network_game_on_each_device_matches_the_cpu(device, label, model, shape):
    x, y = _data(shape)
    _same_values_on(device, lambda m: NetworkGame(m, (x, y)), model)


def _same_values_on(device: str, make, model) -> None:
    """A game built on ``device`` (data given on the CPU, moved once) values the same masks
    as the game built on the CPU, and answers on the CPU in float64."""
    reference = make(model)
    masks = _masks(reference.n_players)
    on_cpu = reference.value(masks)
    game = make(model.to(device))
    model.to("cpu")
    assert game.device.type == device and game.x.device.type == device
    got = game.value(masks)
    assert got.device.type == "cpu" and got.dtype == torch.float64
    torch.testing.assert_close(got, on_cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["weight-l1", "taylor", "apoz", "lrp", "loo"])
def test_criteria_on_each_device_match_the_cpu(device, name):
    torch.manual_seed(0)
    model = build_model("lenet5")
    x, y = _data((1, 28, 28))
    on_cpu = get_criterion(name).score(model, ["conv2"], (x, y))["conv2"]
    got = get_criterion(name).score(model.to(device), ["conv2"], (x, y))["conv2"]
    assert next(model.parameters()).device.type == device  # left where it was
    np.testing.assert_allclose(got, on_cpu, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_removal_and_evaluation_on_each_device_match_the_cpu(device):
    torch.manual_seed(0)
    model = build_model("vit", patch_size=7)
    x, y = _data((1, 28, 28))
    removals = {"blocks.0.attn": [1], "blocks.1.mlp.fc1": [0, 3]}
    on_cpu = apply_removals(model, removals, x[:2])
    pruned = apply_removals(model.to(device), removals, x[:2])  # example moved to the model
    assert next(pruned.parameters()).device.type == device
    torch.testing.assert_close(pruned(x.to(device)).cpu(), on_cpu(x), rtol=1e-4, atol=1e-5)
    a, b = evaluate(pruned, Split(x, y)), evaluate(on_cpu, Split(x, y))
    assert a["accuracy"] == b["accuracy"] and abs(a["loss"] - b["loss"]) < 1e-4


def test_fine_tuning_creates_no_tensor_off_device(mnist5k):
    """Training with augmentation (SGD: torch's Adam makes its own step counters without a
    device, so it cannot run under the meta default) gives the same weights bit for bit."""
    d = mnist5k
    small = DatasetSplits(
        Split(d.train.x[:96], d.train.y[:96]),
        Split(d.val.x[:32], d.val.y[:32]),
        Split(d.test.x[:32], d.test.y[:32]),
        d.name, d.num_classes, d.in_channels, d.image_size,
    )  # fmt: skip
    options = dict(epochs=1, lr=1e-2, batch_size=32, optimizer="sgd", augment=["crop:2", "flip"])
    expected, fresh = build_model("tinycnn"), build_model("tinycnn")
    metrics = train_model(expected, small, progress=False, **options)
    with stray_tensors_on_meta():
        again = train_model(fresh, small, progress=False, **options)
    trained, retrained = expected.state_dict(), fresh.state_dict()
    assert trained.keys() == retrained.keys()
    for name, a in trained.items():
        assert torch.equal(a, retrained[name]), name
    assert again["test_accuracy"] == metrics["test_accuracy"]
    assert metrics["train_loss"] == again["train_loss"] and metrics["train_loss"] > 0


def test_the_whole_pruning_job_creates_no_tensor_off_device(mnist5k):
    """Scoring, a MACs target met by bisection on pruned copies, removal and measurement."""
    d = mnist5k
    small = DatasetSplits(
        Split(d.train.x[:8], d.train.y[:8]), d.val, Split(d.test.x[:64], d.test.y[:64]),
        d.name, d.num_classes, d.in_channels, d.image_size,
    )  # fmt: skip
    model = build_model("lenet5")
    kw = {"per_class": 2, "refine": 20}  # the defaults otherwise: both scopes, compensation
    pruned, summary = prune_model(model, small, get_criterion("weight-l1"), "macs=0.5", **kw)
    with stray_tensors_on_meta():
        again, repeat = prune_model(model, small, get_criterion("weight-l1"), "macs=0.5", **kw)
    assert repeat["removed"] == summary["removed"] and sum(summary["removed"].values()) > 0
    assert repeat["after"]["macs"] == summary["after"]["macs"] < summary["before"]["macs"]
    assert torch.equal(again(small.test.x), pruned(small.test.x))


# --- precision: evaluations under autocast ------------------------------------------------

AUTOCASTS = [(d, p) for d in DEVICES for p in ("bfloat16", "float16")
             if p == "bfloat16" and d in ("cpu", "cuda") or d == "cuda"]  # fmt: skip


def test_a_precision_the_device_cannot_autocast_to_is_refused_by_name():
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16, float16"):
        check_precision("fp8", "cpu")
    with pytest.raises(ValueError, match="float16 autocast needs a CUDA device.*use bfloat16"):
        check_precision("float16", "cpu")
    check_precision("float32", "cpu")  # nothing to refuse
    with autocast("float32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("bfloat16", "cpu"):
        assert torch.is_autocast_enabled("cpu")
        # no cache of 16-bit weights: it would hold one per model copy until the block ends
        assert not torch.is_autocast_cache_enabled()


@pytest.mark.parametrize(("device", "precision"), AUTOCASTS)
@pytest.mark.parametrize("name", ["lenet5", "vgg", "resnet20", "vit"])
def test_network_game_values_in_16_bits_stay_near_float32(name, device, precision):
    """The network game over every layer, built and evaluated under autocast: its values
    differ from float32's by rounding only, and order the coalitions nearly alike."""
    model = randomise_norms(build_model(name, seed=0)).to(device)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 28, 28, generator=g), torch.arange(32) % 10
    exact = NetworkGame(model, (x, y))
    masks = torch.rand(16, exact.n_players, generator=g) > 0.3
    masks[0] = True
    expected = exact.value(masks)
    with autocast(precision, device):
        rounded = NetworkGame(model, (x, y)).value(masks)
    assert rounded.dtype == torch.float64
    assert (rounded != expected).any()  # computed in 16 bits, not float32 again
    assert (rounded - expected).abs().max() <= 0.01 * max(1.0, float(expected.abs().max()))
    rho = np.corrcoef(rounded.argsort().argsort(), expected.argsort().argsort())[0, 1]
    assert rho > 0.9, rho


@pytest.mark.parametrize(("device", "precision"), AUTOCASTS)
def test_prune_model_in_16_bits_meets_the_target_with_a_float32_model(device, precision):
    model = randomise_norms(build_model("resnet20", seed=0)).to(device)
    g = torch.Generator().manual_seed(1)

    def split(n: int) -> Split:
        return Split(torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % 10)

    data = DatasetSplits(None, split(20), split(20), name="random", num_classes=10,
                         in_channels=1, image_size=28)  # fmt: skip
    pruned, summary = prune_model(model, data, target="macs=0.5", per_class=2, refine=4,
                                  precision=precision)  # fmt: skip
    assert summary["precision"] == precision
    assert summary["after"]["macs"] <= 0.5 * summary["before"]["macs"] * 1.05
    assert {p.dtype for p in pruned.parameters()} == {torch.float32}
    assert summary["plans"][0]["refinement"]["sets_evaluated"] >= 2
    with pytest.raises(ValueError, match="precision must be one of"):
        prune_model(model, data, precision="half")
