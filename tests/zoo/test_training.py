"""Tests for training, evaluation, checkpoints and the pretrained cache (tiny and fast)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from shapprune.evaluation.measure import evaluate
from shapprune.zoo import training as train_mod
from shapprune.zoo.cache import cache_dir, pretrained
from shapprune.zoo.data import DatasetSplits, Split
from shapprune.zoo.models import build_model
from shapprune.zoo.training import train_model


def _toy_data(n: int = 96, seed: int = 0) -> DatasetSplits:
    """Linearly separable 2-class data: the class is the sign of the mean pixel."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 16, 16, generator=g) * 0.5 + (y.float() * 2 - 1)[:, None, None, None]
    s = Split(x, y)
    return DatasetSplits(s, s, s, name="toy", num_classes=2, in_channels=1, image_size=16)


def _tiny_model(seed: int = 0) -> nn.Module:
    return build_model("vgg", in_channels=1, image_size=16, num_classes=2, cfg=[4, "M"], seed=seed)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHAPPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_train_model_learns_and_is_seeded() -> None:
    data = _toy_data()
    m1, m2 = _tiny_model(), _tiny_model()
    before = evaluate(m1, data.test)
    r1 = train_model(m1, data, epochs=3, lr=1e-2, batch_size=16, seed=1, progress=False)
    r2 = train_model(m2, data, epochs=3, lr=1e-2, batch_size=16, seed=1, progress=False)
    assert r1["test_accuracy"] >= 0.9 and r1["test_loss"] < before["loss"]
    assert set(r1) >= {
        "train_loss",
        "val_accuracy",
        "test_accuracy",
        "test_loss",
        "epochs",
        "seconds",
    }
    assert r1["epochs"] == 3 and len(r1["history"]) == 3
    assert r2["test_loss"] == r1["test_loss"]
    assert all(
        torch.equal(a, b)
        for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True)
    )
    m3 = _tiny_model()
    train_model(m3, data, epochs=3, lr=1e-2, batch_size=16, seed=2, progress=False)
    assert not torch.equal(m3.classifier[0].weight, m1.classifier[0].weight)


def test_train_model_restores_global_rng_and_accepts_options() -> None:
    data = _toy_data(n=40)
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    train_model(
        _tiny_model(),
        data,
        epochs=1,
        lr=1e-2,
        batch_size=8,
        optimizer="sgd",
        schedule="cosine",
        augment=["crop:2", "flip"],
        progress=True,  # the rich bar must not disturb anything
    )
    assert torch.equal(torch.rand(2), expected)
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'"):
        train_model(_tiny_model(), data, epochs=1, lr=1e-2, augment=["rotate"], progress=False)
    with pytest.raises(ValueError, match="unknown optimizer"):
        train_model(_tiny_model(), data, epochs=1, lr=1e-2, optimizer="lbfgs", progress=False)


def test_augment_crop_shifts_within_padding() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(8, 1, 1, 1)
    out = train_mod._augment(x, {"crop": 1}, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for img in out[:, 0]:  # every output is the input shifted by at most one pixel
        shifts = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(img, _shift(x[0, 0], dy, dx))
        ]
        assert shifts


def _shift(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    padded = torch.nn.functional.pad(img, (1, 1, 1, 1))
    return padded[1 + dy : 5 + dy, 1 + dx : 5 + dx]


def test_evaluate_restores_mode_and_counts() -> None:
    data = _toy_data(n=10)
    model = _tiny_model().train()
    out = evaluate(model, data.test, batch_size=3)
    assert model.training
    assert 0.0 <= out["accuracy"] <= 1.0 and out["loss"] > 0 and out["n"] == 10
    constant = nn.Sequential(nn.Flatten(), nn.Linear(256, 2))
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(torch.tensor([1.0, 0.0]))
    res = evaluate(constant, data.test)
    assert res["accuracy"] == 0.5
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2  # half each class
    assert res["loss"] == pytest.approx(expected, rel=1e-5)


# --- checkpoints -----------------------------------------------------------------------------


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHAPPRUNE_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("SHAPPRUNE_CACHE")
    assert cache_dir() == tmp_path / "b" / "shapprune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "shapprune"


def test_pretrained_trains_once_then_loads_from_cache(
    monkeypatch: pytest.MonkeyPatch, _isolated_cache: Path
) -> None:
    data = _toy_data(n=32)
    data = DatasetSplits(
        data.train, data.val, data.test, "toy", num_classes=2, in_channels=1, image_size=16
    )
    loads: list[str] = []

    def fake_load(name: str, root=None, seed: int = 0, *, image_size: int = 32) -> DatasetSplits:
        loads.append(name)
        return data

    calls: list[dict] = []
    real_train = train_mod.train_model

    def counting_train(model, data, **kwargs):
        calls.append(kwargs)
        return real_train(model, data, **kwargs)

    monkeypatch.setattr(train_mod, "load_dataset", fake_load)
    monkeypatch.setattr(train_mod, "train_model", counting_train)
    recipe = {"epochs": 1, "lr": 1e-2, "batch_size": 16, "model": {"cfg": [4, "M"]}}
    monkeypatch.setitem(train_mod.RECIPES, ("vgg", "toy"), recipe)

    m1, meta1 = pretrained("vgg", "toy", seed=0, progress=False)
    assert len(calls) == 1 and calls[0]["epochs"] == 1 and loads == ["toy"]
    files = sorted(p.name for p in _isolated_cache.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".safetensors")
    assert not any(p.name.startswith(".") for p in _isolated_cache.iterdir())  # no temp files

    m2, meta2 = pretrained("vgg", "toy", seed=0, progress=False)
    assert len(calls) == 1 and loads == ["toy"]  # neither trained nor loaded data again
    assert meta2 == meta1 and meta1["recipe"]["epochs"] == 1
    x = data.test.x[:4]
    with torch.no_grad():
        assert torch.equal(m1(x), m2(x))

    pretrained("vgg", "toy", seed=1, progress=False)  # another seed is another checkpoint
    assert len(calls) == 2
    monkeypatch.setitem(train_mod.RECIPES, ("vgg", "toy"), {**recipe, "lr": 2e-2})
    pretrained("vgg", "toy", seed=0, progress=False)  # a changed recipe is not served stale
    assert len(calls) == 3


def test_pretrained_unknown_model() -> None:
    with pytest.raises(ValueError, match="no training recipe for model 'alexnet'"):
        pretrained("alexnet", "mnist5k", progress=False)
