"""Inputs beyond 4-D images: a token-id transformer classifier (int64 inputs, (batch, classes)
logits) is a game like any other, masking equals physical removal, and criteria score it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shapprune.criteria.registry import get_criterion
from shapprune.estimators.registry import estimate
from shapprune.game.pruning_game import PruningGame
from shapprune.pruning.removal import apply_removals
from shapprune.zoo.models import Attention, Mlp

VOCAB, DIM, HEADS, HIDDEN, CLASSES, LENGTH = 40, 16, 4, 24, 5, 7


class TokenClassifier(nn.Module):
    """Embedding, one pre-norm transformer block, mean pooling over tokens, linear head.

    ``torch_mha`` uses ``nn.MultiheadAttention`` instead of the zoo's timm-style attention;
    ``branchy`` adds data-dependent control flow, so torch.fx cannot trace the model."""

    def __init__(self, torch_mha: bool = False, branchy: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.norm1 = nn.LayerNorm(DIM)
        self.torch_mha = torch_mha
        self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True) if torch_mha else (
            Attention(DIM, HEADS)
        )  # fmt: skip
        self.norm2 = nn.LayerNorm(DIM)
        self.mlp = Mlp(DIM, HIDDEN)
        self.head = nn.Linear(DIM, CLASSES)
        self.branchy = branchy

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        a = self.norm1(h)
        h = h + (self.attn(a, a, a)[0] if self.torch_mha else self.attn(a))
        if self.branchy and bool(tokens.sum() >= 0):  # always true, but not traceable
            h = h * 1.0
        h = h + self.mlp(self.norm2(h))
        return self.head(h.mean(dim=1))


def _model(seed: int = 0, **kwargs) -> TokenClassifier:
    torch.manual_seed(seed)
    model = TokenClassifier(**kwargs).eval()
    with torch.no_grad():  # larger than the default init, so that every unit matters
        for p in model.parameters():
            p.mul_(2.0)
    return model


def _tokens(n: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (n, LENGTH), generator=g, dtype=torch.int64)
    return x, torch.randint(0, CLASSES, (n,), generator=g)


CASES = [
    pytest.param({}, "mlp.fc1", HIDDEN, id="mlp-neurons"),
    pytest.param({}, "attn", HEADS, id="zoo-attention-heads"),
    pytest.param({"torch_mha": True}, "attn", HEADS, id="torch-mha-heads"),
    pytest.param({"torch_mha": True}, "mlp.fc1", HIDDEN, id="torch-mha-mlp-neurons"),
]


@pytest.mark.parametrize(("kwargs", "layer", "n"), CASES)
def test_token_game_masks_as_removal_computes(kwargs, layer, n):
    model = _model(**kwargs)
    x, y = _tokens()
    game = PruningGame(model, layer, (x, y), max_stack=3)
    assert game.cached and game.n_players == n
    assert game.x.dtype == torch.int64  # token ids pass through, never cast to float
    removals = [[0], [1, 2], list(range(1, n))]
    masks = torch.ones(len(removals), n, dtype=torch.bool)
    for row, units in zip(masks, removals, strict=True):
        row[units] = False
    values = game.value(masks)
    for mask, units, value in zip(masks, removals, values, strict=True):
        pruned = apply_removals(model, {layer: units}, x[:2])
        with torch.no_grad():
            logits = pruned(x)
        assert logits.shape == (len(x), CLASSES)
        torch.testing.assert_close(game.logits(mask), logits, rtol=1e-5, atol=1e-5)
        expected = -F.cross_entropy(logits.double(), y).item()
        assert abs(float(value) - expected) < 1e-5


def test_untraceable_token_model_falls_back_to_hooks_with_the_same_values():
    x, y = _tokens()
    traced = PruningGame(_model(), "mlp.fc1", (x, y))
    with pytest.warns(UserWarning, match="prefix caching is off"):
        hooked = PruningGame(_model(branchy=True), "mlp.fc1", (x, y))
    assert traced.cached and not hooked.cached
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(6, HIDDEN, generator=g) > 0.5
    torch.testing.assert_close(hooked.value(masks), traced.value(masks), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("kwargs", "layer", "n"), CASES[:2])
def test_criteria_score_a_token_model(kwargs, layer, n):
    model = _model(**kwargs)
    x, y = _tokens()
    scores = {}
    for name, options in [
        ("weight-l1", {}),
        ("taylor", {}),
        ("apoz", {}),
        ("shapley-permutation", {"budget": 4 * n + 8}),
    ]:
        s = get_criterion(name, **options).score(model, [layer], (x, y), seed=0)[layer]
        assert s.shape == (n,) and s.dtype == np.float64 and np.all(np.isfinite(s)), name
        scores[name] = s
    if layer == "mlp.fc1":
        by_hand = model.mlp.fc1.weight.detach().double().abs().sum(1).numpy()
        np.testing.assert_allclose(scores["weight-l1"], by_hand, rtol=1e-12)
    again = get_criterion("shapley-permutation", budget=4 * n + 8).score(model, [layer], (x, y))[
        layer
    ]
    np.testing.assert_array_equal(again, scores["shapley-permutation"])
    assert np.ptp(scores["taylor"]) > 0  # gradients reached the units through the embedding


def test_exact_shapley_of_token_heads_is_efficient():
    x, y = _tokens()
    game = PruningGame(_model(), "attn", (x, y))
    values = estimate(game, "exact", seed=0).values
    full = game.value(torch.ones(HEADS, dtype=torch.bool))
    empty = game.value(torch.zeros(HEADS, dtype=torch.bool))
    # float32 logits: values of a coalition differ slightly between stack sizes
    assert abs(values.sum() - float(full - empty)) < 1e-6
    assert float(full - empty) != 0.0
