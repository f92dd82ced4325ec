"""The ``ray`` executor: Ray actors, each holding one copy of the game.

``address`` joins an existing Ray cluster (``ray start --head`` prints it; "auto" finds
one on this machine); without it a local cluster is started on the loopback address and
shut down on ``close``. Each actor sets its torch threads, builds the game once (from its
``GameSpec`` where it has one, so a remote machine loads the model itself), and answers
chunks of coalitions. Actors are restarted and their tasks retried by Ray when their
process dies (up to ``MAX_ATTEMPTS`` times a chunk), so a lost worker costs only the chunks
it held. Install: ``pip install -e
".[ray]"``.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import numpy as np

from shapprune.estimators.executors import (
    MAX_ATTEMPTS,
    Executor,
    _values,
    build_game,
    game_payload,
)

__all__ = ["RayExecutor"]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError(
            "the ray executor needs Ray: pip install -e '.[ray]' (or --executor processes)"
        ) from None
    return ray


def check_address(address: str, timeout: float = 3.0) -> None:
    """Refuse, in one line, an address ``host:port`` where nothing answers."""
    if address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"Ray address {address!r} must read host:port (e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ValueError(
            f"cannot reach a Ray cluster at {address} ({reason}); start one there with "
            "`ray start --head`, or leave --ray-address out to start a local one"
        ) from None


class _Worker:
    """One actor: the game, built once, answering chunks."""

    def __init__(self, payload: tuple[str, Any], threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.game = build_game(payload)

    def value(self, masks: np.ndarray) -> np.ndarray:
        return _values(self.game, masks)

    def pid(self) -> int:
        return os.getpid()


class RayExecutor(Executor):
    """Ray actors (one per worker, ``threads`` CPUs each); chunks go round-robin and come
    back in order."""

    name = "ray"

    def __init__(
        self, workers: int = 1, threads: int | None = None, address: str | None = None
    ) -> None:
        super().__init__(workers, threads)
        self.ray = _import_ray()
        if address is not None:
            check_address(address)
        self.address = address
        self._started = False
        self._actors: list[Any] = []
        self._game: Any = None  # held, so that no other game can take its id meanwhile
        self._payload: Any = None

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        if self.address is None:
            ray.init(
                address="local",
                _node_ip_address="127.0.0.1",  # a local cluster listens on loopback only
                num_cpus=max(self.workers * self.threads, os.cpu_count() or 1),
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        else:
            ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        self._started = True

    def _start(self, game: Any) -> list[Any]:
        if self._actors and self._game is game:
            return self._actors
        self._stop_actors()
        self._connect()
        ray = self.ray
        actor = ray.remote(
            num_cpus=self.threads, max_restarts=-1, max_task_retries=MAX_ATTEMPTS - 1
        )(_Worker)
        self._payload = ray.put(game_payload(game))  # held: a restarted actor reads it again
        self._actors = [actor.remote(self._payload, self.threads) for _ in range(self.workers)]
        self._game = game
        return self._actors

    def evaluate(self, game: Any, chunks: list[np.ndarray]) -> list[np.ndarray]:
        actors = self._start(game)
        refs = [actors[i % len(actors)].value.remote(c) for i, c in enumerate(chunks)]
        try:
            got = self.ray.get(refs)
        except self.ray.exceptions.RayActorError as err:
            if "creation task" in str(err):  # the worker could not build the game
                cause = str(err).strip().splitlines()[-1]
                raise RuntimeError(f"a Ray worker could not build the game: {cause}") from None
            raise RuntimeError(
                f"a Ray worker died {MAX_ATTEMPTS} times evaluating the same coalitions; the "
                "game itself crashes its process (try --executor serial)"
            ) from None
        return [np.asarray(v, dtype=np.float64) for v in got]

    def pids(self) -> list[int]:
        """The actors' process ids (for tests and diagnostics)."""
        return self.ray.get([a.pid.remote() for a in self._actors])

    def _stop_actors(self) -> None:
        for a in self._actors:
            self.ray.kill(a, no_restart=True)
        self._actors, self._game, self._payload = [], None, None

    def close(self) -> None:
        if self.ray.is_initialized():
            self._stop_actors()
            if self._started:
                self.ray.shutdown()
        self._actors, self._started = [], False
