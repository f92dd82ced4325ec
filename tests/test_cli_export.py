"""``shapprune export`` and ``prune --export``: each format is written, checked against the
pruned module, and runs in a Python where shapprune cannot be imported."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import run_cli

from shapprune.pruning.removal import apply_removals
from shapprune.sources.checkpoint import save_pruned
from shapprune.zoo.models import build_model

pytest.importorskip("onnxruntime")

FILES = {"exported-program": "m.pt2", "onnx": "m.onnx", "torchscript": "m.ts"}

# Run by a bare interpreter: no path that holds shapprune (an editable install's included)
WITHOUT_SHAPPRUNE = textwrap.dedent(
    """
    import os, sys
    sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "shapprune"))]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f)]
    try:
        import shapprune
    except ImportError:
        pass
    else:
        raise SystemExit("shapprune is importable: " + shapprune.__file__)
    import numpy, onnxruntime, torch
    x = torch.load("x.pt", weights_only=True)
    want = torch.load("y.pt", weights_only=True)
    outs = {
        "exported-program": torch.export.load("m.pt2").module()(x),
        "torchscript": torch.jit.load("m.ts")(x),
        "onnx": torch.from_numpy(
            onnxruntime.InferenceSession("m.onnx").run(None, {"input": x.numpy()})[0]
        ),
    }
    for name, got in outs.items():
        assert got.shape == want.shape, (name, got.shape)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    print("ok", sorted(outs))
    """
)


@pytest.fixture
def pruned_dir(tmp_path):
    """What prune writes, for the zoo's tinycnn (random weights) with units of both convs cut."""
    model, meta = build_model("tinycnn"), {"model": "tinycnn", "config": {}}
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    pruned = apply_removals(model, {"conv1": [1, 4], "conv2": [0, 3, 7]}, x, mode="remove")
    save_pruned(tmp_path / "pruned" / "model", pruned, base=meta, input_shape=(1, 28, 28),
                dataset="mnist5k")  # fmt: skip
    return tmp_path / "pruned", pruned


def test_each_format_runs_without_shapprune(pruned_dir, tmp_path, monkeypatch, capsys):
    folder, pruned = pruned_dir
    for fmt, name in FILES.items():
        code, out, err = run_cli(monkeypatch, capsys, "export", folder, "--format", fmt,
                                 "--out", tmp_path / name)  # fmt: skip
        assert code == 0, err
        flat = " ".join(err.split())  # rich wraps long lines
        assert f"exported {fmt} to {tmp_path / name}: largest difference" in flat
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))  # another batch
    with torch.no_grad():
        torch.save(x, tmp_path / "x.pt")
        torch.save(pruned(x), tmp_path / "y.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_SHAPPRUNE], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert "ok" in done.stdout


def test_export_paths_and_formats_are_checked_first(pruned_dir, tmp_path, monkeypatch, capsys):
    folder, _ = pruned_dir
    (tmp_path / "file").write_text("x")
    cases = {
        (str(tmp_path / "file" / "m.pt2"), "exported-program"): "is a file, not a folder",
        (str(tmp_path / "m.x"), "tflite"): "unknown export format 'tflite'",
        (str(tmp_path / "hf"), "hf"): "a transformers config has one head count",
        (str(folder / "model.json"), "onnx"): "exists; choose another --out or pass --force",
    }
    for (out, fmt), message in cases.items():
        code, _, err = run_cli(monkeypatch, capsys, "export", folder, "--format", fmt, "--out", out)
        assert code == 2 and message in err and err.count("\n") == 1, err
    code, _, err = run_cli(monkeypatch, capsys, "export", tmp_path, "--format", "onnx")
    assert code == 2 and "model.json not found" in err and err.count("\n") == 1


def test_an_export_that_differs_is_an_error(tmp_path, monkeypatch):
    from shapprune.pruning import export

    model = build_model("tinycnn")
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    saver = export._SAVERS["torchscript"]

    def off(model, x, path):  # an export whose outputs drift beyond float32
        run = saver(model, x, path)
        return lambda inputs: run(inputs) + 1e-2

    monkeypatch.setitem(export._SAVERS, "torchscript", off)
    with pytest.raises(ValueError, match=r"differs from the pruned module by 0\.01 on 4"):
        export.export_model(model, x, "torchscript", tmp_path / "m.ts")
    assert not (tmp_path / "m.ts").exists()
    monkeypatch.setitem(export._SAVERS, "torchscript", saver)  # the real one agrees
    assert export.export_model(model, x, "torchscript", tmp_path / "m.ts").max_abs_diff == 0
