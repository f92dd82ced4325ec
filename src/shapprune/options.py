"""Declared options: one dataclass per estimator or criterion, the single source of truth.

A declaration is a dataclass whose fields carry a type, a default and a help string
(``option(default, "help")``); validation of values beyond their type goes in its
``__post_init__``. Everything else is derived from it: checking keyword options
(:func:`build_options`), parsing ``key=value`` text from the command line
(:func:`parse_options`) and the help text (:func:`describe`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

__all__ = ["NoOptions", "build_options", "declared", "describe", "option", "parse_options"]


def option(default: Any, help: str) -> Any:
    """A declared option: its default and one line of help."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The declaration of something without options."""


def declared(decl: type) -> dict[str, tuple[Any, Any, str]]:
    """``{name: (type, default, help)}`` of a declaration, in declaration order."""
    hints = typing.get_type_hints(decl)
    out = {}
    for f in dataclasses.fields(decl):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out[f.name] = (hints.get(f.name, Any), default, f.metadata.get("help", ""))
    return out


def _members(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def type_name(tp: Any) -> str:
    """``int``, ``float or None``, ...: how a declared type reads in a message."""
    names = []
    for m in _members(tp):
        if m is type(None):
            names.append("None")
        elif typing.get_origin(m) is typing.Literal:
            names.append(" or ".join(repr(a) for a in typing.get_args(m)))
        else:
            names.append(getattr(m, "__name__", str(m)))
    return " or ".join(names)


def _conforms(value: Any, tp: Any) -> bool:
    for m in _members(tp):
        if m is Any:
            return True
        if m is type(None):
            if value is None:
                return True
        elif typing.get_origin(m) is typing.Literal:
            if value in typing.get_args(m):
                return True
        elif m is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return True
        elif m is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif isinstance(m, type):
            if isinstance(value, m):
                return True
        else:  # a type we cannot check (e.g. a callable signature): accept
            return True
    return False


def build_options(decl: type, values: dict[str, Any], owner: str, fixed: tuple = ()) -> Any:
    """The declaration ``decl`` filled with ``values``, checked name by name and type by type.

    ``owner`` names the estimator or criterion in messages; ``fixed`` names options set by
    the registration, which a user may not pass.
    """
    known = declared(decl)
    for name, value in values.items():
        if name not in known or name in fixed:
            free = [k for k in known if k not in fixed]
            listed = ", ".join(free) if free else "none"
            raise ValueError(f"{owner} has no option {name!r}; its options: {listed}")
        tp = known[name][0]
        if not _conforms(value, tp):
            raise ValueError(f"{owner}: option {name!r} must be {type_name(tp)}, got {value!r}")
    return decl(**values)


def _parse_one(text: str, tp: Any) -> Any:
    for m in _members(tp):
        if m is type(None) and text.lower() in ("none", "null"):
            return None
    for m in _members(tp):
        try:
            if m is bool:
                low = text.lower()
                if low in ("true", "yes", "1", "on"):
                    return True
                if low in ("false", "no", "0", "off"):
                    return False
            elif m is int:
                return int(text)
            elif m is float:
                return float(text)
            elif m is str:
                return text
            elif typing.get_origin(m) is typing.Literal:
                for a in typing.get_args(m):
                    if str(a) == text:
                        return a
            elif typing.get_origin(m) is tuple:  # a comma-separated list, e.g. scores
                return tuple(float(v) for v in text.split(","))
            elif m is Any:
                return text
        except ValueError:
            continue
    raise ValueError


def parse_options(decl: type, items: list[str], owner: str, fixed: tuple = ()) -> dict[str, Any]:
    """``["key=value", ...]`` (from the command line) as values of the declared types."""
    known = declared(decl)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"option {item!r} must read key=value")
        if key not in known or key in fixed:
            build_options(decl, {key: None}, owner, fixed)  # raises the unknown-option error
        tp = known[key][0]
        try:
            out[key] = _parse_one(text.strip(), tp)
        except ValueError:
            raise ValueError(
                f"{owner}: option {key!r} must be {type_name(tp)}, got {text!r}"
            ) from None
    return out


def describe(decl: type, fixed: tuple = ()) -> str:
    """One line per option: ``name (type, default ...): help``."""
    lines = [
        f"{name} ({type_name(tp)}, default {default!r}): {text}"
        for name, (tp, default, text) in declared(decl).items()
        if name not in fixed
    ]
    return "\n".join(lines)
