"""Weights files: safetensors and weights-only torch files, nested state_dicts and
prefixes found, and a one-line error (counts and first keys) for weights that do not fit."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from shapprune.sources.weights import load_weights, read_state_dict


def net(width: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, width, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(width * 26 * 26, 10))  # fmt: skip
    return model.eval()


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "wrap, name",
    [
        (lambda s: s, "plain.pt"),
        (lambda s: {"epoch": 3, "state_dict": s}, "lightning.ckpt"),
        (lambda s: {"model_state_dict": s, "optimizer": {"lr": 0.1}}, "train.pth"),
        (lambda s: {"model": {f"module.{k}": v for k, v in s.items()}}, "ddp.bin"),
        (lambda s: {f"model.{k}": v for k, v in s.items()}, "prefixed.pt"),
    ],
)
def test_torch_files_load_their_state_dict(tmp_path, wrap, name):
    source, target = net(seed=1), net(seed=2)
    torch.save(wrap(source.state_dict()), tmp_path / name)
    load_weights(target, tmp_path / name)
    assert same_weights(source, target)


def test_safetensors(tmp_path):
    source, target = net(seed=1), net(seed=2)
    tensors = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(tensors, tmp_path / "w.safetensors")
    load_weights(target, tmp_path / "w.safetensors")
    assert same_weights(source, target)


def test_weights_of_another_architecture_name_counts_and_keys(tmp_path):
    torch.save(net(width=6).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError) as err:
        load_weights(net(width=4), tmp_path / "w.pt")
    msg = str(err.value)
    assert "do not fit" in msg and "3 mis-shaped (0.bias [6] vs [4], 0.weight [6, 1, 3, 3]" in msg
    extra = {**net().state_dict(), "head.weight": torch.zeros(1)}
    del extra["3.bias"]
    torch.save(extra, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"1 missing \(3\.bias\); 1 unexpected \(head\.weight\)"):
        load_weights(net(), tmp_path / "x.pt")


def test_a_pickled_module_needs_trust(tmp_path):
    source = net(seed=1)
    torch.save(source, tmp_path / "whole.pt")
    with pytest.raises(ValueError, match="--trust-pickle"):
        read_state_dict(tmp_path / "whole.pt")
    target = load_weights(net(seed=2), tmp_path / "whole.pt", trust_pickle=True)
    assert same_weights(source, target)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.pt not found"):
        read_state_dict(tmp_path / "gone.pt")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown suffix"):
        read_state_dict(tmp_path / "w.npz")
    torch.save({"epoch": 3}, tmp_path / "meta.pt")
    with pytest.raises(ValueError, match="holds no state_dict"):
        read_state_dict(tmp_path / "meta.pt")
