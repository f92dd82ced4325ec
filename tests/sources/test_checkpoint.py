"""Model files: safetensors + JSON round trips, and refusals of bad or existing files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shapprune.sources.checkpoint import load_checkpoint, save_checkpoint
from shapprune.zoo.models import build_model

CONFIG = {"in_channels": 1, "image_size": 28, "num_classes": 10, "seed": 3}


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "vit"])
def test_checkpoint_round_trip(tmp_path: Path, name: str) -> None:
    cfg = {**CONFIG, **({"depth": 8} if name == "resnet20" else {})}
    model = build_model(name, **cfg)
    with torch.no_grad():  # make the weights differ from a fresh build
        for p in model.parameters():
            p.add_(0.01)
    st, js = save_checkpoint(
        tmp_path / "ck", model, name=name, config=cfg, metrics={"test_accuracy": 0.5}, dataset="x"
    )
    assert (st.name, js.name) == ("ck.safetensors", "ck.json")
    meta = json.loads(js.read_text())
    assert meta["model"] == name and meta["config"] == cfg and meta["dataset"] == "x"
    assert meta["shapprune_version"] and meta["metrics"]["test_accuracy"] == 0.5
    x = torch.randn(2, 1, 28, 28)
    for path in (tmp_path / "ck", st, js):
        loaded, meta2 = load_checkpoint(path)
        assert meta2 == meta
        with torch.no_grad():
            assert torch.equal(loaded(x), model.eval()(x))


def test_checkpoint_is_not_overwritten(tmp_path: Path) -> None:
    model = build_model("lenet5")
    save_checkpoint(tmp_path / "ck", model, name="lenet5", config={}, metrics={})
    before = (tmp_path / "ck.safetensors").read_bytes()
    other = build_model("lenet5", seed=1)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_checkpoint(tmp_path / "ck", other, name="lenet5", config={}, metrics={})
    assert (tmp_path / "ck.safetensors").read_bytes() == before
    save_checkpoint(
        tmp_path / "ck", other, name="lenet5", config={"seed": 1}, metrics={}, overwrite=True
    )
    assert (tmp_path / "ck.safetensors").read_bytes() != before


def test_non_safetensors_file_is_refused(tmp_path: Path) -> None:
    model = build_model("lenet5")
    st, _ = save_checkpoint(tmp_path / "ck", model, name="lenet5", config={}, metrics={})
    torch.save(model.state_dict(), st)  # a pickle, not safetensors
    with pytest.raises(ValueError, match=r"ck\.safetensors is not a valid safetensors file: "):
        load_checkpoint(st)


def test_missing_json_is_named(tmp_path: Path) -> None:
    model = build_model("lenet5")
    _, js = save_checkpoint(tmp_path / "ck", model, name="lenet5", config={}, metrics={})
    js.unlink()
    with pytest.raises(FileNotFoundError, match=r"ck\.json"):
        load_checkpoint(tmp_path / "ck.safetensors")


def test_checkpoint_shape_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    model = build_model("lenet5")
    _, js = save_checkpoint(tmp_path / "ck", model, name="lenet5", config={}, metrics={})
    meta = json.loads(js.read_text())
    meta["config"]["num_classes"] = 3
    js.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not fit model 'lenet5'"):
        load_checkpoint(js)


# --- cache and pretrained --------------------------------------------------------------------
