"""--model SOURCE, --model-arg and --weights from the command line: a user's file, a module
and a timm model, each with its weights, pruned (tiny settings), exported, reloaded from
what prune wrote; each mistake exit 2 and one line."""

import json
import warnings

import pytest
import torch
from helpers import USER_MODEL_CODE, run_cli
from safetensors.torch import save_file

from shapprune.pruning.removal import history
from shapprune.sources.models import load_model

USER_CODE = USER_MODEL_CODE
TINY = ["--criterion", "weight-l1", "--refine", "0", "--per-class", "2", "--target", "macs=0.3",
        "--device", "cpu", "--compensate", "no", "--per-layer"]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on cores shared with other jobs, spinning threads wait on each
    other (timm's convolutions ran 10x slower under load with two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    (tmp_path / "user_net.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SHAPPRUNE_CACHE", str(tmp_path / "cache"))  # no zoo model is trained
    return tmp_path


def _prune_and_reload(monkeypatch, capsys, tmp_path, source, args, weights):
    """Prune ``source`` with ``weights`` (exporting TorchScript); the reloaded model equals
    the export, and its kept units hold the given weights."""
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "prune", "--model", source, *args, "--weights",
                           weights, *TINY, "--out", out, "--export", "torchscript")  # fmt: skip
    assert code == 0, err
    meta = json.loads((out / "model.json").read_text())
    assert meta["source"]["source"].endswith(source.rpartition("/")[2]) and meta["pruning"]
    model, _ = load_model(str(out))
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
        torch.testing.assert_close(model(x), torch.jit.load(out / "model.pt")(x))
    return model, history(model)


def test_a_users_file_with_a_training_checkpoint(user_dir, monkeypatch, capsys):
    source = f"{user_dir / 'user_net.py'}:Net"
    original, _ = load_model(source, width=12)
    state = {f"module.{k}": v for k, v in original.state_dict().items()}  # saved under DDP
    torch.save({"epoch": 9, "model_state_dict": state}, user_dir / "train.pth")
    args = ["--model-arg", "width=12"]
    model, steps = _prune_and_reload(monkeypatch, capsys, user_dir, source, args,
                                     user_dir / "train.pth")  # fmt: skip
    removed = {u for s in steps if s["layer"] == "conv1" for u in s["units"]}
    kept = [u for u in range(12) if u not in removed]
    assert removed and torch.equal(model.conv1.weight, original.conv1.weight[kept])


def test_a_module_and_timm_with_safetensors(user_dir, monkeypatch, capsys):
    for source, args, kwargs in [
        ("user_net:Net", ["--model-arg", "width=6"], {"width": 6}),
        ("timm:test_resnet", ["--model-arg", "num_classes=10", "--model-arg", "in_chans=1",
                              "--layers", "layer1.0.conv1,layer2.0.conv1"],
         {"num_classes": 10, "in_chans": 1}),
    ]:  # fmt: skip
        original, _ = load_model(source, **kwargs)
        torch.manual_seed(1)
        for p in original.parameters():  # not the builder's own initialisation
            p.data.normal_(std=0.1)
        weights = user_dir / "w.safetensors"
        save_file({k: v.contiguous() for k, v in original.state_dict().items()}, weights)
        out = user_dir / "out"
        code, _, err = run_cli(monkeypatch, capsys, "prune", "--model", source, *args,
                               "--weights", weights, *TINY, "--out", out, "--force")  # fmt: skip
        assert code == 0, err
        model, meta = load_model(str(out))
        assert meta["source"] == {"source": source, "model_args": kwargs}
        names = dict(model.named_parameters())
        unpruned = [n for n, p in original.named_parameters() if p.shape == names[n].shape]
        assert unpruned and all(torch.equal(names[n], original.get_parameter(n)) for n in unpruned)


def test_a_pickled_module_with_trust(user_dir, monkeypatch, capsys):
    original, _ = load_model("user_net:Net", width=6)
    torch.save(original, user_dir / "whole.pt")
    out = user_dir / "out"
    code, _, err = run_cli(monkeypatch, capsys, "prune", "--model", user_dir / "whole.pt",
                           "--trust-pickle", *TINY, "--out", out)  # fmt: skip
    assert code == 0, err
    with pytest.raises(ValueError, match="--trust-pickle"):
        load_model(str(out))
    assert load_model(str(out), trust_pickle=True)[0].conv1.out_channels < 6
    code, _, err = run_cli(monkeypatch, capsys, "export", out, "--format", "onnx")
    assert code == 2 and "--trust-pickle" in err and err.count("\n") == 1


BAD = {
    "prefix": (["--model", "foo:Net"], "unknown model source 'foo:'; give torchvision:NAME"),
    "file": (["--model", "{d}/gone.py:Net"], "gone.py not found"),
    "name": (["--model", "{d}/user_net.py:Nett"], "has no 'Nett'; it defines: Net, broken"),
    "factory": (["--model", "user_net:broken"], "user_net:broken() failed: no GPU named bob"),
    "model-arg": (["--model", "user_net:Net", "--model-arg", "width"], "--model-arg takes KEY="),
    "weights": (["--model", "user_net:Net", "--weights", "{d}/other.pt"],
                "do not fit the model: 3 mis-shaped (conv1.bias [5] vs [8]"),
    "pickle": (["--model", "{d}/whole.pt"], "pass --trust-pickle"),
    "hf": (["--model", "hf:{d}"], "config.json not found"),
    "export": (["--model", "user_net:Net", "--export", "tflite"], "unknown export format"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_sources_exit_2_with_one_line(user_dir, monkeypatch, capsys, case):
    from user_net import Net

    torch.save(Net(width=5).state_dict(), user_dir / "other.pt")
    torch.save(Net(), user_dir / "whole.pt")
    args, message = BAD[case]
    args = [a.format(d=user_dir) for a in args]
    commands = (
        ["prune", *TINY, "--out", user_dir / "out"],
        ["rank", "--layer", "conv1"],
        ["oracle", "--layer", "conv1", "--out", user_dir / "oracle.json"],
    )
    for command in commands if case != "export" else commands[:1]:
        code, _, err = run_cli(monkeypatch, capsys, *command, *args)
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (user_dir / "out").exists() and not (user_dir / "oracle.json").exists()
