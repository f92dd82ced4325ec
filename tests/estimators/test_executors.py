"""Executors: the same values bit for bit whoever evaluates the coalitions; a dead worker
loses nothing; bad settings are one-line errors."""

import os
import sys

import numpy as np
import pytest
import torch

from shapprune.estimators.executors import (
    ExecutedGame,
    ExecutorOptions,
    make_executor,
    register_executor,
    using_executor,
)
from shapprune.estimators.registry import estimate
from shapprune.game.pruning_game import PruningGame
from shapprune.game.spec import GameSpec
from shapprune.game.synthetic import AdditiveGame
from shapprune.sources.checkpoint import save_checkpoint
from shapprune.zoo.models import build_model

# bit-identity holds at equal threads per evaluation: the workers get this process's
THREADS = torch.get_num_threads()


@pytest.fixture(scope="module")
def spec_game(tmp_path_factory):
    """A random-weight LeNet-5's conv2 game built from a GameSpec, 4 coalitions per pass
    (so that a batch is many chunks)."""
    folder = tmp_path_factory.mktemp("executors")
    st, _ = save_checkpoint(folder / "lenet", build_model("lenet5", seed=3), name="lenet5",
                            config={"seed": 3}, metrics={})  # fmt: skip
    spec = GameSpec(model=str(st), layer="conv2", per_class=4, seed=1, options={"max_stack": 4})
    return spec.build("cpu")


class DyingGame(AdditiveGame):
    """An additive game whose process dies (os._exit) on the first chunk holding a coalition
    of ``n - 5`` players evaluated while ``marker`` exists; every chunk evaluated is logged."""

    def __init__(self, weights, marker: str, log: str, once: bool = True) -> None:
        super().__init__(weights)
        self.marker, self.log, self.once = marker, log, once

    def stack_size(self) -> int:
        return 8

    def _values(self, z: np.ndarray) -> np.ndarray:
        if (z.sum(axis=1) == self.n_players - 5).any():
            try:
                if self.once:
                    os.unlink(self.marker)
                elif not os.path.exists(self.marker):
                    raise FileNotFoundError
            except FileNotFoundError:
                pass
            else:
                os._exit(1)
        with open(self.log, "a") as f:
            f.write(f"{len(z)}\n")
        return super()._values(z)


def test_processes_give_bit_identical_values(spec_game):
    serial = estimate(spec_game, "permutation", budget=600, seed=5)
    with make_executor("processes", workers=2, threads=THREADS) as ex:
        got = estimate(spec_game, "permutation", budget=600, seed=5, executor=ex)
        assert ex.deaths == 0
    assert np.array_equal(got.values, serial.values) and np.array_equal(got.stderr, serial.stderr)
    assert got.n_evals == serial.n_evals


def test_a_game_without_a_spec_is_sent_to_one_worker_with_the_same_values(spec_game):
    game = PruningGame(spec_game.model, "conv2", (spec_game.x, spec_game.y), max_stack=4)
    assert game.spec is None
    masks = torch.rand(23, game.n_players, generator=torch.Generator().manual_seed(0)) > 0.5
    with make_executor("processes", workers=1, threads=THREADS) as ex:
        executed = ExecutedGame(game, ex)
        assert torch.equal(executed.value(masks), game.value(masks))
        assert executed.value(masks[0]).shape == () and executed.n_evals == 24


def test_a_dying_worker_costs_only_its_chunks(tmp_path):
    marker, log = tmp_path / "die", tmp_path / "log"
    weights = np.linspace(-1, 1, 12)
    game = DyingGame(weights, str(marker), str(log))
    serial = estimate(AdditiveGame(weights), "permutation", budget=500, seed=2)
    marker.touch()
    with make_executor("processes", workers=2, threads=THREADS) as ex:
        got = estimate(game, "permutation", budget=500, seed=2, executor=ex)
        assert ex.deaths == 1 and ex.retried >= 1
    assert not marker.exists()  # the worker did die
    assert np.array_equal(got.values, serial.values) and got.n_evals == serial.n_evals
    # every coalition counted once: the evaluations that reached the estimate are the
    # serial run's; the workers evaluated them all, plus at most the chunks in flight on
    # the other worker when the pool broke
    done = sum(int(line) for line in log.read_text().split())
    assert got.n_evals <= done <= got.n_evals + 2 * game.stack_size()


