"""The registry of model sources: every way to name a model, in one open table.

A source turns text into an ``nn.Module``: ``torchvision:NAME``, ``timm:NAME``, ``hf:DIR``,
``path/to/file.py:NAME`` and ``package.module:NAME`` (a class or factory in the user's code),
a zoo name (trained by its recipe on the data, cached), a shapprune checkpoint (or the folder
``prune`` wrote), and a whole pickled module (only with ``trust_pickle``). Keyword model
arguments go to the builder; ``weights`` (see ``sources.weights``) are loaded after.

``register_model_source("mine", build)`` adds ``mine:NAME``, built by ``build(NAME,
**model_args)``. Every model loaded here carries its source in its metadata, so that a
pruned copy is rebuilt through the same source (``rebuild``) before its history is replayed.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from shapprune.compat import check_optional, quiet_transformers
from shapprune.sources.preprocessing import model_data_meta
from shapprune.sources.user_code import from_file, from_module, pickled
from shapprune.sources.weights import PICKLE_SUFFIXES, TRUST_HINT, load_weights

__all__ = [
    "MODEL_SOURCES",
    "ModelSource",
    "load_checkpoint",
    "describe_sources",
    "load_model",
    "parse_model_args",
    "rebuild",
    "register_model_source",
]

Builder = Callable[..., nn.Module]


@dataclass
class ModelSource:
    """``prefix:NAME`` built by ``build(NAME, **model_args)``; ``help`` says what NAME is."""

    prefix: str
    build: Builder
    help: str = ""
    arg: str = "NAME"


MODEL_SOURCES: dict[str, ModelSource] = {}


def register_model_source(
    prefix: str, build: Builder, *, help: str = "", arg: str = "NAME", replace: bool = False
) -> ModelSource:
    """Make ``prefix:NAME`` a model source built by ``build(NAME, **model_args)`` (``arg``:
    what NAME is called in messages)."""
    if not prefix.isidentifier():
        raise ValueError(f"a model source prefix must be an identifier, got {prefix!r}")
    if prefix in MODEL_SOURCES and not replace:
        raise ValueError(f"a model source {prefix!r} is already registered; pass replace=True")
    MODEL_SOURCES[prefix] = ModelSource(prefix, build, help, arg)
    return MODEL_SOURCES[prefix]


# --- the registered prefixes ----------------------------------------------------------------


def _no_downloads(prefix: str, model_args: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    given = [k for k in keys if k in model_args]
    if given:
        raise ValueError(
            f"{prefix}: models are built with random weights, never downloaded ({given[0]} is "
            "not taken); pass the weights as a file with --weights"
        )


def _torchvision(name: str, **model_args: Any) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        raise ValueError(f"torchvision has no model {name!r}; see torchvision.models.list_models()")
    _no_downloads("torchvision", model_args, ("weights", "pretrained"))
    return torchvision.models.get_model(name, weights=None, **model_args)


def _timm(name: str, **model_args: Any) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ValueError("timm: models need timm; pip install timm") from None
    if not timm.is_model(name):
        raise ValueError(f"timm has no model {name!r}; see timm.list_models()")
    _no_downloads("timm", model_args, ("pretrained", "pretrained_cfg_overlay"))
    return timm.create_model(name, pretrained=False, **model_args)


class LogitsOf(nn.Module):
    """A Hugging Face model whose output is its logits (or its first output), as the
    pipeline expects of a classifier."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        if hasattr(out, "logits"):
            return out.logits
        return out[0] if isinstance(out, tuple | list) else out


def _hf(folder: str, **model_args: Any) -> nn.Module:
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"hf:{folder} is not a Hugging Face model folder: {path / 'config.json'} not found "
            "(save one with model.save_pretrained(DIR))"
        )
    check_optional("transformers")
    import transformers

    config = transformers.AutoConfig.from_pretrained(
        str(path), local_files_only=True, trust_remote_code=False
    )
    names = list(getattr(config, "architectures", None) or [])
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        raise ValueError(
            f"hf:{folder}: config.json names no architecture transformers knows "
            f"({names or 'none'}); remote code is never run"
        )
    with quiet_transformers():
        model = cls.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False, **model_args
        )
    return LogitsOf(model.eval())


