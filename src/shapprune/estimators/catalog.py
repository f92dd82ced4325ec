"""The estimators by name: the catalogue that ``registry`` fills with the built-in ones and
users extend with ``register_estimator``. Kept apart from ``registry`` (which imports every
built-in) so that an estimator built on others (``refine``) can look them up without an
import loop."""

from __future__ import annotations

from typing import Any

from shapprune.estimators.base import Estimator
from shapprune.options import build_options

__all__ = ["ESTIMATORS", "estimator_options", "get_estimator", "register_estimator"]

ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(estimator: Estimator | type[Estimator], *, replace: bool = False):
    """Make ``estimator`` (an instance, or a class built without arguments) reachable by its
    name; usable as a class decorator. Returns what it was given."""
    instance = estimator() if isinstance(estimator, type) else estimator
    if not isinstance(instance, Estimator) or not instance.name:
        raise TypeError(f"{estimator!r} is not an Estimator with a name")
    if instance.name in ESTIMATORS and not replace:
        raise ValueError(
            f"an estimator named {instance.name!r} is already registered; pass replace=True"
        )
    ESTIMATORS[instance.name] = instance
    return estimator


def get_estimator(name: str) -> Estimator:
    """The estimator registered as ``name``."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]


def estimator_options(method: str, options: dict[str, Any]) -> Any:
    """``options`` checked against ``method``'s declaration, as that declaration."""
    return build_options(get_estimator(method).Options, options, f"method {method!r}")
