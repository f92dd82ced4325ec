"""The declaration of the LRP criterion's options, apart from :mod:`shapprune.criteria.lrp`
so that the registry, the CLI and the configs can read it without importing zennit."""

from __future__ import annotations

from dataclasses import dataclass

from shapprune.criteria.lrp_spec import load_spec
from shapprune.options import option

__all__ = ["COMPOSITES", "LRPOptions"]

COMPOSITES: tuple[str, ...] = (
    "epsilon",
    "gamma",
    "alpha2-beta1",
    "z-plus",
    "epsilon-plus",
    "epsilon-plus-flat",
    "epsilon-alpha2-beta1",
    "epsilon-alpha2-beta1-flat",
    "epsilon-gamma-box",
)


def is_spec_file(name: str) -> bool:
    """Whether ``name`` names a composite JSON file (from ``tune-lrp``) rather than a composite."""
    return str(name).lower().endswith(".json")


def check_composite(name: str) -> None:
    """A known composite name, or a composite JSON file that reads back (checked now)."""
    if is_spec_file(name):
        load_spec(name)
        return
    if name not in COMPOSITES:
        raise ValueError(
            f"unknown LRP composite {name!r}; known: {', '.join(COMPOSITES)}, "
            "or a composite JSON file written by `shapprune tune-lrp`"
        )


@dataclass
class LRPOptions:
    """Options of the LRP criterion."""

    composite: str = option(
        "epsilon-plus-flat", f"LRP rules: {'|'.join(COMPOSITES)}, or a tune-lrp JSON file"
    )
    batch_size: int = option(64, "examples per LRP pass, at most (see memory_mb)")
    memory_mb: float = option(
        2048.0, "activation memory one LRP pass may hold; the batch shrinks to fit it"
    )
    canonize: bool = option(True, "fit the model for LRP first (merged BatchNorm, explicit sums)")
    epsilon: float = option(1e-6, "stabiliser of the epsilon rule")
    gamma: float = option(0.25, "weight of positive contributions in the gamma rule")

    def __post_init__(self) -> None:
        check_composite(self.composite)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.memory_mb <= 0:
            raise ValueError(f"memory_mb must be > 0, got {self.memory_mb}")
        if self.epsilon < 0 or self.gamma < 0:
            raise ValueError(f"epsilon and gamma must be >= 0, got {self.epsilon} and {self.gamma}")