register_model_source("torchvision", _torchvision, help="any torchvision.models builder")
register_model_source("timm", _timm, help="timm.create_model(NAME, pretrained=False)")
register_model_source(
    "hf", _hf, help="a local Hugging Face folder (config.json + weights)", arg="DIR"
)


# --- telling the kinds apart ----------------------------------------------------------------


def _kind(text: str) -> str:
    """Which kind of source ``text`` names (without building it)."""
    from shapprune.zoo.models import MODELS

    prefix, sep, rest = text.partition(":")
    if sep and prefix in MODEL_SOURCES and len(prefix) > 1:
        return "prefix"
    if sep and rest:
        file = text.rpartition(":")[0]
        if file.endswith(".py"):
            return "file"
        if all(part.isidentifier() for part in prefix.split(".")) and rest.isidentifier():
            return "module"
    if text in MODELS:
        return "zoo"
    path = Path(text)
    if path.suffix in (".json", ".safetensors") or (path / "model.json").is_file():
        return "checkpoint"
    if path.suffix in PICKLE_SUFFIXES:
        return "pickle"
    if path.exists() or "/" in text:
        return "checkpoint"
    return "unknown"


def _unknown(text: str) -> ValueError:
    from shapprune.zoo.models import MODELS

    prefix, sep, _ = text.partition(":")
    what = f"unknown model source {prefix + ':'!r}" if sep else f"unknown model {text!r}"
    known = ", ".join(f"{p}:{s.arg}" for p, s in MODEL_SOURCES.items())
    return ValueError(
        f"{what}; give {known}, FILE.py:NAME, package.module:NAME, a checkpoint path, "
        f"or a zoo name ({', '.join(sorted(MODELS))})"
    )


def describe_sources() -> str:
    """One line of help: the kinds of --model, the registered prefixes included."""
    return (
        "a zoo name, a checkpoint (or a folder prune wrote), "
        + ", ".join(f"{p}:{s.arg}" for p, s in MODEL_SOURCES.items())
        + ", FILE.py:NAME or package.module:NAME"
    )


