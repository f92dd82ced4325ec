"""Progress of long work, reported from deep inside a job: a command sets one callback
(``using_progress``) and every estimate, plan search, refinement and measurement inside
reports its count to it, saying which stage it is (``staged_progress``).

A callback is ``progress(done, total)`` or ``progress(done, total, status)``; the status
dict carries ``stage``, ``unit`` and estimator facts (the bandit's ``in_doubt``). It sits
below every other module, so anything may report without importing what reports."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["current_progress", "staged_progress", "takes_status", "using_progress"]

_PROGRESS: ContextVar[Callable[..., None] | None] = ContextVar("shapprune_progress", default=None)


@contextmanager
def using_progress(progress: Callable[..., None] | None) -> Iterator[None]:
    """Every ``estimate`` inside that is given no ``progress`` of its own reports to this
    one (a command's progress display, for criteria that estimate deep inside a job)."""
    token = _PROGRESS.set(progress)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def staged_progress(stage: str, unit: str | None = None) -> Callable[..., None] | None:
    """The ``using_progress`` callback told which stage its counts belong to (the status's
    ``stage``, and ``unit`` where they are not evaluations), so that a display says
    "refining" or "planning" with its count and time left rather than the scoring's label.
    A callback without a status parameter gets evaluations as they are, and no other unit."""
    progress = _PROGRESS.get()
    if progress is None:
        return None
    if not takes_status(progress):
        return progress if unit is None else None
    extra = {"stage": stage} if unit is None else {"stage": stage, "unit": unit}

    def update(done: int, budget: int, status: dict | None = None) -> None:
        progress(done, budget, {**(status or {}), **extra})

    return update


def current_progress() -> Callable[..., None] | None:
    """The callback set by the innermost ``using_progress`` (None outside one)."""
    return _PROGRESS.get()


def takes_status(fn: Callable[..., None]) -> bool:
    """Whether a progress callback accepts a third positional argument (the status)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: the two-argument form
        return False
    kinds = [p.kind for p in params]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(kind in positional for kind in kinds) >= 3
