"""The model sources: each kind builds (and rebuilds, pruned, from what save_pruned wrote)
the model it names; each mistake is a one-line error naming the fix."""

import pytest
import torch
from helpers import USER_MODEL_CODE, save_tiny_hf_vit
from safetensors.torch import save_file
from torch import nn

import shapprune
from shapprune.pruning.removal import apply_removals
from shapprune.sources.checkpoint import save_pruned
from shapprune.sources.models import MODEL_SOURCES, load_model, parse_model_args
from shapprune.zoo.models import build_model

USER_CODE = (
    USER_MODEL_CODE
    + """
def make(width=4):
    return Net(width=width)

NOT_A_MODEL = 3
"""
)


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "api_net.py"
    path.write_text(USER_CODE)
    return path


def test_model_args_are_literals_or_strings():
    args = parse_model_args(["num_classes=10", "kernel=(3, 3)", "act=relu", "drop=0.5", "b=True"])
    assert args == {"num_classes": 10, "kernel": (3, 3), "act": "relu", "drop": 0.5, "b": True}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_model_args(["10"])


def test_file_and_module_sources_take_model_args(user_file, monkeypatch):
    model, meta = load_model(f"{user_file}:Net", width=5)
    assert model.conv1.out_channels == 5 and not model.training
    assert meta["source"] == {"source": f"{user_file.resolve()}:Net", "model_args": {"width": 5}}
    monkeypatch.syspath_prepend(str(user_file.parent))
    model, meta = load_model("api_net:make", width=3)
    assert model.conv1.out_channels == 3 and meta["source"]["source"] == "api_net:make"


