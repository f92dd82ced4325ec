"""Exports that run without shapprune: a ``torch.export`` program (``.pt2``), ONNX
(``.onnx``, checked with onnxruntime) and TorchScript (``.pt``).

Each export is read back from its file and run on reference examples beside the module it
came from; the largest absolute difference of the outputs is reported, and one above what
float32 allows (``RTOL`` of the outputs' scale) is an error.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from shapprune.outputs import check_output

__all__ = ["FORMATS", "RTOL", "SUFFIXES", "Exported", "export_line", "export_model"]

SUFFIXES = {"exported-program": ".pt2", "onnx": ".onnx", "torchscript": ".pt"}
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


def parse_formats(text: str | None) -> list[str]:
    """``--export a,b`` as a list of formats (empty for None); unknown ones: ValueError."""
    if not text:
        return []
    out = [f.strip() for f in text.split(",") if f.strip()]
    for fmt in out:
        _check_format(fmt)
    return out


NOT_HF = (
    "a Hugging Face directory (save_pretrained) cannot hold a pruned model: a transformers "
    "config has one head count and one MLP width for every layer, which pruning makes differ, "
    "so from_pretrained would refuse the weights; export exported-program, onnx or "
    "torchscript, or reload what prune wrote with shapprune.load_model(DIR)"
)


def _check_format(fmt: str) -> None:
    if fmt in ("hf", "huggingface", "save_pretrained"):
        raise ValueError(NOT_HF)
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


_SAVERS = {
    "exported-program": _save_exported_program,
    "onnx": _save_onnx,
    "torchscript": _save_torchscript,
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
    path = check_output(path, force=force)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    x = examples.detach().cpu().float()
    with torch.no_grad():
        expected = model(x)
        try:
            run = _SAVERS[fmt](model, x, path)
            got = run(x)
        except Exception as err:
            path.unlink(missing_ok=True)
            first = next((line for line in str(err).splitlines() if line.strip()), "")
            raise ValueError(
                f"the {fmt} export of the pruned model failed: {type(err).__name__}: {first}"
            ) from err
    if not isinstance(expected, torch.Tensor):
        raise ValueError("export checks a model with one tensor output")
    diff = float((got.float() - expected.float()).abs().max())
    scale = max(float(expected.abs().max()), 1.0)
    if not diff <= rtol * scale:
        path.unlink(missing_ok=True)  # a file that does not compute the pruned model is no result
        raise ValueError(
            f"the {fmt} export {path} differs from the pruned module by {diff:.3g} on "
            f"{len(x)} reference examples (outputs up to {scale:.3g}; allowed {rtol * scale:.3g})"
        )
    return Exported(path, fmt, diff, scale, len(x))


def export_line(done: Exported) -> str:
    """One line for the console: what was written and how close it is."""
    return (
        f"exported {done.format} to {done.path}: largest difference from the pruned module "
        f"{done.max_abs_diff:.3g} on {done.examples} reference examples"
    )
