"""What pruning does when not told otherwise, declared once.

``prune_model`` takes its defaults from ``PRUNE_DEFAULTS`` and ``shapprune prune`` reads
the same record, so the library called with no options runs what the command runs. They
are the settings that won the head-to-head against Torch-Pruning's pruners at equal MACs
(``benchmarks/vs_torch_pruning.py``, BENCHMARKS.md section 6).
"""

from __future__ import annotations

import dataclasses

from shapprune.options import option

__all__ = ["PRUNE_DEFAULTS", "PruneDefaults", "resolve_cost"]


@dataclasses.dataclass(frozen=True)
class PruneDefaults:
    """The pipeline's defaults; see ``prune_model`` for what each one does."""

    criterion: str = option("lrp", "how units are scored: a registered criterion")
    target: str = option("macs=0.5", "what to remove: channels=F, params=F or macs=F")
    global_: bool | str = option(
        "auto",
        "units ranked across layers (True), the same fraction of every layer (False), or "
        "both built and the one with the lower loss on the reference examples kept (auto)",
    )
    cost: str | None = option(
        "auto",
        "with a global plan, units ranked by score per macs|params saved; auto: the "
        "target's kind for a macs or params target; None: by score alone",
    )
    compensate: bool | str = option(
        "auto",
        "removed units leave their mean as a bias (True), are zeroed (False), or the "
        "better of both on the reference examples (auto)",
    )
    refine: int = option(
        300,
        "evaluations of whole removal sets on the reference examples spent swapping units "
        "within layers at the target (0: none)",
    )
    per_class: int = option(25, "reference examples per class, drawn from the validation split")
    steps: int = option(1, "iterative pruning in this many steps, scored anew before each")
    mode: str = option("remove", "remove units physically, or mask them (zeroed, same shape)")
    seed: int = option(0, "draws the reference examples and any random choice")
    recalibrate: bool = option(
        True,
        "re-estimate BatchNorm's running statistics on the reference examples after each "
        "removal (no labels used): a removal changes what every later BatchNorm sees",
    )
    headroom: float = option(
        1.0,
        "a global plan that removes a fraction a of all units takes at most "
        "a + headroom * (1 - a) of any one layer's: 1 no cap, 0 the same fraction everywhere",
    )
    precision: str = option(
        "float32",
        "what the evaluations of removals (the plans compared, refinement) compute in: "
        "float32, or bfloat16 / float16 autocast (faster, values rounded; scoring and "
        "the measured accuracies stay float32)",
    )


PRUNE_DEFAULTS = PruneDefaults()


def resolve_cost(cost: str | None, global_: bool | str, kind: str) -> str | None:
    """The cost a global plan ranks by: "auto" is the target's kind (macs or params) where
    the plan may be global, else none; a per-layer plan has no cost."""
    if cost not in (None, "none", "auto", "macs", "params"):
        raise ValueError(f"cost takes macs, params, none or auto; got {cost!r}")
    if cost == "auto":
        return kind if global_ and kind in ("macs", "params") else None  # "auto" is truthy
    return None if cost == "none" else cost
