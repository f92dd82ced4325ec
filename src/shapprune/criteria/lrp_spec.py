"""LRP composites as plain data: one rule per depth group of layers (Hatefi et al. 2024).

A :class:`CompositeSpec` is what ``tune-lrp`` searches over and writes, and what
``--composite FILE`` reads back: JSON, no pickle, and no torch or zennit import here, so
the command line and the configs can check a file before any model is loaded. The zennit
composite is built from it by :func:`shapprune.criteria.lrp_rules.spec_composite`.

Depth groups: for CNNs the convolutions in model order split in thirds (``low``, ``mid``,
``high``; VGG-16's 13 become 4/5/4, as in the paper's code) and every linear layer
(``fc``); for transformers the blocks split a quarter / a half / a quarter (``early``,
``middle``, ``late``; ViT-B-16's 12 become 3/6/3) and everything after them (``head``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ATTENTION_RULES",
    "CNN_GROUPS",
    "FORMAT",
    "RULES",
    "TRANSFORMER_GROUPS",
    "CompositeSpec",
    "RuleSpec",
    "load_spec",
]

FORMAT = "shapprune-lrp-composite"
RULES: tuple[str, ...] = ("epsilon", "gamma", "z-plus", "alpha2-beta1")
_ALIASES = {"zplus": "z-plus", "alpha2beta1": "alpha2-beta1", "alphabeta": "alpha2-beta1"}
CNN_GROUPS: tuple[str, ...] = ("low", "mid", "high", "fc")
TRANSFORMER_GROUPS: tuple[str, ...] = ("early", "middle", "late", "head")
# how relevance crosses softmax(q k^T) v: "weights" splits it by the attention weights
# (softmax held constant, plain gradient); "cp" holds the softmax constant and applies the
# epsilon rule to the value path (CP-LRP, Ali et al. 2022); "attnlrp" also sends relevance
# through the softmax and the query-key product (AttnLRP, Achtibat et al. 2024)
ATTENTION_RULES: tuple[str, ...] = ("weights", "cp", "attnlrp")
_FIX = "write it with `shapprune tune-lrp` or follow CompositeSpec's layout"


def rule_name(name: str) -> str:
    """The canonical name of an LRP rule (``zplus`` -> ``z-plus``); ValueError if unknown."""
    canonical = _ALIASES.get(str(name).lower(), str(name).lower())
    if canonical not in RULES:
        raise ValueError(f"unknown LRP rule {name!r}; use one of: {', '.join(RULES)}")
    return canonical


@dataclass(frozen=True)
class RuleSpec:
    """One LRP rule with its parameter: ``epsilon`` (epsilon rule) or ``gamma`` (gamma rule).

    A parameter the rule does not use is kept at its default, so that two specs that
    write the same JSON compare equal.
    """

    rule: str
    epsilon: float = 1e-6
    gamma: float = 0.25

    def __post_init__(self) -> None:
        object.__setattr__(self, "rule", rule_name(self.rule))
        for key in ("epsilon", "gamma"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{key} of the {self.rule} rule must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{key} of the {self.rule} rule must be >= 0, got {value!r}")
            object.__setattr__(self, key, float(value))
        if self.rule != "epsilon":
            object.__setattr__(self, "epsilon", 1e-6)
        if self.rule != "gamma":
            object.__setattr__(self, "gamma", 0.25)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule}
        if self.rule in ("epsilon", "gamma"):
            out[self.rule] = getattr(self, self.rule)
        return out

    @classmethod
    def from_dict(cls, record: Any, where: str) -> RuleSpec:
        if isinstance(record, str):  # a bare rule name: its default parameter
            return cls(record)
        if not isinstance(record, dict) or "rule" not in record:
            raise ValueError(f"{where} must be a rule name or {{'rule': ..., ...}}; {_FIX}")
        extra = sorted(set(record) - {"rule", "epsilon", "gamma"})
        if extra:
            raise ValueError(f"{where} has unknown keys {extra}; keys: rule, epsilon, gamma")
        try:
            return cls(**record)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None


@dataclass(frozen=True)
class CompositeSpec:
    """One :class:`RuleSpec` per depth group, and the attention rule (transformers).

    ``groups`` holds exactly :data:`CNN_GROUPS` or :data:`TRANSFORMER_GROUPS`;
    ``info`` records where the spec came from (the tuning's objective, trials, value) and
    takes no part in equality.
    """

    groups: dict[str, RuleSpec]
    attention: str = "cp"
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        keys = tuple(self.groups)
        family = CNN_GROUPS if set(keys) == set(CNN_GROUPS) else TRANSFORMER_GROUPS
        if set(keys) != set(family):
            raise ValueError(
                f"composite groups {list(keys)} are neither the CNN groups "
                f"({', '.join(CNN_GROUPS)}) nor the transformer groups "
                f"({', '.join(TRANSFORMER_GROUPS)}); {_FIX}"
            )
        ordered = {g: self.groups[g] for g in family}
        for g, r in ordered.items():
            if not isinstance(r, RuleSpec):
                raise ValueError(f"group {g!r} must hold a RuleSpec, got {r!r}")
        object.__setattr__(self, "groups", ordered)
        if self.attention not in ATTENTION_RULES:
            raise ValueError(
                f"unknown attention rule {self.attention!r}; use one of: "
                f"{', '.join(ATTENTION_RULES)}"
            )

    @property
    def family(self) -> str:
        """``"cnn"`` or ``"transformer"``: the kind of network the groups are for."""
        return "cnn" if "low" in self.groups else "transformer"

    @classmethod
    def uniform(cls, rule: str, family: str = "cnn", attention: str = "cp", **params) -> Any:
        """The same rule in every group (e.g. the plain epsilon rule everywhere)."""
        if family not in ("cnn", "transformer"):
            raise ValueError(f"family must be 'cnn' or 'transformer', got {family!r}")
        groups = CNN_GROUPS if family == "cnn" else TRANSFORMER_GROUPS
        return cls({g: RuleSpec(rule, **params) for g in groups}, attention)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "groups": {g: r.to_dict() for g, r in self.groups.items()},
            "attention": self.attention,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, record: Any, where: str = "composite") -> CompositeSpec:
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError(f"{where} is not an LRP composite (no 'format': '{FORMAT}'); {_FIX}")
        if record.get("version") != 1:
            raise ValueError(f"{where} has version {record.get('version')!r}; this reads 1")
        extra = sorted(set(record) - {"format", "version", "groups", "attention", "info"})
        if extra:
            raise ValueError(f"{where} has unknown keys {extra}; {_FIX}")
        groups = record.get("groups")
        if not isinstance(groups, dict):
            raise ValueError(f"{where} needs 'groups': {{group: rule}}; {_FIX}")
        info = record.get("info", {})
        if not isinstance(info, dict):
            raise ValueError(f"{where}: 'info' must be an object")
        rules = {g: RuleSpec.from_dict(r, f"{where}, group {g!r}") for g, r in groups.items()}
        try:
            return cls(rules, record.get("attention", "cp"), info)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    def save(self, path: str | Path) -> Path:
        """Write the spec as JSON (via a temporary file, so no half-written file is left)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def describe(self) -> str:
        """``low=epsilon(0.01) mid=gamma(0.3) ...``: the spec on one line."""

        def one(r: RuleSpec) -> str:
            param = getattr(r, r.rule) if r.rule in ("epsilon", "gamma") else None
            return r.rule if param is None else f"{r.rule}({param:.3g})"

        text = " ".join(f"{g}={one(r)}" for g, r in self.groups.items())
        return text + (f" attention={self.attention}" if self.family == "transformer" else "")


def load_spec(path: str | Path) -> CompositeSpec:
    """The spec in the JSON file ``path``; a one-line ValueError says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no composite file {path}; write one with `shapprune tune-lrp`")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not JSON ({err}); {_FIX}") from None
    return CompositeSpec.from_dict(record, str(path))
