"""A game you can ship: a plain, JSON-ready description from which any process rebuilds it.

``GameSpec`` names the model (a zoo name or a checkpoint path), the layer(s), the data and
how the reference examples are drawn, the payoff and the game's options; ``to_json`` /
``from_json`` carry it between processes, and ``PruningGame.from_spec(spec)`` (or
``spec.build()``) rebuilds the same game: the same players and, on the same machine with
the same stack sizes, the same values bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from shapprune.data import Split, reference_set
from shapprune.devices import resolve_device
from shapprune.game.network_game import NetworkGame
from shapprune.game.pruning_game import METRICS, MaskedGame, PruningGame
from shapprune.sources.data import check_data_source, load_data
from shapprune.sources.models import load_model

__all__ = ["GAME_OPTIONS", "GameSpec"]

SPLITS = ("train", "val", "test")
GAME_OPTIONS: dict[str, tuple[type, ...]] = {
    "batch_size": (int,),
    "memory_mb": (int, float),
    "max_stack": (int, type(None)),
    "cache": (bool,),
    "decompose": (bool,),
    "compensate": (bool,),
}
"""The keyword options of ``PruningGame`` a spec may set, with their JSON types."""

_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "layer": (str, type(None)),
    "layers": (list, type(None)),
    "data": (str,),
    "root": (str, type(None)),
    "split": (str,),
    "per_class": (int,),
    "seed": (int,),
    "metric": (str,),
    "options": (dict,),
    "model_args": (dict,),
    "weights": (str, type(None)),
    "trust_pickle": (bool,),
    "preprocessing": (dict, type(None)),
    "classes": (str, list, type(None)),
}


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _check_type(what: str, value: Any, types: tuple[type, ...]) -> None:
    # bool is an int in Python, but not in a spec: per_class=True is a mistake
    wrong = isinstance(value, bool) and bool not in types
    if wrong or not isinstance(value, types):
        raise ValueError(
            f"GameSpec {what} must be {_type_names(types)}, got {type(value).__name__} {value!r}"
        )


@dataclass(frozen=True)
class GameSpec:
    """What a pruning game is made of, in plain values (JSON-ready).

    Args:
        model: a model source: a zoo name (trained by its recipe on ``data``, cached), a
            checkpoint path, ``timm:NAME``, ``FILE.py:NAME``, ... (``shapprune.sources``).
        layer: the layer whose units are the players (a ``PruningGame``); or ``layers`` for
            a game over the units of several layers at once (a ``NetworkGame``).
        data: a data source (``shapprune.sources.data``): ``mnist5k``, a dataset name read
            from ``root``, an image folder, ``FILE.py:NAME``, ...
        root: the folder holding local datasets (None: the default data root).
        split: the split the reference examples are drawn from: train, val or test.
        per_class: reference examples per class.
        seed: the seed of the reference draw (the dataset's own split uses seed 0).
        metric: the game's payoff: loss, accuracy or margin.
        options: ``PruningGame`` keyword options (see ``GAME_OPTIONS``).
        model_args: keyword arguments of the model's builder (``--model-arg``).
        weights: a weights file loaded into the model (``--weights``).
        trust_pickle: whether a pickled module may be unpickled (``--trust-pickle``).
        preprocessing: image_size, resize, mean, std given explicitly (for an image folder
            whose model does not record its own).
        classes: the class names in index order, or a file of them (``--classes``).
    """

    model: str
    layer: str | None = None
    layers: list[str] | None = None
    data: str = "mnist5k"
    root: str | None = None
    split: str = "val"
    per_class: int = 25
    seed: int = 0
    metric: str = "loss"
    options: dict[str, Any] = field(default_factory=dict)
    model_args: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    trust_pickle: bool = False
    preprocessing: dict[str, Any] | None = None
    classes: str | list[str] | None = None

    def __post_init__(self) -> None:
        for name, types in _TYPES.items():
            _check_type(name, getattr(self, name), types)
        if not self.model:
            raise ValueError("GameSpec model must name a zoo model or a checkpoint path")
        if (self.layer is None) == (self.layers is None):
            raise ValueError("GameSpec needs exactly one of layer='name' or layers=[...]")
        if self.layers is not None:
            if not self.layers or not all(isinstance(n, str) and n for n in self.layers):
                raise ValueError(f"GameSpec layers must be a non-empty list of names, got "
                                 f"{self.layers!r}")  # fmt: skip
            object.__setattr__(self, "layers", list(self.layers))
        if self.split not in SPLITS:
            raise ValueError(f"GameSpec split must be one of {', '.join(SPLITS)}, got "
                             f"{self.split!r}")  # fmt: skip
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; choose one of: {', '.join(METRICS)}")
        if self.per_class < 1:
            raise ValueError(f"GameSpec per_class must be >= 1, got {self.per_class}")
        for key, value in self.options.items():
            if key not in GAME_OPTIONS:
                raise ValueError(
                    f"unknown GameSpec option {key!r}; known options: {', '.join(GAME_OPTIONS)}"
                )
            _check_type(f"option {key}", value, GAME_OPTIONS[key])
        object.__setattr__(self, "options", dict(self.options))

    @property
    def layer_names(self) -> list[str]:
        """The layer(s) whose units are the players."""
        return [self.layer] if self.layer is not None else list(self.layers or [])

    # --- plain values --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The spec as a dict of plain values (every field, defaults included)."""
        return asdict(self)

    def to_json(self) -> str:
        """The spec as JSON text (keys sorted: the same spec gives the same text)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GameSpec:
        """A spec from plain values; unknown keys or wrong types raise ValueError."""
        if not isinstance(values, dict):
            raise ValueError(f"a GameSpec must be a JSON object, got {type(values).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown GameSpec keys {unknown}; known keys: {', '.join(known)}")
        if "model" not in values:
            raise ValueError("a GameSpec needs 'model' (a zoo name or a checkpoint path)")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> GameSpec:
        """A spec from ``to_json``'s text; bad JSON, unknown keys or wrong types raise
        ValueError."""
        try:
            values = json.loads(text)
        except (TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"a GameSpec must be JSON text: {err}") from None
        return cls.from_dict(values)

    # --- building ------------------------------------------------------------------------

    def load(self, device: str | torch.device | None = None) -> tuple[nn.Module, dict, Split]:
        """The model on ``device`` (None / "auto": the first available accelerator, else the
        CPU), its metadata, and the reference examples."""
        check_data_source(self.data)  # before the model: a zoo model would train on it
        model, meta = load_model(
            self.model, self.data, root=self.root, weights=self.weights,
            trust_pickle=self.trust_pickle, **self.model_args,
        )  # fmt: skip
        model = model.to(resolve_device(device))
        splits = load_data(self.data, model=model, meta=meta, preprocessing=self.preprocessing,
                           classes=self.classes, root=self.root, seed=0)  # fmt: skip
        ref = reference_set(getattr(splits, self.split), per_class=self.per_class, seed=self.seed,
                            classes=splits.classes)  # fmt: skip
        return model, meta, ref

    def game(self, model: nn.Module, ref: Split) -> MaskedGame:
        """The game on an already loaded model and reference set (as ``load`` gives them):
        a ``PruningGame`` for ``layer``, a ``NetworkGame`` for ``layers``."""
        game: MaskedGame
        if self.layer is not None:
            game = PruningGame(model, self.layer, ref, metric=self.metric, **self.options)
        else:
            game = NetworkGame(model, ref, self.layers, metric=self.metric, **self.options)
        game.spec = self
        return game

    def build(self, device: str | torch.device | None = None) -> MaskedGame:
        """The game this spec describes, on ``device`` (see ``load``)."""
        model, _, ref = self.load(device)
        return self.game(model, ref)
