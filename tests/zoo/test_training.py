"""Tests for evaluation, checkpoints and the pretrained cache (tiny and fast)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import separable_splits, tiny_vgg
from torch import nn

from shapprune.evaluation.measure import evaluate
from shapprune.zoo import training as train_mod
from shapprune.zoo.cache import cache_dir, pretrained
from shapprune.zoo.data import DatasetSplits


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHAPPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_evaluate_restores_mode_and_counts() -> None:
    data = separable_splits(n=10)
    model = tiny_vgg().train()
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
    data = separable_splits(n=32)
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
