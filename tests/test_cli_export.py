"""``shapprune export`` and ``prune --export``: each format is written, checked against the
pruned module, and runs in a Python where shapprune cannot be imported."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import run_cli, save_tiny_hf_vit, write_images

from shapprune.pruning.removal import apply_removals
from shapprune.sources.checkpoint import save_pruned
from shapprune.zoo.models import build_model

pytest.importorskip("onnxruntime")

FILES = {"exported-program": "m.pt2", "onnx": "m.onnx", "torchscript": "m.ts"}

# Run by a bare interpreter: no path that holds shapprune (an editable install's included)
NO_SHAPPRUNE = textwrap.dedent(
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
    """
)
WITHOUT_SHAPPRUNE = NO_SHAPPRUNE + textwrap.dedent(
    """
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
        (str(tmp_path / "hf"), "hf"): "the hf format is for models from an hf: source",
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


# A bare interpreter again: the hf folder through from_pretrained, and nothing of shapprune
FROM_PRETRAINED = NO_SHAPPRUNE + textwrap.dedent(
    """
    import torch, transformers
    model = transformers.AutoModelForImageClassification.from_pretrained(sys.argv[1])
    processor = transformers.AutoImageProcessor.from_pretrained(sys.argv[1])
    x = torch.load("x.pt", weights_only=True)
    with torch.no_grad():
        got = model(x).logits
    torch.testing.assert_close(got, torch.load("y.pt", weights_only=True), rtol=1e-4, atol=1e-4)
    print("ok", model.config.num_attention_heads, model.config.intermediate_size,
          sum(p.numel() for p in model.parameters()), processor.size)
    """
)


def _widths(model) -> set[tuple[int, int]]:
    """(heads, MLP neurons) of each layer of a Hugging Face ViT."""
    return {(layer.attention.q_proj.out_features // layer.attention.head_dim,
             layer.mlp.fc1.out_features) for layer in model.model.vit.layers}  # fmt: skip


@pytest.fixture
def hf_vit(tmp_path):
    """A tiny Hugging Face ViT folder with its image processor, as a user's would be."""
    pytest.importorskip("transformers")
    import transformers

    vit = tmp_path / "vit"
    save_tiny_hf_vit(vit, image_size=16, patch_size=8, num_labels=3, num_hidden_layers=2,
                     num_attention_heads=4)  # fmt: skip
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(vit)
    return vit


@pytest.mark.parametrize("scope", ["--global", "--per-layer"])
def test_a_pruned_hf_vit_reloads_with_from_pretrained(tmp_path, monkeypatch, capsys, hf_vit,
                                                      scope):  # fmt: skip
    """prune --export hf on an hf: folder writes a save_pretrained folder that transformers
    alone loads and that computes the pruned model, with its image processor beside it."""
    from shapprune.sources.models import load_model

    images = write_images(tmp_path / "pets", per_class=20)
    monkeypatch.setenv("SHAPPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "prune", "--model", f"hf:{hf_vit}", "--data",
                           images, "--target", "macs=0.4", scope, "--per-class", "2",
                           "--refine", "2", "--out", out, "--export", "hf")  # fmt: skip
    assert code == 0, err
    flat = " ".join(err.split())
    said = f"exported hf to {out / 'model-hf'}: largest difference"
    assert "".join(said.split()) in "".join(flat.split())  # a long path wraps anywhere
    pruned, _ = load_model(str(out))
    uneven = len(_widths(pruned)) > 1
    assert ("padded with zero units to the widest" in flat) == uneven
    assert scope == "--global" or not uneven  # a per-layer cut cuts each layer alike
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.save(x, tmp_path / "x.pt")
        torch.save(pruned(x), tmp_path / "y.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", FROM_PRETRAINED, str(out / "model-hf")], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    _, heads, width, params, size = done.stdout.split(maxsplit=4)
    assert (int(heads), int(width)) == max(_widths(pruned)) and "16" in size
    kept = sum(p.numel() for p in pruned.parameters())
    assert (int(params) == kept) == (not uneven) and int(params) >= kept


def test_layers_of_different_widths_are_padded_exactly(tmp_path, hf_vit):
    """Heads and neurons cut unevenly across layers: the hf folder pads each layer with zero
    units to the widest, computes what the pruned model does, and says so."""
    import transformers

    from shapprune.pruning.export import export_line, export_model
    from shapprune.sources.models import load_model

    model, _ = load_model(f"hf:{hf_vit}")
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cut = {"model.vit.layers.0.attention": [0, 2, 3], "model.vit.layers.1.attention": [1],
           "model.vit.layers.0.mlp.fc1": list(range(20))}  # fmt: skip
    pruned = apply_removals(model, cut, x[:2], mode="remove")
    assert _widths(pruned) == {(1, 12), (3, 32)}
    done = export_model(pruned, x, "hf", tmp_path / "hf")
    assert done.max_abs_diff <= 1e-5 and "padded with zero units" in export_line(done)
    again = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf")
    assert (again.config.num_attention_heads, again.config.intermediate_size) == (3, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, pruned(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(FileExistsError, match="folder with files in it"):
        export_model(pruned, x, "hf", tmp_path / "hf", force=False)