def parse_model_args(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` items (``--model-arg``) as keyword arguments: each value a Python
    literal if it reads as one (``10``, ``(3, 3)``, ``True``), else the string."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"--model-arg takes KEY=VALUE (e.g. num_classes=10), got {item!r}")
        try:
            out[key] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            out[key] = value.strip()
    return out


def _canonical(text: str, kind: str) -> str:
    """The source text as it will still read from another folder (files made absolute)."""
    if kind == "file":
        file, _, name = text.rpartition(":")
        return f"{Path(file).resolve()}:{name}"
    prefix, _, rest = text.partition(":")
    if kind == "prefix" and MODEL_SOURCES[prefix].arg in ("DIR", "FILE"):  # a local path
        return f"{prefix}:{Path(rest).resolve()}"
    if kind == "pickle":
        return str(Path(text).resolve())
    return text


def build_source(
    text: str, model_args: Mapping[str, Any] | None = None, trust_pickle: bool = False
) -> nn.Module:
    """The module ``text`` names, built with ``model_args`` (random weights where the
    source has no weights of its own); zoo names are built untrained here."""
    model_args = dict(model_args or {})
    kind = _kind(text)
    if kind == "prefix":
        prefix, _, rest = text.partition(":")
        if not rest:
            raise ValueError(f"--model {text}: give a name after {prefix}:")
        try:
            model = MODEL_SOURCES[prefix].build(rest, **model_args)
        except (ValueError, FileNotFoundError):
            raise
        except Exception as err:  # the builder's own error, as one line
            msg = " ".join(str(err).split()) or type(err).__name__
            args = ", ".join(f"{k}={v!r}" for k, v in model_args.items())
            raise ValueError(f"building {text}({args}) failed: {msg}") from None
    elif kind == "file":
        model = from_file(text, model_args)
    elif kind == "module":
        module = text.partition(":")[0]
        if "." not in module and importlib.util.find_spec(module) is None:
            raise ValueError(f"{_unknown(text)} (no module {module!r} either)")  # a typo?
        model = from_module(text, model_args)
    elif kind == "pickle":
        if model_args:
            raise ValueError(f"--model-arg does not apply to a pickled module ({text})")
        model = pickled(Path(text), trust_pickle)
    elif kind == "zoo":
        from shapprune.zoo.models import build_model

        model = build_model(text, **model_args)
    else:
        raise _unknown(text)
    return model.eval()


def rebuild(meta: Mapping[str, Any], trust_pickle: bool = False) -> nn.Module:
    """The unpruned model a checkpoint's metadata describes: through its source when it
    records one, else the zoo (or ``torchvision:``) name and config."""
    from shapprune.zoo.models import build_model

    source = meta.get("source")
    if not source:
        return build_model(meta["model"], **meta["config"])
    if source.get("trust_pickle") and not trust_pickle:
        raise ValueError(
            f"this checkpoint is rebuilt from the pickled module {source['source']}; {TRUST_HINT}"
        )
    return build_source(source["source"], source.get("model_args"), trust_pickle)


def load_checkpoint(
    path: str | Path, trust_pickle: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """A shapprune checkpoint (prefix, .json or .safetensors), rebuilt through the source it
    records (or the zoo) before its pruning history is replayed."""
    from shapprune.sources import checkpoint

    return checkpoint.load_checkpoint(path, build=lambda meta: rebuild(meta, trust_pickle))


def load_model(
    source: str,
    data: str | None = None,
    seed: int = 0,
    root: str | None = None,
    *,
    weights: str | Path | None = None,
    trust_pickle: bool = False,
    **model_args: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """The model ``source`` names and its metadata: ``(module in eval mode, meta)``.

    ``source``: see the module's doc. A zoo name without ``weights`` is the zoo model
    trained on ``data`` (default mnist5k) by its recipe with ``seed``, cached (with
    ``weights``, built from ``model_args`` and given those weights); ``root``: the
    folder of local datasets. ``weights``: a weights file loaded after building (also
    accepted as the second positional argument when it names a weights file).
    ``model_args``: keyword arguments of the builder. ``meta["preprocessing"]``: the
    model's own preprocessing where the source knows it (timm's data config, an ``hf:``
    folder's ``preprocessor_config.json``, a checkpoint that recorded it), and
    ``meta["labels"]``: its class names (an ``hf:`` config's id2label).
    """
    from shapprune.zoo.cache import pretrained

    if weights is None and data is not None and _is_weights_file(data):
        data, weights = None, data
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file {weights} not found")
    text = str(source)
    kind = _kind(text)
    if kind == "checkpoint":
        if model_args:
            raise ValueError("--model-arg does not apply to a checkpoint: it records its own")
        path = Path(text)
        if (path / "model.json").is_file():
            path = path / "model"
        model, meta = load_checkpoint(path, trust_pickle)
    elif kind == "zoo" and weights is None and not model_args:
        model, meta = pretrained(text, data or "mnist5k", seed=seed, root=root)
    elif kind == "zoo":
        if weights is None:  # an untrained model where the zoo's trained one was meant
            raise ValueError(
                f"--model-arg builds zoo model {text!r} untrained: give its --weights too, or "
                "drop --model-arg for the zoo's model trained on --data"
            )
        model = build_source(text, model_args)
        meta = {"model": text, "config": dict(model_args), "metrics": {}}
    else:
        model = build_source(text, model_args, trust_pickle)
        record = {"source": _canonical(text, kind), "model_args": dict(model_args)}
        if kind == "pickle":
            record["trust_pickle"] = True
        meta = {"model": text, "config": {}, "metrics": {}, "source": record,
                **model_data_meta(text, model)}  # fmt: skip
    if weights is not None:
        load_weights(model, weights, trust_pickle)
        meta["weights"] = str(weights)
    return model.eval(), meta


def _is_weights_file(text: Any) -> bool:
    return isinstance(text, Path) or Path(str(text)).suffix in (".safetensors", *PICKLE_SUFFIXES)
