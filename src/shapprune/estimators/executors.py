"""Executors: who answers the coalitions an estimator asks for.

An estimator hands a batch of coalitions to its game; when an executor is in use, the game
is an :class:`ExecutedGame`, which splits the batch into chunks of the game's own stack size
(``stack_size()``: the coalitions one forward pass stacks) and has the executor evaluate
them, reading the values back in order. Each chunk is evaluated as the serial path
evaluates that stack, so for a given seed the values are bit-identical whatever the
executor and the number of workers (with the same threads per evaluation: float32 sums
may depend on how many threads share a convolution).

``serial`` (the default) evaluates in this process, as always. ``processes`` runs a local
pool of fresh processes (from a fork server, or spawned), each rebuilding the game once:
from its ``GameSpec`` where it has one, else from a copy of the game sent once. ``ray``
(``shapprune.estimators.ray_executor``) runs Ray actors, on a cluster joined by ``address``
or a local one. A worker that dies mid-batch costs only the chunks in flight, which are run
again on a fresh worker: values are collected per chunk, so nothing is lost and nothing
counted twice. New executors: ``register_executor(name, cls)``.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from shapprune.options import option

__all__ = [
    "EXECUTORS",
    "ExecutedGame",
    "Executor",
    "ExecutorOptions",
    "ProcessExecutor",
    "SerialExecutor",
    "current_executor",
    "make_executor",
    "register_executor",
    "using_executor",
]

DEFAULT_CHUNK = 64  # coalitions per chunk for a game that does not say its stack size
MAX_ATTEMPTS = 3  # a chunk whose worker dies this many times is an error, not bad luck


@dataclass
class ExecutorOptions:
    """How coalitions are evaluated (the CLI's ``--executor``, ``--workers``, ...)."""

    executor: str = option("serial", "who evaluates the coalitions: serial, processes or ray")
    workers: int = option(1, "worker processes (processes, ray)")
    threads: int | None = option(
        None,
        "torch threads per worker (default: cores / workers); values are bit-identical "
        "to the serial run's at equal threads per evaluation",
    )
    ray_address: str | None = option(None, "join this Ray cluster (default: start a local one)")

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(
                f"unknown executor {self.executor!r}; choose one of: {', '.join(EXECUTORS)}"
            )
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}; use 1 or more")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads per worker must be >= 1, got {self.threads}")
        if self.ray_address is not None and self.executor != "ray":
            raise ValueError(
                f"--ray-address is for the ray executor; add --executor ray "
                f"(the executor is {self.executor!r})"
            )


