"""``--device`` on the commands that run models, and the rank record's game spec."""

import json

import pytest
import torch
from helpers import run_cli

from shapprune.devices import available_devices
from shapprune.game.pruning_game import PruningGame
from shapprune.game.spec import GameSpec
from shapprune.sources.checkpoint import save_checkpoint
from shapprune.zoo.models import build_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random-weight LeNet-5 checkpoint (no training needed)."""
    prefix = tmp_path_factory.mktemp("ck") / "lenet"
    save_checkpoint(prefix, build_model("lenet5", seed=2), name="lenet5", config={}, metrics={})
    return str(prefix) + ".json"


COMMANDS = {
    "rank": [],
    "prune": [],
    "oracle": [],
    "compare": ["--config", "no-such.yaml"],
    "demo": [],
    "train": [],
    "tune-lrp": [],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unavailable_device_is_one_line_naming_the_available(
    command, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    args = [command, *COMMANDS[command], "--device", "quantum:0"]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2, err
    assert err.count("\n") == 1
    assert err.startswith("error: device 'quantum:0' is not available here")
    assert err.rstrip().endswith(", ".join(available_devices()))
    assert not any(tmp_path.iterdir())  # refused before any work


@pytest.mark.parametrize("device", [*available_devices(), "auto"])
def test_rank_on_each_device_records_its_device_and_spec(
    device, checkpoint, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "ranks.json"
    args = ["rank", "--model", checkpoint, "--layer", "conv1", "--method", "loo"]
    args += ["--per-class", "3", "--device", device, "--out", str(out)]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    record = json.loads(out.read_text())
    expected = available_devices()[0] if device == "auto" else device
    assert torch.device(record["device"]).type == expected
    spec = GameSpec.from_dict(record["spec"])
    assert spec.model == checkpoint and spec.layer == "conv1" and spec.per_class == 3
    game = PruningGame.from_spec(spec, device="cpu")
    assert game.players == record["players"] and len(game.x) == record["reference_examples"]
    full = float(game.value(torch.ones(game.n_players, dtype=torch.bool)))
    drop0 = torch.ones(game.n_players, dtype=torch.bool)
    drop0[0] = False
    loo0 = full - float(game.value(drop0))
    assert abs(record["values"][0] - loo0) < 1e-5
