"""Exports that run without shapprune: a ``torch.export`` program (``.pt2``), ONNX
(``.onnx``, checked with onnxruntime), TorchScript (``.pt``) and, for a model from an
``hf:`` folder, a Hugging Face ``save_pretrained`` folder that ``from_pretrained`` loads.

Each export is read back from its file and run on reference examples beside the module it
came from; the largest absolute difference of the outputs is reported, and one above what
float32 allows (``RTOL`` of the outputs' scale) is an error.
"""

from __future__ import annotations

import contextlib
import copy
import io
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from shapprune.compat import quiet_transformers
from shapprune.outputs import check_output

__all__ = [
    "FORMATS", "RTOL", "SUFFIXES", "Exported", "check_export_path", "check_exportable",
    "export_line", "export_model",
]  # fmt: skip

SUFFIXES = {"exported-program": ".pt2", "onnx": ".onnx", "torchscript": ".pt", "hf": "-hf"}
"""What follows ``model`` in the default file name (``hf``: a folder, ``model-hf``)."""
FORMATS = tuple(SUFFIXES)
RTOL = 1e-4
"""Largest difference allowed, relative to the outputs' largest magnitude (at least 1)."""


@dataclass(frozen=True)
class Exported:
    """One export: its file and format, and how far its outputs are from the module's."""

    path: Path
    format: str
    max_abs_diff: float
    scale: float
    examples: int
    note: str = ""


def parse_formats(text: str | None) -> list[str]:
    """``--export a,b`` as a list of formats (empty for None); unknown ones: ValueError."""
    if not text:
        return []
    out = [f.strip() for f in text.split(",") if f.strip()]
    for fmt in out:
        _check_format(fmt)
    return out


def _check_format(fmt: str) -> None:
    if fmt not in SUFFIXES:
        raise ValueError(f"unknown export format {fmt!r}; choose from: {', '.join(FORMATS)}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            raise ValueError(
                "ONNX export needs onnx, onnxscript and onnxruntime: "
                "pip install 'shapprune[export]'"
            ) from None


def _save_exported_program(model: nn.Module, x: torch.Tensor, path: Path):
    batch = torch.export.Dim.AUTO
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    return lambda inputs: loaded(inputs)


