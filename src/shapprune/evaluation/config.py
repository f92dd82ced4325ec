"""Experiment configurations: a YAML file, checked key by key before any work starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shapprune.criteria.registry import CRITERIA
from shapprune.estimators.registry import ESTIMATORS

EXPERIMENTS = ("robustness", "rates", "oracle", "cost_benefit")


@dataclass
class CriterionSpec:
    """A criterion by name, with its options (e.g. budget for the Shapley family)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name}[{extra}]" if extra else self.name


@dataclass
class ExperimentConfig:
    """What ``shapprune compare`` runs: criteria x layers x rates x seeds."""

    model: str = "lenet5"
    data: str = "mnist5k"
    # a source beyond the zoo, as --model-arg / --weights / --image-size ... give it
    model_args: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    classes: str | None = None
    layers: list[str] = field(default_factory=list)
    criteria: list[CriterionSpec] = field(default_factory=list)
    experiments: list[str] = field(default_factory=lambda: ["robustness", "rates"])
    seeds: list[int] = field(default_factory=lambda: [0])
    per_class: int = 25
    heldout: int = 1000
    rates: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    global_: bool = False
    compensate: bool = False  # robustness curves: removed units leave their reference mean
    oracle_ks: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    oracle_max_subsets: int = 20_000
    oracle_beam_width: int = 8
    cost_methods: list[str] = field(default_factory=lambda: ["permutation", "kernel", "partial"])
    cost_budgets: list[int] = field(default_factory=lambda: [100, 300, 1000, 3000])
    cost_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    cost_reference_budget: int = 20_000  # permutation run used as reference above 14 units
    root: str | None = None


_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "data": (str,),
    "model_args": (dict,),
    "weights": (str, type(None)),
    "preprocessing": (dict,),
    "classes": (str, type(None)),
    "layers": (list,),
    "criteria": (list,),
    "experiments": (list,),
    "seeds": (list,),
    "per_class": (int,),
    "heldout": (int,),
    "rates": (list,),
    "global": (bool,),
    "compensate": (bool,),
    "oracle_ks": (list,),
    "oracle_max_subsets": (int,),
    "oracle_beam_width": (int,),
    "cost_methods": (list,),
    "cost_budgets": (list,),
    "cost_seeds": (list,),
    "cost_reference_budget": (int,),
    "root": (str, type(None)),
}
_ITEMS = {
    "layers": str,
    "experiments": str,
    "seeds": int,
    "rates": (int, float),
    "oracle_ks": int,
    "cost_methods": str,
    "cost_budgets": int,
    "cost_seeds": int,
}


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and check an experiment YAML file; errors name the offending key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment config {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:  # one line: where, then what
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = getattr(err, "problem", None) or type(err).__name__
        raise ValueError(f"{path} is not valid YAML{where}: {what}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file (YAML expected)") from None
    return parse_config(raw, str(path))


PREPROCESSING = {"image_size": int, "resize": int, "mean": (int, float), "std": (int, float)}


def _check_preprocessing(given: dict[str, Any], source: str) -> None:
    """``preprocessing``: image_size and resize are integers, mean and std a number or a
    list of numbers (one per channel), as the command's --image-size ... --std take them."""
    for key, value in given.items():
        if key not in PREPROCESSING:
            raise ValueError(
                f"{source}: unknown key 'preprocessing.{key}'; known: {', '.join(PREPROCESSING)}"
            )
        kind = PREPROCESSING[key]
        values = value if isinstance(value, list) and kind is not int else [value]
        if not values or not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
            want = "an integer" if kind is int else "a number or a list of numbers"
            raise ValueError(f"{source}: key 'preprocessing.{key}' must be {want}, got {value!r}")


def preprocessing_of(config: ExperimentConfig) -> dict[str, Any]:
    """The config's preprocessing as ``load_data`` takes it (per-channel tuples)."""
    out: dict[str, Any] = {}
    for key, value in config.preprocessing.items():
        if key in ("mean", "std"):
            value = tuple(float(v) for v in (value if isinstance(value, list) else [value]))
        out[key] = value
    return out


def parse_config(raw: Any, source: str = "config") -> ExperimentConfig:
    """Check a mapping of settings and turn it into an ``ExperimentConfig``."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping of settings at the top level")
    for key, value in raw.items():
        if key not in _TYPES:
            raise ValueError(f"{source}: unknown key {key!r}; known keys: {', '.join(_TYPES)}")
        if not isinstance(value, _TYPES[key]) or (
            isinstance(value, bool) and bool not in _TYPES[key]
        ):
            want = " or ".join(t.__name__ for t in _TYPES[key])
            raise ValueError(f"{source}: key {key!r} must be {want}, got {value!r}")
        item = _ITEMS.get(key)
        if item is not None and not all(
            isinstance(v, item) and not isinstance(v, bool) for v in value
        ):
            raise ValueError(f"{source}: every entry of {key!r} must be {_name(item)}")
    _check_preprocessing(raw.get("preprocessing", {}), source)
    settings = {("global_" if k == "global" else k): v for k, v in raw.items()}
    settings["criteria"] = [_criterion(c, source) for c in raw.get("criteria", [])]
    config = ExperimentConfig(**settings)
    unknown = [e for e in config.experiments if e not in EXPERIMENTS]
    if unknown:
        raise ValueError(
            f"{source}: key 'experiments' has unknown {unknown}; use {', '.join(EXPERIMENTS)}"
        )
    methods = [m for m in config.cost_methods if m not in ESTIMATORS]
    if methods:
        raise ValueError(
            f"{source}: key 'cost_methods' has unknown {methods}; use {', '.join(ESTIMATORS)}"
        )
    if not config.criteria and set(config.experiments) & {"robustness", "rates"}:
        raise ValueError(f"{source}: key 'criteria' must list at least one criterion")
    if any(not 0 <= r < 1 for r in config.rates):
        raise ValueError(f"{source}: every entry of 'rates' must lie in [0, 1)")
    return config


def _criterion(entry: Any, source: str) -> CriterionSpec:
    if isinstance(entry, str):
        spec = CriterionSpec(entry)
    elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
        spec = CriterionSpec(entry["name"], {k: v for k, v in entry.items() if k != "name"})
    else:
        raise ValueError(
            f"{source}: key 'criteria' entries must be a name or a mapping with 'name', "
            f"got {entry!r}"
        )
    if spec.name not in CRITERIA:
        raise ValueError(
            f"{source}: key 'criteria' has unknown criterion {spec.name!r}; "
            f"known: {', '.join(sorted(CRITERIA))}"
        )
    try:  # the options against the criterion's declaration, before any work starts
        CRITERIA[spec.name].check(spec.options)
    except ValueError as err:
        raise ValueError(f"{source}: key 'criteria': {err}") from None
    return spec


def _name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)