class Executor:
    """Evaluates chunks of coalitions of a game; a context manager (``close`` frees workers).

    ``evaluate(game, chunks)`` returns one float64 array per chunk, in order. ``deaths``
    counts workers lost mid-batch, ``retried`` the chunks run again because of them.
    """

    name: ClassVar[str] = ""

    def __init__(self, workers: int = 1, threads: int | None = None, **settings: Any) -> None:
        if settings:
            raise ValueError(f"executor {self.name!r} takes no setting {', '.join(settings)}")
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}; use 1 or more")
        self.workers = int(workers)
        self.threads = int(threads) if threads else max(1, (os.cpu_count() or 1) // self.workers)
        self.deaths = 0
        self.retried = 0

    @property
    def remote(self) -> bool:
        """Whether evaluation happens outside this process (then chunks are sent)."""
        return True

    def evaluate(self, game: Any, chunks: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Free the workers (an executor may be used again: it starts them anew)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(workers={self.workers}, threads={self.threads})"


class SerialExecutor(Executor):
    """Today's behaviour: the game evaluates the whole batch in this process."""

    name = "serial"

    @property
    def remote(self) -> bool:
        return False

    def evaluate(self, game: Any, chunks: list[np.ndarray]) -> list[np.ndarray]:
        return [_values(game, c) for c in chunks]


# --- what a worker holds ---------------------------------------------------------------------


def game_payload(game: Any) -> tuple[str, Any]:
    """What a worker needs to rebuild ``game``: its spec as JSON text (and the device) where
    it has one, else the game itself (sent once per worker, by the transport's pickling)."""
    spec = getattr(game, "spec", None)
    if spec is not None and hasattr(spec, "to_json"):
        return ("spec", (spec.to_json(), str(getattr(game, "device", "cpu"))))
    return ("game", game)


def build_game(payload: tuple[str, Any]) -> Any:
    """The game a ``game_payload`` describes (in a worker)."""
    kind, body = payload
    if kind == "spec":
        from shapprune.game.spec import GameSpec

        text, device = body
        return GameSpec.from_json(text).build(device)
    return body


def _values(game: Any, masks: np.ndarray) -> np.ndarray:
    vals = game.value(torch.from_numpy(np.ascontiguousarray(masks, dtype=bool)))
    if isinstance(vals, torch.Tensor):
        vals = vals.detach().cpu()
    return np.asarray(vals, dtype=np.float64).reshape(-1)


_WORKER_GAME: Any = None


def _start_worker(payload: tuple[str, Any], threads: int) -> None:
    """Pool initializer: threads first (so workers do not oversubscribe), then the game."""
    global _WORKER_GAME
    torch.set_num_threads(threads)
    _WORKER_GAME = build_game(payload)


def _worker_values(masks: np.ndarray) -> np.ndarray:
    return _values(_WORKER_GAME, masks)


PRELOAD = ["torch", "shapprune.estimators.executors", "shapprune.game.spec"]


def _context() -> multiprocessing.context.BaseContext:
    """Fresh interpreters, never a fork of this one (its threads, its CUDA state): a fork
    server where the platform has one (it imports torch and shapprune once, so a new pool
    starts in a fraction of a second), else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


class ProcessExecutor(Executor):
    """A local pool of fresh processes (see ``_context``), each holding its own copy of the
    game.

    The pool is started for a game on first use and kept while the same game is evaluated
    (a new game starts a new pool). A dead worker breaks a ``concurrent.futures`` pool: the
    pool is started again and only the chunks without a value are submitted again.
    """

    name = "processes"

    def __init__(self, workers: int = 1, threads: int | None = None) -> None:
        super().__init__(workers, threads)
        self._pool: ProcessPoolExecutor | None = None
        self._game: Any = None  # held, so that no other game can take its id meanwhile

    def _start(self, game: Any) -> ProcessPoolExecutor:
        if self._pool is None or self._game is not game:
            self.close()
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=_context(),
                initializer=_start_worker,
                initargs=(game_payload(game), self.threads),
            )
            self._game = game
        return self._pool

    def evaluate(self, game: Any, chunks: list[np.ndarray]) -> list[np.ndarray]:
        results: list[np.ndarray | None] = [None] * len(chunks)
        attempts = [0] * len(chunks)
        while True:
            todo = [i for i, r in enumerate(results) if r is None]
            if not todo:
                return results  # type: ignore[return-value]
            pool = self._start(game)
            futures: dict[Future, int] = {}
            broken = False
            for i in todo:
                try:
                    futures[pool.submit(_worker_values, chunks[i])] = i
                except BrokenProcessPool:  # a worker died while the rest were submitted
                    broken = True
                    break
                attempts[i] += 1
            wait(futures, return_when=FIRST_EXCEPTION)
            for fut, i in futures.items():
                try:
                    results[i] = fut.result()  # waits for the rest; a dead pool fails them all
                except BrokenProcessPool:
                    broken = True
            if broken:
                self.deaths += 1
                failed = [i for i in todo if results[i] is None]
                self.retried += len(failed)
                if any(attempts[i] >= MAX_ATTEMPTS for i in failed):
                    self.close()
                    raise RuntimeError(
                        f"workers died {MAX_ATTEMPTS} times evaluating the same coalitions: "
                        "the game cannot be built in a worker or crashes its process (try "
                        "--executor serial)"
                    )
                self.close()  # start a fresh pool for what is left

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool, self._game = None, None


# --- the registry ----------------------------------------------------------------------------

EXECUTORS: dict[str, Callable[..., Executor] | str] = {}


def register_executor(
    name: str, factory: Callable[..., Executor] | str, *, replace: bool = False
) -> None:
    """Make ``factory`` (a class, or ``"module:Class"`` imported on first use) the executor
    ``name``: built as ``factory(workers=..., threads=..., **settings)``."""
    if name in EXECUTORS and not replace:
        raise ValueError(f"an executor named {name!r} is already registered; pass replace=True")
    EXECUTORS[name] = factory


register_executor("serial", SerialExecutor)
register_executor("processes", ProcessExecutor)
register_executor("ray", "shapprune.estimators.ray_executor:RayExecutor")


def make_executor(
    name: str = "serial", workers: int = 1, threads: int | None = None, **settings: Any
) -> Executor:
    """The executor ``name`` with ``workers`` workers of ``threads`` torch threads each;
    bad settings are one-line ValueErrors naming the fix."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}; use 1 or more")
    factory = EXECUTORS[name]
    if isinstance(factory, str):
        import importlib

        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(workers=workers, threads=threads, **settings)


# --- the game seen through an executor -------------------------------------------------------


class ExecutedGame:
    """``game`` with its batches evaluated by ``executor``, in chunks of the game's stack
    size, values read back in order; other attributes are the game's."""

    def __init__(self, game: Any, executor: Executor) -> None:
        self.game = game
        self.executor = executor
        self.n_players = int(game.n_players)
        self.n_evals = 0  # coalitions whose values came back (each counted once)

    def chunk_size(self) -> int:
        """Coalitions per chunk: the game's stack size, so chunks are the serial stacks."""
        size = getattr(self.game, "stack_size", None)
        return max(1, int(size())) if callable(size) else DEFAULT_CHUNK

    def value(self, masks: torch.Tensor) -> torch.Tensor:
        masks = torch.as_tensor(masks, dtype=torch.bool, device="cpu")
        single = masks.dim() == 1
        z = masks.reshape(-1, self.n_players).numpy()
        if not self.executor.remote:
            out = torch.from_numpy(_values(self.game, z))
        else:
            step = self.chunk_size()
            chunks = [z[i : i + step] for i in range(0, len(z), step)]
            got = self.executor.evaluate(self.game, chunks) if chunks else []
            out = torch.from_numpy(np.concatenate(got) if got else np.zeros(0))
        self.n_evals += len(z)
        return out[0] if single else out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["game"], name)


# --- the executor in use ---------------------------------------------------------------------

_CURRENT: ContextVar[Executor | None] = ContextVar("shapprune_executor", default=None)


def current_executor() -> Executor | None:
    """The executor set by ``using_executor`` around this call, if any."""
    return _CURRENT.get()


@contextmanager
def using_executor(executor: Executor | ExecutorOptions | None) -> Iterator[Executor | None]:
    """Every ``estimate`` inside evaluates through ``executor`` (built from options if given
    as such, and then closed on leaving): how ``prune`` and ``compare`` reach the criteria."""
    owned = isinstance(executor, ExecutorOptions)
    if isinstance(executor, ExecutorOptions):
        settings = {"address": executor.ray_address} if executor.ray_address else {}
        executor = make_executor(executor.executor, executor.workers, executor.threads, **settings)
    token = _CURRENT.set(executor)
    try:
        yield executor
    finally:
        _CURRENT.reset(token)
        if owned and executor is not None:
            executor.close()
