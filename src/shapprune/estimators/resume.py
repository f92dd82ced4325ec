"""Checkpoint and resume: a long estimation survives an interruption.

An estimator is deterministic given its seed, so a rerun asks for the same batches of
coalitions in the same order. A :class:`Checkpoint` (a JSON file, never pickle) records,
for each estimation of a command, the values of every batch evaluated, keyed by the batch's
index and checked by a digest of its coalitions. A rerun reads the recorded values
instead of evaluating the batches again, then goes on: no evaluation is lost or repeated,
and the final values are bit-identical to an uninterrupted run (floats are written by
``repr``, which reads back exactly).

The file is written atomically every ``every_evals`` evaluations or ``every_seconds``
seconds, and on any interruption (Ctrl-C, an error) that reaches ``estimate``. It records
the command's identity; a file written by another command is refused, naming it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "Checkpoint",
    "RecordedGame",
    "current_checkpoint",
    "game_fingerprint",
    "prepared_game",
    "using_checkpoint",
]

FORMAT = "shapprune-checkpoint"
VERSION = 1


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples as lists, ...), for comparisons."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor of any shape (0-dim included), dtype (bool, bfloat16, ...),
    layout or device: flattened to one dimension first, since a 0-dim tensor cannot be
    viewed as bytes of another element size."""
    t = t.detach()
    if t.layout != torch.strided:  # sparse: its dense values say the same
        t = t.to_dense()
    if t.is_quantized:
        t = t.int_repr()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    flat = t.reshape(-1).cpu().contiguous()
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def _digest(*arrays: Any) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if isinstance(a, torch.Tensor):
            h.update(str((a.dtype, tuple(a.shape))).encode())
            h.update(_tensor_bytes(a))
        elif isinstance(a, np.ndarray):
            h.update(str((a.dtype, a.shape)).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        else:
            h.update(repr(a).encode())
    return h.hexdigest()


def game_fingerprint(game: Any) -> str:
    """A digest of what the game's values depend on: a pruning game's weights, data and
    settings, else its spec, else its plain numeric attributes."""
    model = getattr(game, "model", None)
    if model is not None and hasattr(game, "x"):
        state = [t for _, t in sorted(model.state_dict().items())]
        settings = (type(game).__name__, game.metric, game.players, game.stack_size())
        return _digest(settings, game.x, game.y, *state)
    spec = getattr(game, "spec", None)
    if spec is not None and hasattr(spec, "to_json"):
        return _digest("spec", spec.to_json())
    parts: list[Any] = [type(game).__qualname__, int(game.n_players)]
    for key, value in sorted(vars(game).items()):
        if key != "n_evals" and isinstance(value, np.ndarray | torch.Tensor | int | float | str):
            parts += [key, value]
    return _digest(*parts)


class Checkpoint:
    """The file of a command's estimations; ``identity`` is the command (what it computes),
    checked against the file's when one exists."""

    def __init__(
        self,
        path: str | Path,
        identity: dict[str, Any],
        every_evals: int = 10_000,
        every_seconds: float = 60.0,
    ) -> None:
        if every_evals < 1 or every_seconds <= 0:
            raise ValueError("a checkpoint is written every >= 1 evaluations and > 0 seconds")
        self.path = Path(path)
        self.identity = _plain(identity)
        self.every_evals, self.every_seconds = int(every_evals), float(every_seconds)
        self.estimations: dict[str, dict[str, Any]] = {}
        self.replayed = 0  # evaluations read back from the file in this run
        self._unsaved = 0
        self._saved_at = time.monotonic()
        if self.path.exists():
            self._load()
        self.resumed = bool(self.estimations)

    def _load(self) -> None:
        try:
            record = json.loads(self.path.read_text())
            ok = record.get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise ValueError(
                f"{self.path} exists and is not a shapprune checkpoint; move it or choose "
                "another --out"
            )
        if record.get("version") != VERSION:
            raise ValueError(f"{self.path} is a checkpoint of another format version; delete it")
        if record["identity"] != self.identity:
            differ = sorted(
                k
                for k in set(record["identity"]) | set(self.identity)
                if record["identity"].get(k) != self.identity.get(k)
            )
            raise ValueError(
                f"{self.path} holds the checkpoint of another run (it differs in: "
                f"{', '.join(differ)}); rerun that command to resume it, or delete the file "
                "to start afresh"
            )
        self.estimations = record["estimations"]

    def batches(self, key: dict[str, Any]) -> list[dict[str, Any]]:
        """The recorded batches of the estimation ``key`` (created empty if new)."""
        name = _digest(json.dumps(_plain(key), sort_keys=True))[:24]
        entry = self.estimations.setdefault(name, {"key": _plain(key), "batches": []})
        return entry["batches"]

    def recorded(self, n: int) -> None:
        """``n`` evaluations were added: write the file if enough have been, or time passed."""
        self._unsaved += n
        due = time.monotonic() - self._saved_at >= self.every_seconds
        if self._unsaved >= self.every_evals or due:
            self.save()

    def save(self) -> None:
        """Write the file atomically (a temporary file, then a rename); a run interrupted
        before its first evaluation came back writes nothing."""
        if not any(e["batches"] for e in self.estimations.values()):
            return
        record = {
            "format": FORMAT,
            "version": VERSION,
            "identity": self.identity,
            "estimations": self.estimations,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(record))
            tmp.replace(self.path)
        finally:
            tmp.unlink(missing_ok=True)
        self._unsaved, self._saved_at = 0, time.monotonic()

    def remove(self) -> None:
        """Delete the file (the command finished and wrote its results)."""
        self.path.unlink(missing_ok=True)


class RecordedGame:
    """``game`` with its batches recorded in ``batches``: the i-th call replays the i-th
    recorded batch (after checking that it asks for the same coalitions), later calls
    evaluate and record."""

    def __init__(self, game: Any, checkpoint: Checkpoint, batches: list[dict[str, Any]]) -> None:
        self.game, self.checkpoint, self._batches = game, checkpoint, batches
        self.n_players = int(game.n_players)
        self._calls = 0

    def value(self, masks: torch.Tensor) -> torch.Tensor:
        masks = torch.as_tensor(masks, dtype=torch.bool, device="cpu")
        z = masks.reshape(-1, self.n_players).numpy()
        digest = _digest(np.packbits(z, axis=1))[:32]
        i, self._calls = self._calls, self._calls + 1
        if i < len(self._batches):
            batch = self._batches[i]
            if batch["digest"] != digest or len(batch["values"]) != len(z):
                raise ValueError(
                    f"{self.checkpoint.path} does not match this run (batch {i} asks for other "
                    "coalitions: the code or the game changed); delete it to start afresh"
                )
            self.checkpoint.replayed += len(z)
            out = torch.tensor(batch["values"], dtype=torch.float64)
        else:
            vals = self.game.value(masks.reshape(-1, self.n_players))
            out = torch.as_tensor(vals, dtype=torch.float64, device="cpu").reshape(-1)
            self._batches.append({"digest": digest, "values": [float(v) for v in out]})
            self.checkpoint.recorded(len(z))
        return out[0] if masks.dim() == 1 else out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["game"], name)


