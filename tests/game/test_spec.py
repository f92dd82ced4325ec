"""GameSpec: a plain description of a game, carried as JSON, from which another process
rebuilds the same game."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import shapprune
from shapprune.game.network_game import NetworkGame
from shapprune.game.pruning_game import PruningGame
from shapprune.game.spec import GameSpec
from shapprune.sources.checkpoint import save_checkpoint
from shapprune.zoo.data import load_dataset, reference_set
from shapprune.zoo.models import build_model

REBUILD = """
import json, sys, torch
from shapprune.game.network_game import NetworkGame
from shapprune.game.pruning_game import PruningGame
from shapprune.game.spec import GameSpec
spec_text, masks_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
game = PruningGame.from_spec(GameSpec.from_json(spec_text), device="cpu")
masks = torch.tensor(json.load(open(masks_path)), dtype=torch.bool)
print(json.dumps({"players": game.players,
                  "values": [float(v).hex() for v in game.value(masks)]}))
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random-weight LeNet-5 saved as a checkpoint (no training needed)."""
    folder = tmp_path_factory.mktemp("spec")
    model = build_model("lenet5", seed=3)
    st, _ = save_checkpoint(folder / "lenet", model, name="lenet5", config={"seed": 3}, metrics={})
    return st


def _spec(checkpoint: Path, **changes) -> GameSpec:
    values = dict(
        model=str(checkpoint),
        layer="conv2",
        data="mnist5k",
        per_class=4,
        seed=1,
        metric="loss",
        options={"max_stack": 4},
    )
    return GameSpec(**{**values, **changes})


def test_rebuilt_in_a_fresh_process_gives_bit_identical_values(checkpoint, tmp_path):
    """Same machine, same stack sizes (max_stack=4, same thread count): the values of a
    fixed batch of masks are equal bit for bit in the original and the rebuilt game."""
    spec = _spec(checkpoint)
    game = PruningGame.from_spec(spec, device="cpu")
    assert game.spec is spec and game.n_players == 50 and len(game.x) == 40
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(11, game.n_players, generator=g) > 0.5
    masks[0] = True
    here = [float(v).hex() for v in game.value(masks)]
    assert len(set(here)) > 5  # the masks give different values: the comparison can fail
    masks_path = tmp_path / "masks.json"
    masks_path.write_text(json.dumps(masks.tolist()))
    src = str(Path(shapprune.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    threads = str(torch.get_num_threads())
    done = subprocess.run(
        [sys.executable, "-c", REBUILD, spec.to_json(), str(masks_path), threads],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    there = json.loads(done.stdout.strip().splitlines()[-1])
    assert there["players"] == game.players
    assert there["values"] == here


def test_spec_builds_the_game_the_pieces_build(checkpoint):
    spec = _spec(checkpoint, split="test", metric="accuracy", options={})
    game = spec.build(device="cpu")
    ref = reference_set(load_dataset("mnist5k").test, per_class=4, seed=1)
    direct = PruningGame(build_model("lenet5", seed=3), "conv2", ref, metric="accuracy")
    assert direct.spec is None and game.spec is spec
    masks = torch.ones(3, 50, dtype=torch.bool)
    masks[1, :25], masks[2, 10:] = False, False
    assert torch.equal(game.value(masks), direct.value(masks))
    assert torch.equal(game.x, direct.x) and torch.equal(game.y, direct.y)


def test_json_round_trip_and_defaults(checkpoint):
    spec = _spec(checkpoint)
    text = spec.to_json()
    assert GameSpec.from_json(text) == spec
    assert json.loads(text)["options"] == {"max_stack": 4}
    plain = GameSpec(model="lenet5", layer="conv1")
    assert plain.to_dict() == {
        "model": "lenet5", "layer": "conv1", "layers": None, "data": "mnist5k", "root": None,
        "split": "val", "per_class": 25, "seed": 0, "metric": "loss", "options": {},
        "model_args": {}, "weights": None, "trust_pickle": False, "preprocessing": None,
        "classes": None,
    }  # fmt: skip
    several = GameSpec(model="lenet5", layers=["conv1", "conv2"])
    assert GameSpec.from_json(several.to_json()).layer_names == ["conv1", "conv2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"model": "lenet5", "layer": "conv1", "colour": 1}', "unknown GameSpec keys"),
        ('{"model": "lenet5", "layer": "conv1", "per_class": "5"}', "per_class must be int"),
        ('{"model": "lenet5", "layer": "conv1", "seed": true}', "seed must be int"),
        ('{"model": "lenet5", "layer": 3}', "layer must be str or null"),
        ('{"model": "lenet5", "layer": "conv1", "split": "dev"}', "split must be one of"),
        ('{"model": "lenet5", "layer": "conv1", "metric": "f1"}', "unknown metric 'f1'"),
        ('{"model": "lenet5", "layer": "conv1", "options": {"fast": 1}}', "unknown GameSpec opt"),
        ('{"model": "lenet5", "layer": "c", "options": {"max_stack": 1.5}}', "max_stack must be"),
        ('{"model": "lenet5"}', "exactly one of layer"),
        ('{"model": "lenet5", "layer": "a", "layers": ["b"]}', "exactly one of layer"),
        ('{"layer": "conv1"}', "needs 'model'"),
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "must be JSON text"),
    ],
)
def test_bad_specs_are_refused_in_one_line(text, message):
    with pytest.raises(ValueError, match=message) as err:
        GameSpec.from_json(text)
    assert "\n" not in str(err.value)


def test_a_spec_over_several_layers_builds_the_network_game(checkpoint):
    spec = _spec(checkpoint, layer=None, layers=["conv1", "conv2"])
    game = GameSpec.from_json(spec.to_json()).build("cpu")
    assert isinstance(game, NetworkGame) and game.layers == ["conv1", "conv2"]
    assert game.n_players == 20 + 50 and game.spec == spec
    direct = NetworkGame(game.model, (game.x, game.y), ["conv1", "conv2"], max_stack=4)
    masks = torch.rand(6, game.n_players, generator=torch.Generator().manual_seed(0)) > 0.5
    assert torch.equal(game.value(masks), direct.value(masks))
