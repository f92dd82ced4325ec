"""Helpers shared by the tests (imported as ``from helpers import ...``)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from shapprune import cli


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """``shapprune ARGS`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr("sys.argv", ["shapprune", *map(str, args)])
    with pytest.raises(SystemExit) as done:
        cli.main()
    out = capsys.readouterr()
    return done.value.code or 0, out.out, out.err


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorms non-trivial statistics and affine parameters, so that where a unit is
    masked (before or after its BatchNorm) matters; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.3)
    return model.eval()


# What float32 allows between two computations of one value (a game's value, a logit) that
# went through different batch or stack shapes, thread counts or CPUs: matrix products block
# their sums differently, so results agree to a few units in the 6th significant digit,
# not bit for bit. Bit-identical holds only on one machine with the same stack sizes.
F32_ACROSS_SHAPES = 1e-5


class EncoderClassifier(nn.Module):
    """A user's transformer on torch's own blocks: patches from a strided convolution,
    ``nn.TransformerEncoder`` layers (``nn.MultiheadAttention`` inside, which applies its
    ``out_proj`` without calling it), the tokens' mean, a linear head; 32 x 32 RGB inputs
    give 16 tokens, kept (batch, tokens, features) or, ``batch_first=False``, (tokens,
    batch, features)."""

    def __init__(
        self, batch_first: bool = True, norm_first: bool = False, dim: int = 16, seed: int = 0
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.batch_first = batch_first
        self.embed = nn.Conv2d(3, dim, 8, stride=8)
        layer = nn.TransformerEncoderLayer(
            dim, 4, 32, dropout=0.0, batch_first=batch_first, norm_first=norm_first
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 10)
        with torch.no_grad():  # torch initialises the attention's biases to 0: make them count
            for name, p in self.named_parameters():
                if "proj_bias" in name or "out_proj.bias" in name:
                    p.normal_(std=0.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        if not self.batch_first:
            tokens = tokens.transpose(0, 1)
        tokens = self.encoder(tokens)
        return self.head(tokens.mean(1 if self.batch_first else 0))


def tiny_torchvision_vit(seed: int = 0) -> nn.Module:
    """torchvision's ``VisionTransformer`` (``nn.MultiheadAttention`` in every block), small:
    32 x 32 inputs, 8 x 8 patches, 2 layers of 4 heads, width 32, MLP 64, 10 classes; its
    head, which torchvision initialises to zeros, random."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    )  # fmt: skip
    nn.init.normal_(model.heads.head.weight, std=0.5)
    return model.eval()


TORCH_ATTENTION = {  # models on nn.MultiheadAttention, by test id
    "torchvision-vit": tiny_torchvision_vit,
    "encoder-batch-first": lambda: EncoderClassifier(batch_first=True),
    "encoder-sequence-first": lambda: EncoderClassifier(batch_first=False, norm_first=True),
}


def toy_splits(n: int = 20, shape=(3, 32, 32), classes: int = 10, seed: int = 0):
    """Random images, labels cycling through the classes: the same split for train, val
    and test (what ``prune_model`` takes)."""
    from shapprune.zoo.data import DatasetSplits, Split

    g = torch.Generator().manual_seed(seed)
    split = Split(torch.randn(n, *shape, generator=g), torch.arange(n) % classes)
    return DatasetSplits(
        split, split, split, name="toy", num_classes=classes, in_channels=shape[0],
        image_size=shape[1],
    )  # fmt: skip


# A user's own model file, as the model-source tests write it (FILE.py:Net)
USER_MODEL_CODE = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(width * 13 * 13, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.conv1(x))), 1))

def broken(**kwargs):
    raise RuntimeError("no GPU named bob")
"""


def save_tiny_hf_vit(folder, seed: int = 0, **config) -> nn.Module:
    """A small Hugging Face ``ViTForImageClassification`` (random weights, seeded) saved
    with ``save_pretrained`` into ``folder``, as a user's fine-tuned folder would be; the
    model is returned in eval mode. ``config``: ``ViTConfig`` fields over these defaults."""
    transformers = pytest.importorskip("transformers")
    settings = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                "num_attention_heads": 2, "num_labels": 10, **config}  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.ViTForImageClassification(transformers.ViTConfig(**settings)).eval()
    model.save_pretrained(folder)
    return model


def write_images(
    folder: Path, per_class: int, classes=("cat", "dog", "emu"), mode: str = "RGB", seed: int = 0
) -> Path:
    """``per_class`` small images of random pixels per class (sizes vary: resizing is
    tested), each class a little brighter than the last."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = 10 + i % 3, 12 + i % 4
            shape = (h, w) if mode == "L" else (h, w, 3)
            pixels = rng.integers(0, 120, size=shape) + 60 * c
            Image.fromarray(pixels.astype(np.uint8), mode).save(folder / name / f"{i}.png")
    return folder


def separable_splits(n: int = 96, seed: int = 0):
    """Linearly separable 2-class data (the class is the sign of the mean pixel), 1 x 16 x
    16: the same split for train, val and test."""
    from shapprune.data import DatasetSplits, Split

    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 16, 16, generator=g) * 0.5 + (y.float() * 2 - 1)[:, None, None, None]
    s = Split(x, y)
    return DatasetSplits(s, s, s, name="toy", num_classes=2, in_channels=1, image_size=16)


def tiny_vgg(seed: int = 0) -> nn.Module:
    """A one-conv VGG for ``separable_splits``."""
    from shapprune.zoo.models import build_model

    return build_model("vgg", in_channels=1, image_size=16, num_classes=2, cfg=[4, "M"], seed=seed)


def assert_settled_bottom_k(est, game, k: float, budget: int) -> None:
    """A top-/bottom-k estimator's answer (bandit, cut) on a game with known values: the
    true k lowest selected and ranked first, settled with confidence before the budget
    ran out, and every value inside its interval."""
    from shapprune.estimators.bandit import resolve_k

    count = resolve_k(k, game.n_players)
    truth = np.argsort(game.shapley())[:count]
    assert sorted(est.selected.tolist()) == sorted(truth.tolist())
    assert est.info["settled"] and est.info["in_doubt"] == 0
    assert est.confidence >= 0.9 and est.n_evals < budget  # stopped once settled
    assert sorted(est.ranking[:count].tolist()) == sorted(truth.tolist())
    lo, hi = est.intervals.T
    assert np.all(lo <= est.values) and np.all(est.values <= hi)


class SizeGame:
    """v(S) = w . z + c (|S| / n)^2: the Shapley value of i is w_i + c / n, and the size
    term makes every marginal depend on where in the walk it falls (noisy samples, what
    the position control variate takes out)."""

    def __init__(self, weights, c: float = 3.0) -> None:
        self.w = np.asarray(weights, dtype=np.float64)
        self.n_players, self.c = len(self.w), c

    def value(self, masks: torch.Tensor) -> torch.Tensor:
        z = masks.reshape(-1, self.n_players).numpy().astype(np.float64)
        return torch.from_numpy(z @ self.w + self.c * (z.sum(1) / self.n_players) ** 2)

    def shapley(self) -> np.ndarray:
        return self.w + self.c / self.n_players
