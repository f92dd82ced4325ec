"""Tests for the training loop: learning, seeds, options, augmentation, and training
streamed from a Dataset in the same order as from tensors."""

from __future__ import annotations

import pytest
import torch
from helpers import separable_splits, tiny_vgg
from torch.utils.data import TensorDataset

from shapprune import training as train_mod
from shapprune.data import DatasetSplits
from shapprune.evaluation.measure import evaluate
from shapprune.training import train_model


def test_train_model_learns_and_is_seeded() -> None:
    data = separable_splits()
    m1, m2 = tiny_vgg(), tiny_vgg()
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
    m3 = tiny_vgg()
    train_model(m3, data, epochs=3, lr=1e-2, batch_size=16, seed=2, progress=False)
    assert not torch.equal(m3.classifier[0].weight, m1.classifier[0].weight)


def test_train_model_restores_global_rng_and_accepts_options() -> None:
    data = separable_splits(n=40)
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    train_model(
        tiny_vgg(),
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
        train_model(tiny_vgg(), data, epochs=1, lr=1e-2, augment=["rotate"], progress=False)
    with pytest.raises(ValueError, match="unknown optimizer"):
        train_model(tiny_vgg(), data, epochs=1, lr=1e-2, optimizer="lbfgs", progress=False)


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


def test_training_streamed_from_a_dataset_follows_the_tensors_order() -> None:
    """A Dataset (an image folder, say) is read batch by batch in the seeded order the
    tensors are indexed in: the same updates, up to float32's batch-shape noise."""
    data = separable_splits(n=45)
    streamed = DatasetSplits(
        TensorDataset(data.train.x, data.train.y), TensorDataset(data.val.x, data.val.y),
        TensorDataset(data.test.x, data.test.y), name="toy", num_classes=2, in_channels=1,
        image_size=16,
    )  # fmt: skip
    m1, m2 = tiny_vgg(), tiny_vgg()
    options = {"epochs": 2, "lr": 1e-2, "batch_size": 8, "seed": 3, "progress": False,
               "augment": ["crop:1", "flip"]}  # fmt: skip
    r1 = train_model(m1, data, **options)
    r2 = train_model(m2, streamed, **options)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert r2["test_accuracy"] == pytest.approx(r1["test_accuracy"])
    assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-4)
