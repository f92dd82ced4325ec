"""The registry of criteria: every way to score units, by name.

``register_criterion(name, cls, **fixed)`` (or ``@criterion(name)``) adds one; the Shapley
family is derived from the estimator registry when read, so every registered estimator E
is the criterion ``shapley-E`` without a line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

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
from shapprune.criteria.lrp_options import LRPOptions
from shapprune.criteria.network import NetworkShapleyCriterion
from shapprune.criteria.shapley import ShapleyCriterion, criterion_names
from shapprune.options import build_options, describe

__all__ = [
    "CRITERIA",
    "CriterionFactory",
    "criterion",
    "get_criterion",
    "register_criterion",
    "score_layers",
]


class CriterionFactory:
    """Builds the criterion ``name``: class ``cls`` with the ``fixed`` options of the
    registration and the user's, checked against the declaration first."""

    def __init__(self, name: str, cls: type[Criterion] | str, fixed: dict[str, Any]) -> None:
        self.name, self._cls, self.fixed = name, cls, dict(fixed)
        self._declaration: type | None = None

    @property
    def cls(self) -> type[Criterion]:
        if isinstance(self._cls, str):  # "module:Class", imported on first use
            module, _, attr = self._cls.partition(":")
            self._cls = getattr(importlib.import_module(module), attr)
        return self._cls

    @property
    def declaration(self) -> type:
        """The dataclass declaring the options (minus those fixed by the registration)."""
        if self._declaration is not None:
            return self._declaration
        return self.cls.declaration_for(**self.fixed)

    def check(self, options: dict[str, Any]) -> Any:
        """``options`` checked against the declaration (one-line ValueError if not)."""
        return build_options(
            self.declaration, options, f"criterion {self.name!r}", tuple(self.fixed)
        )

    def describe(self) -> str:
        return describe(self.declaration, tuple(self.fixed))

    def __call__(self, *args: Any, **options: Any) -> Criterion:
        if not args:
            self.check(options)
        crit = self.cls(*args, **self.fixed, **options)
        crit.name = self.name
        return crit

    def __repr__(self) -> str:
        return f"CriterionFactory({self.name!r})"


_REGISTERED: dict[str, CriterionFactory] = {}


def register_criterion(
    name: str,
    cls: type[Criterion] | str,
    *,
    options: type | None = None,
    replace: bool = False,
    **fixed: Any,
) -> CriterionFactory:
    """Make ``cls`` (with the ``fixed`` options) the criterion ``name``.

    ``cls`` may be ``"module:Class"``, imported when first built; ``options`` then gives its
    declaration, so that it can be checked and described without the import.
    """
    if (name in _REGISTERED or name in criterion_names()) and not replace:
        raise ValueError(f"a criterion named {name!r} is already registered; pass replace=True")
    factory = CriterionFactory(name, cls, fixed)
    factory._declaration = options
    _REGISTERED[name] = factory
    return factory


def criterion(name: str, **fixed: Any):
    """Class decorator: ``@criterion("my-name")`` registers the class under that name."""

    def register(cls: type[Criterion]) -> type[Criterion]:
        register_criterion(name, cls, **fixed)
        return cls

    return register


class _Criteria(Mapping):
    """Name -> factory for every criterion: the registered ones and, read at each access,
    the Shapley family of the registered estimators."""

    def _all(self) -> dict[str, CriterionFactory]:
        out = dict(_REGISTERED)
        for name, method in criterion_names().items():
            if name not in out:
                out[name] = CriterionFactory(name, ShapleyCriterion, {"method": method})
        return out

    def __getitem__(self, name: str) -> CriterionFactory:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return f"CRITERIA({', '.join(self)})"


CRITERIA: Mapping[str, CriterionFactory] = _Criteria()

register_criterion("random", RandomCriterion)
register_criterion("weight-l1", WeightNormCriterion, p=1)
register_criterion("weight-l2", WeightNormCriterion, p=2)
register_criterion("taylor", TaylorCriterion, signed=False)
register_criterion("taylor-signed", TaylorCriterion, signed=True)
register_criterion("sensitivity", SensitivityCriterion)
register_criterion("apoz", APoZCriterion)
register_criterion("bn-scale", BNScaleCriterion)
register_criterion("network-shapley", NetworkShapleyCriterion)  # one game over all the layers
# LRP needs zennit, imported only when an LRP criterion is built
register_criterion("lrp", "shapprune.criteria.lrp:LRPCriterion", options=LRPOptions)


def get_criterion(name: str, **options: Any) -> Criterion:
    """The criterion registered as ``name``, built with ``options`` (checked against its
    declaration: an unknown option or a wrong type is a one-line ValueError)."""
    factories = CRITERIA
    if name not in factories:
        raise ValueError(
            f"unknown criterion {name!r}; known criteria: {', '.join(sorted(factories))}"
        )
    return factories[name](**options)


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
    return criterion.score(model, layers, data, seed=seed)
