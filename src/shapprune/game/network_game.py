"""The network game: the prunable units of many layers at once are the players.

Neuron Shapley's game (Ghorbani and Zou): a unit's value is measured against coalitions
that span the whole network, so values of units of different layers are comparable
without a per-layer normalisation. A coalition keeps its units; every other unit is zeroed
where it enters its consumers, which computes exactly what the network with the union of
those units physically removed computes (``apply_removals``). Each layer's players are a
contiguous slice of the mask (``players_of``), named as the one-layer games name them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from shapprune.game.pruning_game import MaskedGame
from shapprune.game.units import Units, coupling_key, layer_units, prunable_units


class NetworkGame(MaskedGame):
    """The cooperative game whose players are the prunable units of several layers.

    Args:
        model: the network (not modified; the game works on a copy in eval mode).
        data: ``(x, y)`` tensors, or an object with ``.x`` and ``.y``.
        layers: the layers whose units play, in this order (default: every prunable layer,
            one per coupled group, as ``prunable_layers`` lists them). Two layers of one
            coupled group (a residual stream) would be the same players: refused.
        metric: "loss" (minus mean cross-entropy), "accuracy" or "margin".
        batch_size, memory_mb, max_stack, cache, decompose, compensate: as for
            ``PruningGame``.
        units: layers' units already found on ``model`` (``prunable_layers``,
            ``layer_units``); without ``layers``, their layers are the game's.
    """

    def __init__(
        self,
        model: nn.Module,
        data,
        layers: Sequence[str] | None = None,
        metric: str = "loss",
        *,
        batch_size: int = 512,
        memory_mb: float = 512.0,
        max_stack: int | None = None,
        cache: bool = True,
        decompose: bool = True,
        units: Mapping[str, Units] | None = None,
        compensate: bool | torch.Tensor | Mapping[str, torch.Tensor] = False,
    ) -> None:
        if isinstance(layers, str):
            layers = [layers]
        if layers is not None and not layers:
            raise ValueError("a network game needs at least one layer")
        if layers is not None and len(set(layers)) != len(layers):
            twice = sorted({n for n in layers if list(layers).count(n) > 1})
            raise ValueError(f"layers named more than once: {', '.join(twice)}")
        super().__init__(
            model,
            data,
            metric,
            batch_size=batch_size,
            memory_mb=memory_mb,
            max_stack=max_stack,
            compensate=compensate,
        )
        example = self.x[: min(2, len(self.x))]
        known = dict(units or {})
        if layers is None:
            found = known or prunable_units(self.model, example)
            if not found:
                raise ValueError("the model has no prunable layer")
        else:
            missing = [name for name in layers if name not in known]
            if missing:
                known.update(layer_units(self.model, missing, example))
            found = {name: known[name] for name in layers}
        for name, u in found.items():
            if u.layer != name:
                raise ValueError(f"the units given for {name!r} are {u.layer!r}'s")
        _check_distinct(found)
        self.layers: list[str] = list(found)
        self._play(tuple(found.values()), cache, decompose)

    def _described(self) -> str:
        return f"the network game over {len(self.layers)} layers"


def _check_distinct(found: Mapping[str, Units]) -> None:
    """Refuse two layers whose units are the same players (one coupled group)."""
    first: dict[frozenset[str], str] = {}
    for name, u in found.items():
        key = coupling_key(u)
        if key in first:
            raise ValueError(
                f"{first[key]!r} and {name!r} are coupled (removed together): their units "
                "are the same players; name one of them"
            )
        first[key] = name