def test_prefixed_sources():
    tv, _ = load_model("torchvision:resnet18", num_classes=7)
    assert tv.fc.out_features == 7
    tm, meta = load_model("timm:test_resnet", num_classes=10, in_chans=1)
    assert tm(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    assert meta["source"]["source"] == "timm:test_resnet"


def test_an_open_registry(monkeypatch):
    monkeypatch.setitem(MODEL_SOURCES, "mine", MODEL_SOURCES["torchvision"])
    build = lambda name, **kw: nn.Linear(int(name), 2)  # noqa: E731
    shapprune.register_model_source("mine", build, replace=True)
    model, meta = shapprune.load_model("mine:5")
    assert model.in_features == 5 and meta["source"]["source"] == "mine:5"
    with pytest.raises(ValueError, match="already registered"):
        shapprune.register_model_source("mine", nn.Linear)
    monkeypatch.setitem(MODEL_SOURCES, "boom", MODEL_SOURCES["torchvision"])
    shapprune.register_model_source("boom", lambda name, **kw: {}[name], replace=True)
    with pytest.raises(ValueError, match=r"building boom:x\(depth=2\) failed: 'x'"):
        shapprune.load_model("boom:x", depth=2)  # the builder's own error, in one line


def test_the_old_call_and_weights_as_second_argument(user_file, tmp_path):
    source, _ = load_model(f"{user_file}:Net")
    torch.save({"model": source.state_dict()}, tmp_path / "w.pth")
    model, meta = shapprune.load_model(f"{user_file}:Net", str(tmp_path / "w.pth"))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert meta["weights"].endswith("w.pth")
    with pytest.raises(ValueError, match="builds zoo model 'tinycnn' untrained"):
        shapprune.load_model("tinycnn", num_classes=4)
    trained = build_model("tinycnn", num_classes=4, seed=5)
    save_file(trained.state_dict(), tmp_path / "tiny.safetensors")
    zoo, meta = load_model("tinycnn", weights=tmp_path / "tiny.safetensors", num_classes=4)
    assert torch.equal(zoo.fc.weight, trained.fc.weight) and meta["config"] == {"num_classes": 4}


def test_a_pruned_model_is_rebuilt_through_its_source(user_file, tmp_path):
    model, meta = load_model(f"{user_file}:Net", width=6)
    shape = (1, 28, 28)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    pruned = apply_removals(model, {"conv1": [0, 2]}, x[:2], mode="remove")
    save_pruned(tmp_path / "out" / "model", pruned, base=meta, input_shape=shape)
    again, meta2 = load_model(str(tmp_path / "out"))
    assert meta2["source"] == meta["source"] and again.conv1.out_channels == 4
    with torch.no_grad():
        torch.testing.assert_close(again(x), pruned(x), rtol=0, atol=0)
    assert shapprune.load_checkpoint(tmp_path / "out" / "model")[0].conv1.out_channels == 4
    from shapprune.sources import checkpoint  # the file format alone: it names who rebuilds

    with pytest.raises(ValueError, match="records the model source .*shapprune.load_checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "out" / "model")


def test_a_pickled_module_is_refused_without_trust(user_file, tmp_path):
    model, _ = load_model(f"{user_file}:Net")
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(ValueError, match="--trust-pickle"):
        load_model(str(tmp_path / "whole.pt"))
    loaded, meta = load_model(str(tmp_path / "whole.pt"), trust_pickle=True)
    assert torch.equal(loaded.fc.weight, model.fc.weight) and meta["source"]["trust_pickle"]
    torch.save(model.state_dict(), tmp_path / "state.pt")
    with pytest.raises(ValueError, match="pass this file as --weights"):
        load_model(str(tmp_path / "state.pt"))


def test_a_base_that_cannot_be_rebuilt_is_refused(tmp_path):
    with pytest.raises(ValueError, match="could not be reloaded"):
        save_pruned(tmp_path / "m", nn.Linear(2, 2), base={"model": "mine", "config": {}},
                    input_shape=(2,))  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_hugging_face_folder(tmp_path):
    original = save_tiny_hf_vit(tmp_path / "vit", image_size=28, patch_size=7, num_channels=1)
    model, meta = load_model(f"hf:{tmp_path / 'vit'}")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x).logits, rtol=0, atol=0)
    assert meta["source"]["source"] == f"hf:{(tmp_path / 'vit').resolve()}"
    layer = "model.vit.layers.0.mlp.fc1"  # torch-pruning cuts its MLPs (not its heads)
    pruned = apply_removals(model, {layer: [1, 5, 9]}, x, mode="remove")
    save_pruned(tmp_path / "out" / "model", pruned, base=meta, input_shape=(1, 28, 28))
    again, _ = load_model(str(tmp_path / "out"))
    assert again.get_submodule(layer).out_features == 29
    with torch.no_grad():
        torch.testing.assert_close(again(x), pruned(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "text, kwargs, error, match",
    [
        ("foo:Net", {}, ValueError, r"unknown model source 'foo:'.*timm:NAME, hf:DIR, FILE\.py"),
        ("{d}/gone.py:Net", {}, FileNotFoundError, "model file .*gone.py not found"),
        ("{f}:Missing", {}, ValueError, "has no 'Missing'; it defines: Net, broken, make"),
        ("{f}:broken", {}, ValueError, r"broken\(\) failed: no GPU named bob"),
        ("{f}:NOT_A_MODEL", {}, ValueError, "is not a class or a function"),
        ("{f}:Net", {"depth": 3}, ValueError, r"Net\(depth=3\) failed: .*depth"),
        ("hf:{d}", {}, FileNotFoundError, "config.json not found"),
        ("torchvision:nonet", {}, ValueError, "torchvision has no model 'nonet'"),
        ("timm:nonet", {}, ValueError, "timm has no model 'nonet'"),
        ("timm:test_resnet", {"pretrained": True}, ValueError, "never downloaded"),
        ("lenet5", {"weights": "{d}/gone.st"}, FileNotFoundError, "gone.st not found"),
    ],
)
def test_bad_sources(user_file, text, kwargs, error, match):
    d = user_file.parent
    fill = {k: v.format(d=d) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(error, match=match) as err:
        load_model(text.format(d=d, f=user_file), **fill)
    assert "\n" not in str(err.value)
