"""How long ``prune`` may take: a duration read from text, the clock the run keeps, and the
cost model (in forward passes of the reference examples) that shares the time among stages.

Measuring the result at the end is reserved for first. Scoring and planning cost about
:data:`SCORE_PLAN_PASSES` forward passes of the reference examples: where the budget
cannot hold them, fewer reference examples are drawn (``reference_per_class``).
Refinement is the stage whose length is chosen last (its evaluations of whole removal
sets are each about one forward pass of the reference examples): the time left after
scoring and planning, less the measuring reserved, divided by what one evaluation costs
(timed on this machine). Without a budget,
refinement is held to :data:`REFINE_MACS` multiply-accumulates of reference forward
passes, counted, not timed, so that a run is the same on every machine: the 300
evaluations of the default on the zoo's models, about 10 for a ResNet-50 at 224 px with 60
reference images (4.1 GMACs each), 2 for a ViT-B/16.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from shapprune.evaluation.measure import LATENCY_S

__all__ = [
    "REFINE_MACS",
    "Clock",
    "forward_seconds",
    "parse_duration",
    "measure_seconds",
    "reference_per_class",
    "refine_evaluations",
]

REFINE_MACS = 2.5e12
"""Without a time budget, refinement's evaluations are held to this many multiply-
accumulates in all (evaluations x reference examples x MACs per example): 300 evaluations
of 250 examples of the zoo's largest model (ResNet-20, 31 MMACs) fit; about 20 s of one
2-core CPU."""
MEASURE_MARGIN = 1.5
"""Measuring is reserved for at this multiple of its estimate (latency repeats, loading)."""

SCORE_PLAN_PASSES = 12.0
"""Scoring and planning with prune's defaults, in forward passes of the reference examples:
LRP about 5 (a forward pass and a backward pass through its rules), planning the three
candidate plans of the auto scope about 6 (the consumers' means; each plan's removal
evaluated zeroed and compensated; the cost measures), and a margin (ResNet-50 at 224 px,
60 examples, one core, with two plans: 50 s and 45 s at 10.4 s a pass). Cautious for a
cheaper criterion (weight norms cost none)."""
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``90``, ``"90s"``, ``"10m"``, ``"1h"`` or ``"1m30s"``; ValueError (one
    line) for anything else or a duration that is not positive."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        words = str(text).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d*)?)([smh]?)", words)
        if (
            not words
            or "".join(n + u for n, u in parts) != words
            or (len(parts) > 1 and not all(u for _, u in parts))
        ):
            raise ValueError(
                f"a duration is a number of seconds or like 90s, 10m, 1h, 1m30s; got {text!r}"
            )
        seconds = sum(float(n) * _UNITS[u or "s"] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a time budget must be a positive duration; got {text!r}")
    return seconds


@dataclass
class Clock:
    """The run's time: its limit (None: none), when it started (``time.perf_counter``;
    a command starts it before loading the model) and the seconds spent per stage."""

    limit: float | None = None
    start: float = field(default_factory=time.perf_counter)
    stages: dict[str, float] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        """Seconds left of the limit (infinite without one; never below zero)."""
        return math.inf if self.limit is None else max(0.0, self.limit - self.elapsed())

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block and add it to ``stages[name]``."""
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - begin


@torch.inference_mode()
def forward_seconds(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> float:
    """Seconds of one forward pass of ``x`` through ``model`` (in batches as the games
    evaluate them), timed once: the unit every stage's cost is counted in. The first pass
    may carry warm-up costs, which only makes the estimates cautious."""
    was = model.training
    model.eval()
    try:
        begin = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size])
        return time.perf_counter() - begin
    finally:
        model.train(was)


def measure_seconds(test_examples: int, example_s: float, latency_batch: int = 64) -> float:
    """What measuring before and after costs (the pruned model counted at half the
    original): the test split; batch-1 latency (23 passes, at most ``LATENCY_S``); the
    latency batch (13 passes, or until ``LATENCY_S`` is spent and one more)."""
    batch_s = latency_batch * example_s
    ones = 2 * min(LATENCY_S, 23 * example_s)
    return 1.5 * test_examples * example_s + ones + 1.5 * min(13 * batch_s, LATENCY_S + batch_s)


def reference_per_class(
    asked: int, classes: int, clock: Clock, *, example_s: float, measure_s: float
) -> tuple[int, str]:
    """Reference examples per class that let scoring and planning (about
    :data:`SCORE_PLAN_PASSES` passes of them, ``example_s`` seconds per example) fit in
    the time left less measuring (``measure_s``, reserved at :data:`MEASURE_MARGIN`): the
    ``asked`` number, fewer where they do not fit, at least 1; and why (empty: asked)."""
    if clock.limit is None:
        return asked, ""
    seconds = clock.left() - MEASURE_MARGIN * measure_s
    fits = int(seconds // (SCORE_PLAN_PASSES * max(example_s, 1e-9) * max(classes, 1)))
    if fits >= asked:
        return asked, ""
    n = max(1, fits)
    return n, (
        f"{n} reference examples per class instead of {asked}: scoring and planning take "
        f"about {SCORE_PLAN_PASSES:.0f} passes of them ({example_s:.3f} s per example) and "
        f"the budget leaves {max(seconds, 0):.0f} s after measuring"
        + ("; the budget is too short even for this" if fits < 1 else "")
    )


def refine_evaluations(
    asked: int,
    clock: Clock,
    *,
    pass_macs: float,
    pass_s: float | None = None,
    measure_passes: float = 0.0,
) -> tuple[int, str]:
    """How many of the ``asked`` refinement evaluations to spend, and why. Each costs about
    one forward pass of the reference examples: ``pass_macs`` multiply-accumulates,
    ``pass_s`` seconds (timed; needed with a limit). With the clock's limit: what fits in
    the time left less ``measure_passes`` passes reserved for measuring; without: what
    :data:`REFINE_MACS` allows. Fewer than 2: none (a search needs a start and a swap)."""
    if asked <= 0:
        return 0, "no refinement asked"
    if clock.limit is None:
        fits = int(REFINE_MACS // max(pass_macs, 1.0))
        why = f"refinement is held to {REFINE_MACS:.2g} MACs of reference passes"
    else:
        if pass_s is None:
            raise ValueError("a time limit needs the seconds of one reference pass")
        pass_s = max(pass_s, 1e-6)
        seconds = clock.left() - MEASURE_MARGIN * measure_passes * pass_s
        fits = max(0, int(seconds // pass_s))
        why = "what the time budget leaves after scoring, planning and measuring"
    n = min(asked, fits)
    return (n if n >= 2 else 0), why
