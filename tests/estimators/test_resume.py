"""Checkpoint and resume: an interrupted estimation resumes to bit-identical values, each
coalition evaluated once over both runs; a file of another run is refused."""

import json

import numpy as np
import pytest
import torch

from shapprune.estimators.registry import estimate
from shapprune.estimators.resume import Checkpoint, using_checkpoint
from shapprune.game.pruning_game import PruningGame
from shapprune.zoo.models import build_model

IDENTITY = {"command": "test", "seed": 0}


@pytest.fixture(scope="module")
def lenet():
    """A random-weight LeNet-5 and 40 random images: real float32 values, no training."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 28, 28, generator=g), torch.randint(0, 10, (40,), generator=g)
    return build_model("lenet5", seed=3), (x, y)


def _game(lenet, layer="conv2"):
    model, data = lenet
    return PruningGame(model, layer, data, max_stack=8)


def _interrupt_after(batches: int):
    seen = []

    def progress(done, budget):
        seen.append(done)
        if len(seen) == batches:
            raise KeyboardInterrupt

    return progress


def test_an_interrupted_run_resumes_to_bit_identical_values(lenet, tmp_path):
    path = tmp_path / "run.checkpoint.json"
    plain = _game(lenet)
    reference = estimate(plain, "permutation", budget=4000, seed=4)
    first = _game(lenet)
    with pytest.raises(KeyboardInterrupt), using_checkpoint(Checkpoint(path, IDENTITY)):
        estimate(first, "permutation", budget=4000, seed=4, progress=_interrupt_after(3))
    assert path.exists() and 0 < first.n_evals < reference.n_evals
    second = _game(lenet)
    resumed = Checkpoint(path, IDENTITY)
    assert resumed.resumed
    got = estimate(second, "permutation", budget=4000, seed=4, checkpoint=resumed)
    assert np.array_equal(got.values, reference.values)
    assert np.array_equal(got.stderr, reference.stderr) and got.n_evals == reference.n_evals
    # nothing lost, nothing repeated: what the first run evaluated is read back, the rest
    # evaluated once
    assert resumed.replayed == first.n_evals
    assert first.n_evals + second.n_evals == plain.n_evals == reference.n_evals


def test_several_estimations_share_one_file(lenet, tmp_path):
    path = tmp_path / "prune.checkpoint.json"
    seeds = [1, 2]  # as a command estimating twice would (layers, steps, seeds)
    reference = [estimate(_game(lenet), "permutation", 2000, seed=s) for s in seeds]
    games = [_game(lenet) for _ in seeds]
    with pytest.raises(KeyboardInterrupt), using_checkpoint(Checkpoint(path, IDENTITY)):
        estimate(games[0], "permutation", 2000, seed=1)
        estimate(games[1], "permutation", 2000, seed=2, progress=_interrupt_after(2))
    assert len(json.loads(path.read_text())["estimations"]) == 2
    again = [_game(lenet) for _ in seeds]
    with using_checkpoint(Checkpoint(path, IDENTITY)) as found:
        got = [estimate(g, "permutation", 2000, seed=s) for g, s in zip(again, seeds, strict=True)]
    assert all(np.array_equal(a.values, b.values) for a, b in zip(got, reference, strict=True))
    assert again[0].n_evals == 0  # the first was finished: read back entirely
    assert found.replayed + again[1].n_evals == sum(r.n_evals for r in reference)


def test_the_file_is_written_while_the_run_goes_on(lenet, tmp_path):
    path = tmp_path / "run.checkpoint.json"
    sizes = []

    def progress(done, budget):
        record = json.loads(path.read_text())
        (entry,) = record["estimations"].values()
        sizes.append(sum(len(b["values"]) for b in entry["batches"]))

    ckpt = Checkpoint(path, IDENTITY, every_evals=1)
    got = estimate(_game(lenet), "permutation", 2000, seed=0, checkpoint=ckpt, progress=progress)
    assert len(sizes) > 2 and sizes[-1] == got.n_evals and sizes == sorted(sizes)


def test_a_file_of_another_run_is_refused(lenet, tmp_path):
    path = tmp_path / "run.checkpoint.json"
    estimate(_game(lenet), "loo", seed=0, checkpoint=Checkpoint(path, IDENTITY))
    with pytest.raises(ValueError, match=r"another run \(it differs in: budget, seed\)") as err:
        Checkpoint(path, {"command": "test", "seed": 1, "budget": 10})
    assert "\n" not in str(err.value) and "delete the file" in str(err.value)


def test_changed_coalitions_are_refused(lenet, tmp_path):
    path = tmp_path / "run.checkpoint.json"
    estimate(_game(lenet), "permutation", 300, seed=0, checkpoint=Checkpoint(path, IDENTITY))
    record = json.loads(path.read_text())
    (entry,) = record["estimations"].values()
    entry["batches"][1]["digest"] = "0" * 32  # as if the estimator asked for other coalitions
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="does not match this run"):
        estimate(_game(lenet), "permutation", 300, seed=0, checkpoint=Checkpoint(path, IDENTITY))


def test_a_file_that_is_not_a_checkpoint_is_left_alone(tmp_path):
    path = tmp_path / "notes.json"
    path.write_text('{"mine": 1}')
    with pytest.raises(ValueError, match="is not a shapprune checkpoint"):
        Checkpoint(path, IDENTITY)
    assert path.read_text() == '{"mine": 1}'


def _variants():
    """Tensors of the shapes, dtypes and layouts a model's state holds."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 6, generator=g)
    return {
        "0-dim int64 (BatchNorm's num_batches_tracked)": torch.tensor(7),
        "0-dim float32": torch.tensor(0.5),
        "bool": base > 0,
        "bfloat16": base.to(torch.bfloat16),
        "float16": base.half(),
        "complex64": torch.complex(base, -base),
        "int8": (base * 10).to(torch.int8),
        "non-contiguous": base.t(),
        "strided slice": base[:, ::2],
        "empty": torch.empty(0, 3),
        "requires grad": base.clone().requires_grad_(True),
    }


