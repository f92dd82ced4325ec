"""Refining a plan at its target: swaps within layers, judged by the whole network."""

import numpy as np
import pytest
import torch
from helpers import randomise_norms

from shapprune.evaluation.measure import count_macs
from shapprune.game.network_game import NetworkGame
from shapprune.pruning.plan import prunable_layers
from shapprune.pruning.refinement import refine_plan
from shapprune.pruning.removal import apply_removals
from shapprune.zoo.models import build_model


def _setup(seed=0):
    model = randomise_norms(build_model("vgg", in_channels=1, image_size=28, seed=seed))
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(24, 1, 28, 28, generator=g), torch.randint(0, 10, (24,), generator=g)
    layers = prunable_layers(model, x[:2])
    rng = np.random.default_rng(seed)
    scores = {name: rng.normal(size=u.n_players) for name, u in layers.items()}
    removals = {name: list(np.argsort(s)[: len(s) // 2]) for name, s in scores.items()}
    return model, x, y, layers, scores, removals


@pytest.mark.parametrize("compensate", [False, True], ids=["zeroed", "compensated"])
def test_refinement_keeps_each_layer_s_count_and_never_does_worse(compensate):
    model, x, y, layers, scores, removals = _setup()
    fill = x if compensate else None
    refined, info = refine_plan(model, removals, scores, (x, y), 60, units=layers, compensate=fill)
    assert {n: len(v) for n, v in refined.items()} == {n: len(v) for n, v in removals.items()}
    assert info["sets_evaluated"] <= 60 and info["swapped"] >= 1
    game = NetworkGame(
        model, (x, y), list(layers), units=layers, compensate=fill if compensate else False
    )

    def value(r):
        keep = torch.ones(game.n_players, dtype=torch.bool)
        for name, idx in r.items():
            keep[[game.players_of(name).start + int(i) for i in idx]] = False
        return game.value(keep).item()

    assert value(refined) >= value(removals) and value(refined) == pytest.approx(info["value"])
    # the same MACs: only which units, not how many, changed
    a = apply_removals(model, removals, x[:2], compensate=fill)
    b = apply_removals(model, refined, x[:2], compensate=fill)
    assert count_macs(a, x[:2]) == count_macs(b, x[:2])


def test_refinement_budget_must_allow_a_comparison():
    model, x, y, layers, scores, removals = _setup()
    with pytest.raises(ValueError, match="at least 2 evaluations"):
        refine_plan(model, removals, scores, (x, y), 1, units=layers)
