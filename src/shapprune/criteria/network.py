"""The network-wide Shapley criterion: one game over the units of every layer asked for.

``network-shapley`` plays ONE :class:`~shapprune.game.network_game.NetworkGame` over the
layers it scores (Neuron Shapley), so a unit's value is measured with the other layers'
units in and out as well, and values of different layers are on one scale: a global plan
can cut by them directly (``--global --normalisation none``). Its options are the game's,
the estimator ``method``, and every registered estimator's own options (each None = that
estimator's default; only the chosen method's may be set; one name declared by several
estimators, such as ``k``, accepts each one's type).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

import numpy as np
import torch
from torch import nn

from shapprune.criteria.base import Criterion, _checked, estimate_scores
from shapprune.criteria.shapley import GameOptions, with_cut
from shapprune.estimators.base import Estimate
from shapprune.estimators.registry import ESTIMATORS, estimate, get_estimator
from shapprune.game.network_game import NetworkGame
from shapprune.options import option

__all__ = ["NetworkShapleyCriterion", "network_options"]


def _check(self: Any) -> None:
    """``__post_init__``: the game's options, a known method, and only its options set."""
    values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    get_estimator(values["method"])  # an unknown method fails here, naming the known ones
    game = {f.name for f in dataclasses.fields(GameOptions)}
    GameOptions(**{k: v for k, v in values.items() if k in game})
    own = {f.name for f in dataclasses.fields(get_estimator(values["method"]).Options)}
    others = [k for k, v in _estimator_values(self).items() if v is not None and k not in own]
    if others:
        raise ValueError(
            f"option(s) {', '.join(others)} are not options of method {values['method']!r}"
            + (f"; its options: {', '.join(sorted(own))}" if own else ", which has none")
        )


def _estimator_values(options: Any) -> dict[str, Any]:
    fixed = {f.name for f in dataclasses.fields(GameOptions)} | {"method"}
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
            if f.name not in fixed}  # fmt: skip


@functools.cache
def _declaration(estimators: tuple[tuple[str, type], ...]) -> type:
    hints = typing.get_type_hints(GameOptions)
    helps = {"budget": "coalition evaluations for the whole network (default: the method's)"}
    fields: list[tuple[str, Any, Any]] = [
        ("method", str, option("permutation", "the estimator of the network-wide values"))
    ]
    fields += [
        (f.name, hints[f.name], option(f.default, helps.get(f.name, f.metadata["help"])))
        for f in dataclasses.fields(GameOptions)
    ]
    game_names = {name for name, _, _ in fields}
    shared: dict[str, tuple[Any, list[str], list[str]]] = {}  # name -> type, helps, texts
    for method, decl in estimators:
        est_hints = typing.get_type_hints(decl)
        for f in dataclasses.fields(decl):
            if f.name in game_names:
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            raw = f.metadata.get("help", "")
            tp, helps, texts = shared.get(f.name, (None, [], []))
            # one name, several estimators: one option accepting each one's type (partial's
            # depth k, the bandit's count or fraction k); a help said once per meaning
            tp = est_hints[f.name] | None if tp is None else tp | est_hints[f.name]
            if raw not in helps:
                helps, texts = [*helps, raw], [*texts, f"{raw} ({method}; None: {default!r})"]
            shared[f.name] = (tp, helps, texts)
    for name, (tp, _, texts) in shared.items():
        fields.append((name, tp, option(None, "; ".join(texts))))
    return dataclasses.make_dataclass(
        "NetworkShapleyOptions",
        fields,
        namespace={"__post_init__": _check, "__reduce__": _reduce},
    )


def _reduce(self: Any) -> tuple:
    """Pickle the declaration by its values (it is made when read, not a module attribute)."""
    return _rebuild, ({f.name: getattr(self, f.name) for f in dataclasses.fields(self)},)


def _rebuild(values: dict[str, Any]) -> Any:
    return network_options()(**values)


def network_options() -> type:
    """The declaration of ``network-shapley``, read now: ``method``, the game's options,
    then the registered estimators' options (default None: the estimator's own)."""
    return _declaration(tuple((name, est.Options) for name, est in ESTIMATORS.items()))


class NetworkShapleyCriterion(Criterion):
    """Values of the units of all the layers asked for, in one ``NetworkGame``.

    ``budget`` caps the coalitions evaluated for the whole network (default: the method's
    for that many players). The ``Estimate`` is kept in ``last_estimate`` and the game's
    player names in ``players``.
    """

    name = "network-shapley"
    normalisation = "none"  # one game: the layers' values are on one scale already

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.last_estimate: Estimate | None = None
        self.players: list[str] = []
        self.cut_fraction: float | None = None  # set by prune_model from its target

    def _chosen(self) -> dict[str, Any]:
        """The estimator's options the user set (the others: the estimator's defaults)."""
        return {k: v for k, v in _estimator_values(self.options).items() if v is not None}

    def uses_cut(self) -> bool:
        """Whether the estimator would aim at a pruning target's cut (``cut_fraction``)."""
        return get_estimator(self.options.method).uses_cut(self._chosen())

    @classmethod
    def declaration_for(cls, **fixed: Any) -> type:
        return network_options()

    def declaration(self) -> type:
        return network_options()

    def _score_layers(
        self, model: nn.Module, layers: list[str], x: torch.Tensor, y: torch.Tensor, seed: int
    ) -> dict[str, np.ndarray]:
        opts = self.options
        game = NetworkGame(
            model,
            (x, y),
            layers,
            metric=opts.metric,
            batch_size=opts.batch_size,
            compensate=opts.compensate,
        )
        chosen = with_cut(opts.method, self._chosen(), self.cut_fraction)
        est = estimate(game, opts.method, budget=opts.budget, seed=seed, **chosen)
        self.last_estimate, self.players = est, game.players
        values = _checked(estimate_scores(est), game.n_players, self.name)
        return game.scores(values)