@pytest.mark.parametrize("kind", list(_variants()))
def test_the_digest_takes_tensors_of_any_shape_and_dtype(kind):
    from shapprune.estimators.resume import _digest

    t = _variants()[kind]
    first = _digest(t)
    assert first == _digest(t.clone()) and len(first) == 64
    # the same values, laid out contiguously, give the same digest
    assert _digest(t.contiguous()) == first
    if t.numel():  # a changed value changes the digest
        changed = t.detach().clone().reshape(-1)
        changed[0] = 1 if t.dtype == torch.bool and not bool(changed[0]) else 0
        if torch.equal(changed, t.detach().reshape(-1)):
            changed[0] = 3
        assert _digest(changed.reshape(t.shape)) != first


def test_the_digest_tells_shapes_and_dtypes_apart():
    from shapprune.estimators.resume import _digest

    zero_dim, one = torch.tensor(7), torch.tensor([7])
    assert _digest(zero_dim) != _digest(one)
    assert _digest(torch.zeros(2, dtype=torch.int32)) != _digest(torch.zeros(1, dtype=torch.int64))


def _devices():
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


@pytest.mark.parametrize("device", _devices())
def test_the_digest_is_the_same_on_every_device(device):
    from shapprune.estimators.resume import _digest

    on_cpu = list(_variants().values())
    on_cpu = [t for t in on_cpu if t.dtype != torch.complex64 or device == "cpu"]  # mps: none
    on_device = [t.detach().to(device) for t in on_cpu]
    assert [_digest(t) for t in on_device] == [_digest(t) for t in on_cpu]


@pytest.mark.parametrize("name", ["vgg", "resnet20"])
def test_a_batchnorm_model_game_has_a_fingerprint_that_follows_its_state(name):
    """BatchNorm holds a 0-dim int64 buffer: the fingerprint of its game reads it."""
    from shapprune.estimators.resume import game_fingerprint

    model = build_model(name, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 1, 28, 28, generator=g), torch.randint(0, 10, (6,), generator=g)
    layer = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))
    game = PruningGame(model, layer, (x, y), max_stack=4)
    first = game_fingerprint(game)
    assert first == game_fingerprint(PruningGame(model, layer, (x, y), max_stack=4))
    bn = next(m for m in game.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.num_batches_tracked += 1  # the game holds its own copy of the model
    assert game_fingerprint(game) != first
