"""The jobs behind the command line, callable from Python: rank a layer, the demo's experiment."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from shapprune.estimators.registry import default_budget, estimate
from shapprune.game.spec import GameSpec

__all__ = ["DEMO_EXPERIMENT", "rank_layer"]


def rank_layer(
    model_name: str,
    data_name: str,
    layer: str,
    method: str,
    budget: int | None,
    seed: int,
    metric: str = "loss",
    per_class: int = 25,
    root: str | None = None,
    progress: Callable[[str, int], object] | None = None,
    options: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> dict:
    """Shapley values of ``layer``'s units on a reference set from the validation split;
    ``options`` are the method's declared options. The game is built from a ``GameSpec`` (in
    the record, to rebuild it) on ``device`` (None / "auto": the first available accelerator,
    else the CPU)."""
    spec = GameSpec(
        model=model_name,
        layer=layer,
        data=data_name,
        root=root,
        split="val",
        per_class=per_class,
        seed=seed,
        metric=metric,
    )
    model, meta, ref = spec.load(device)
    game = spec.game(model, ref)
    options = options or {}
    total = budget if budget is not None else default_budget(method, game.n_players, **options)
    if progress is None:
        est = estimate(game, method, budget, seed, **options)
    else:
        with progress(f"{method} on {layer}", total) as update:
            est = estimate(game, method, budget, seed, progress=update, **options)
    record = {
        "model": model_name,
        "data": data_name,
        "layer": layer,
        "metric": metric,
        "options": options,
        "reference_examples": len(ref),
        "players": game.players,
        "prefix_cached": game.cached,
        "device": str(game.device),
        "spec": spec.to_dict(),
        **est.to_dict(),
        "model_metrics": meta.get("metrics", {}),
    }
    return record


DEMO_EXPERIMENT = {
    "model": "lenet5",
    "data": "mnist5k",
    "layers": ["conv1", "conv2"],
    "experiments": ["robustness", "rates", "oracle"],
    "criteria": [
        "random",
        "weight-l1",
        "taylor",
        "sensitivity",
        "apoz",
        "lrp",
        {"name": "shapley-permutation", "budget": 1000},
    ],
    "seeds": [0],
    "rates": [0.0, 0.2, 0.4, 0.6, 0.8],
    "oracle_ks": [1, 2, 3],
}
