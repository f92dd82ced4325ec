"""The jobs behind the command line, callable from Python: rank a layer, the demo's experiment."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from shapprune.estimators.executors import ExecutorOptions, using_executor
from shapprune.estimators.registry import default_budget, estimate
from shapprune.estimators.resume import Checkpoint, using_checkpoint
from shapprune.game.spec import GameSpec
from shapprune.options import build_options

__all__ = ["DEMO_EXPERIMENT", "evaluating", "executor_options", "rank_layer"]


def executor_options(
    executor: str, workers: int, ray_address: str | None, threads: int | None = None
) -> ExecutorOptions:
    """The command line's executor flags, checked (one-line ValueError naming the fix)."""
    values = {"executor": executor, "workers": workers, "ray_address": ray_address}
    values["threads"] = threads
    return build_options(ExecutorOptions, values, "the executor")


@contextmanager
def evaluating(
    executor: ExecutorOptions | None,
    checkpoint: Path | None = None,
    identity: dict[str, Any] | None = None,
    every_evals: int = 10_000,
) -> Iterator[Checkpoint | None]:
    """Every estimation inside runs on ``executor`` and records to the ``checkpoint`` file
    (resuming from it if an earlier run of the same command, ``identity``, left it); the
    file is removed when the block completes, kept if it is interrupted."""
    found = Checkpoint(checkpoint, identity or {}, every_evals) if checkpoint else None
    with using_executor(executor), using_checkpoint(found):
        yield found
    if found is not None:
        found.remove()


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
    model_args: dict[str, Any] | None = None,
    weights: str | None = None,
    trust_pickle: bool = False,
    preprocessing: dict[str, Any] | None = None,
    classes: str | None = None,
) -> dict:
    """Shapley values of ``layer``'s units on a reference set from the validation split;
    ``options`` are the method's declared options; ``preprocessing`` and ``classes``: how an
    image folder's files become the model's inputs (``load_data``'s keywords). The game is
    built from a ``GameSpec`` (in the record, to rebuild it) on ``device`` (None / "auto":
    the first available accelerator, else the CPU)."""
    spec = GameSpec(
        model=model_name,
        layer=layer,
        data=data_name,
        root=root,
        split="val",
        per_class=per_class,
        seed=seed,
        metric=metric,
        model_args=dict(model_args or {}),
        weights=weights,
        trust_pickle=trust_pickle,
        preprocessing=dict(preprocessing) if preprocessing else None,
        classes=classes,
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