def _save_onnx(model: nn.Module, x: torch.Tensor, path: Path):
    import onnxruntime

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's notes, not the user's
        program = torch.onnx.export(
            model, (x,), dynamo=True, input_names=["input"], output_names=["output"],
            dynamic_shapes=({0: torch.export.Dim.AUTO},), external_data=False, verbose=False,
        )  # fmt: skip
        program.save(str(path), external_data=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda inputs: torch.from_numpy(session.run(None, {"input": inputs.numpy()})[0])


def _save_torchscript(model: nn.Module, x: torch.Tensor, path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (x,), check_trace=False)
        traced.save(str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
    return lambda inputs: loaded(inputs)


def _hf_model(model: nn.Module) -> nn.Module:
    """The transformers model inside ``model`` (an ``hf:`` source wraps it to return logits)."""
    inner = getattr(model, "model", model)
    if not hasattr(inner, "save_pretrained") or not hasattr(inner, "config"):
        raise ValueError(
            "the hf format is for models from an hf: source (a transformers model); "
            "export this one as exported-program, onnx or torchscript"
        )
    return inner


def _hf_widths(inner: nn.Module) -> tuple[int, int, int]:
    """(heads, head width, MLP width) that hold every layer of a pruned transformers ViT:
    a config has one head count and one MLP width for all layers, so the widest layer's."""
    attention = [m for m in inner.modules() if hasattr(m, "num_attention_heads") and
                 hasattr(m, "q_proj")]  # fmt: skip
    mlps = [m for m in inner.modules() if isinstance(getattr(m, "fc1", None), nn.Linear)]
    if not attention or not mlps:
        raise ValueError(
            f"the hf format knows ViT-family layers (q_proj ... o_proj, mlp.fc1/fc2); "
            f"{type(inner).__name__} has none: export exported-program, onnx or torchscript"
        )
    head_dim = int(attention[0].head_dim)
    heads = max(m.q_proj.out_features // head_dim for m in attention)
    return heads, head_dim, max(m.fc1.out_features for m in mlps)


def _padded(state: dict, fresh: dict) -> dict:
    """``state``'s tensors zero-padded at the end of each dimension to ``fresh``'s shapes. A
    zero head (query, key and value rows, and their output columns) and a zero MLP neuron
    add nothing, so the padded model computes what the pruned one does."""
    if set(state) != set(fresh):
        odd = sorted(set(state) ^ set(fresh))[:3]
        raise ValueError(f"the pruned model's weights do not fit a transformers config: {odd}")
    out = {}
    for key, value in state.items():
        shape = fresh[key].shape
        if value.shape != shape:
            if value.dim() != len(shape) or any(
                a > b for a, b in zip(value.shape, shape, strict=True)
            ):
                raise ValueError(f"{key}: {tuple(value.shape)} does not fit {tuple(shape)}")
            grown = value.new_zeros(shape)
            grown[tuple(slice(0, n) for n in value.shape)] = value
            value = grown
        out[key] = value
    return out


def _save_hf(model: nn.Module, x: torch.Tensor, path: Path):
    inner = _hf_model(model)
    heads, head_dim, width = _hf_widths(inner)
    config = copy.deepcopy(inner.config)
    config.num_attention_heads, config.head_dim, config.intermediate_size = heads, head_dim, width
    fresh = type(inner)(config).eval()
    state = {k: v.detach() for k, v in inner.state_dict().items()}
    fresh.load_state_dict(_padded(state, fresh.state_dict()), strict=True)
    with quiet_transformers():
        fresh.save_pretrained(str(path))
    source = Path(str(getattr(inner, "name_or_path", "") or ""))
    if (source / "preprocessor_config.json").is_file():  # how its images are made, as it was
        shutil.copy(source / "preprocessor_config.json", path / "preprocessor_config.json")
    with quiet_transformers():
        loaded = type(inner).from_pretrained(str(path), local_files_only=True).eval()
    pruned, kept = _count(inner), _count(fresh)
    note = "" if kept == pruned else (
        f"{kept:,} parameters in the hf folder against the pruned model's {pruned:,}: a "
        "transformers config has one head count and one MLP width for all layers, so every "
        "layer is padded with zero units to the widest (--per-layer cuts each layer alike)"
    )  # fmt: skip
    return (lambda inputs: loaded(inputs).logits), note


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


_SAVERS = {
    "exported-program": _save_exported_program,
    "onnx": _save_onnx,
    "torchscript": _save_torchscript,
    "hf": _save_hf,
}


def export_model(
    model: nn.Module,
    examples: torch.Tensor,
    fmt: str,
    path: str | Path,
    *,
    force: bool = True,
    rtol: float = RTOL,
) -> Exported:
    """Write ``model`` (on the CPU, in eval mode) as ``fmt`` to ``path`` and check it: the
    file is read back and run on ``examples`` beside the module (see the module's doc)."""
    _check_format(fmt)
    path = Path(path)
    if fmt == "exported-program" and path.suffix != ".pt2":
        raise ValueError(f"an exported program's file ends in .pt2 (torch.export.load): {path}")
    path = check_export_path(path, fmt, force)
    model = model.cpu().eval()
    x = examples.detach().cpu().float()
    check_exportable(model, fmt)
    note = ""
    with torch.no_grad():
        expected = model(x)
        try:
            run = _SAVERS[fmt](model, x, path)
            if isinstance(run, tuple):
                run, note = run
            got = run(x)
        except Exception as err:
            _remove(path)
            first = next((line for line in str(err).splitlines() if line.strip()), "")
            raise ValueError(
                f"the {fmt} export of the pruned model failed: {type(err).__name__}: {first}"
            ) from err
    if not isinstance(expected, torch.Tensor):
        raise ValueError("export checks a model with one tensor output")
    diff = float((got.float() - expected.float()).abs().max())
    scale = max(float(expected.abs().max()), 1.0)
    if not diff <= rtol * scale:
        _remove(path)  # a file that does not compute the pruned model is no result
        raise ValueError(
            f"the {fmt} export {path} differs from the pruned module by {diff:.3g} on "
            f"{len(x)} reference examples (outputs up to {scale:.3g}; allowed {rtol * scale:.3g})"
        )
    return Exported(path, fmt, diff, scale, len(x), note)


def check_exportable(model: nn.Module, fmt: str) -> None:
    """A one-line error now if ``model`` cannot be written as ``fmt`` (``hf``: a
    transformers ViT-family model), so that prune says so before its work."""
    if fmt == "hf":
        _hf_widths(_hf_model(model))


def check_export_path(path: Path, fmt: str, force: bool) -> Path:
    """The export's path, checked before any work: a file, or for ``hf`` a folder that is
    new or empty (or ``force``)."""
    if fmt != "hf":
        path = check_output(path, force=force)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    path = check_output(path, folder=True)
    if path.is_dir() and any(path.iterdir()) and not force:
        raise FileExistsError(
            f"{path} is a folder with files in it; choose another --out or pass --force"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def _remove(path: Path) -> None:
    """Remove a failed export: its file, or the files an hf export wrote into its folder."""
    if path.is_dir():
        for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
            (path / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.rmdir()  # only if nothing else is left in it
    else:
        path.unlink(missing_ok=True)


def export_line(done: Exported) -> str:
    """One line for the console: what was written and how close it is."""
    line = (
        f"exported {done.format} to {done.path}: largest difference from the pruned module "
        f"{done.max_abs_diff:.3g} on {done.examples} reference examples"
    )
    return f"{line}; note: {done.note}" if done.note else line