_CURRENT: ContextVar[Checkpoint | None] = ContextVar("shapprune_checkpoint", default=None)


def current_checkpoint() -> Checkpoint | None:
    """The checkpoint set by ``using_checkpoint`` around this call, if any."""
    return _CURRENT.get()


@contextmanager
def using_checkpoint(checkpoint: Checkpoint | None) -> Iterator[Checkpoint | None]:
    """Every ``estimate`` inside records to (and resumes from) ``checkpoint``; the file is
    written on leaving, however the block ends."""
    token = _CURRENT.set(checkpoint)
    try:
        yield checkpoint
    finally:
        _CURRENT.reset(token)
        if checkpoint is not None and checkpoint.estimations:
            checkpoint.save()


def prepared_game(
    game: Any,
    key: dict[str, Any],
    executor: Any = None,
    checkpoint: Checkpoint | None = None,
) -> Any:
    """``game`` as ``estimate`` plays it: evaluated by ``executor`` (default: the one in
    use, else serial) and recorded to ``checkpoint`` (default: the one in use, else none).
    ``key`` names the estimation (method, seed, budget, options); the game's fingerprint is
    added to it."""
    from shapprune.estimators.executors import ExecutedGame, current_executor

    checkpoint = checkpoint if checkpoint is not None else current_checkpoint()
    fingerprint = game_fingerprint(game) if checkpoint is not None else ""
    executor = executor if executor is not None else current_executor()
    if executor is not None and not hasattr(executor, "evaluate"):
        raise ValueError(
            f"executor= takes an Executor, got {executor!r}: build one with "
            "make_executor(name, workers=...) and close it after (it is a context manager)"
        )
    if executor is not None and executor.remote:
        game = ExecutedGame(game, executor)
    if checkpoint is not None:
        batches = checkpoint.batches({**key, "game": fingerprint})
        game = RecordedGame(game, checkpoint, batches)
    return game
