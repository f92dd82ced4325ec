"""The registry of criteria: every way to score units, by name."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from torch import nn

from shapprune.criteria.base import Criterion, Data
from shapprune.criteria.classic import (
    APoZCriterion,
    BNScaleCriterion,
    RandomCriterion,
    SensitivityCriterion,
    TaylorCriterion,
    WeightNormCriterion,
)
from shapprune.criteria.shapley import ShapleyCriterion

__all__ = ["CRITERIA", "get_criterion", "score_layers"]


# --- the registry -----------------------------------------------------------------------------


def _lrp(**options) -> Criterion:
    """LRP relevance (zennit), imported only when asked for."""
    from shapprune.criteria.lrp import LRPCriterion

    return LRPCriterion(**options)


CRITERIA: dict[str, Callable[..., Criterion]] = {
    "random": RandomCriterion,
    "weight-l1": functools.partial(WeightNormCriterion, 1),
    "weight-l2": functools.partial(WeightNormCriterion, 2),
    "taylor": functools.partial(TaylorCriterion, False),
    "taylor-signed": functools.partial(TaylorCriterion, True),
    "sensitivity": SensitivityCriterion,
    "apoz": APoZCriterion,
    "bn-scale": BNScaleCriterion,
    "shapley-exact": functools.partial(ShapleyCriterion, "exact"),
    "shapley-permutation": functools.partial(ShapleyCriterion, "permutation"),
    "shapley-kernel": functools.partial(ShapleyCriterion, "kernel"),
    "shapley-partial": functools.partial(ShapleyCriterion, "partial"),
    "loo": functools.partial(ShapleyCriterion, "loo"),
    "lrp": _lrp,
}


def get_criterion(name: str, **options) -> Criterion:
    """The criterion registered as ``name``, built with ``options``."""
    if name not in CRITERIA:
        raise ValueError(
            f"unknown criterion {name!r}; known criteria: {', '.join(sorted(CRITERIA))}"
        )
    return CRITERIA[name](**options)


def score_layers(
    criterion: Criterion | str,
    model: nn.Module,
    layers: list[str],
    data: Data,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Scores of the units of each layer in ``layers``, by one criterion (or its name)."""
    if isinstance(criterion, str):
        criterion = get_criterion(criterion)
    return {layer: criterion.score(model, layer, data, seed=seed) for layer in layers}