def test_a_game_that_always_kills_its_worker_is_an_error_not_a_loop(tmp_path):
    marker, log = tmp_path / "die", tmp_path / "log"
    marker.touch()
    game = DyingGame(np.linspace(-1, 1, 12), str(marker), str(log), once=False)
    with make_executor("processes", workers=1, threads=1) as ex:
        with pytest.raises(RuntimeError, match="workers died 3 times") as err:
            estimate(game, "permutation", budget=500, seed=2, executor=ex)
        assert ex.deaths == 3
    assert "\n" not in str(err.value)


def test_the_executor_in_use_reaches_estimate(spec_game, monkeypatch):
    calls = []

    class Counting:
        remote = True

        def evaluate(self, game, chunks):
            calls.append([len(c) for c in chunks])
            return [game.value(torch.from_numpy(c)).numpy() for c in chunks]

    serial = estimate(spec_game, "loo", seed=0)
    with using_executor(Counting()):
        got = estimate(spec_game, "loo", seed=0)
    assert np.array_equal(got.values, serial.values)
    assert calls and all(size <= spec_game.stack_size() for sizes in calls for size in sizes)


def test_executors_are_an_open_registry():
    class Mine(make_executor("serial").__class__):
        name = "mine"

    register_executor("mine", Mine)
    try:
        assert isinstance(make_executor("mine", workers=3), Mine)
        assert ExecutorOptions(executor="mine").executor == "mine"
        with pytest.raises(ValueError, match="already registered"):
            register_executor("mine", Mine)
    finally:
        from shapprune.estimators import executors

        executors.EXECUTORS.pop("mine")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(name="threads"), "unknown executor 'threads'; choose one of: serial, processes"),
        (dict(name="processes", workers=0), "--workers must be >= 1, got 0"),
        (dict(name="ray", address="127.0.0.1:1"), "cannot reach a Ray cluster at 127.0.0.1:1"),
        (dict(name="ray", address="nowhere"), "must read host:port"),
    ],
)
def test_bad_settings_are_one_line_errors(settings, message):
    with pytest.raises(ValueError, match=message) as err:
        make_executor(**settings)
    assert "\n" not in str(err.value)


def test_bad_options_name_the_fix():
    with pytest.raises(ValueError, match="add --executor ray"):
        ExecutorOptions(executor="processes", ray_address="127.0.0.1:6379")
    with pytest.raises(ValueError, match="use 1 or more"):
        ExecutorOptions(workers=0)
    with pytest.raises(ValueError, match=r"takes an Executor, got 'processes': build one with"):
        estimate(AdditiveGame([1.0, 2.0]), "exact", executor="processes")


def test_ray_actors_give_bit_identical_values_and_survive_a_death(spec_game, tmp_path):
    """One local cluster (started by the executor on the loopback address) for both checks."""
    import ray.cloudpickle

    this = sys.modules[__name__]  # Ray's workers cannot import the tests: send DyingGame
    ray.cloudpickle.register_pickle_by_value(this)
    try:
        serial = estimate(spec_game, "permutation", budget=400, seed=7)
        marker, log = tmp_path / "die", tmp_path / "log"
        weights = np.linspace(-1, 1, 12)
        dying = DyingGame(weights, str(marker), str(log))
        plain = estimate(AdditiveGame(weights), "permutation", budget=500, seed=2)
        with make_executor("ray", workers=2, threads=THREADS) as ex:
            got = estimate(spec_game, "permutation", budget=400, seed=7, executor=ex)
            assert len(set(ex.pids())) == 2 and os.getpid() not in ex.pids()
            marker.touch()
            survived = estimate(dying, "permutation", budget=500, seed=2, executor=ex)
        assert np.array_equal(got.values, serial.values) and got.n_evals == serial.n_evals
        assert not marker.exists()  # an actor did die; Ray restarted it and ran its chunk again
        assert np.array_equal(survived.values, plain.values) and survived.n_evals == plain.n_evals
    finally:
        ray.cloudpickle.unregister_pickle_by_value(this)
