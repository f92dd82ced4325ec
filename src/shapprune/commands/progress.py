"""Progress on long runs: evaluations per second, time left, the bandit's players in doubt,
cells of a comparison and trials of a tuning."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shapprune.commands.app import console


@contextmanager
def evaluation_progress(label: str, total: int):
    """A rich progress bar fed by an estimator's ``progress(done, budget, status)`` callback:
    evaluations per second, the time left at that rate (an upper bound for an estimator
    that may stop early, such as the bandit) and, for the bandit, the players in doubt.

    The bar appears with the first report, so an error raised before any work is done
    prints alone.
    """
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("evaluations {task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[left]}{task.fields[doubt]}"),
        console=console,
        transient=True,
        disable=not console.is_interactive,  # piped stderr: no bar, no stray blank line
    )
    task = bar.add_task(label, total=total, rate="", left="", doubt="")
    start = time.perf_counter()

    def update(done: int, budget: int, status: dict | None = None) -> None:
        if not bar.live.is_started:
            bar.start()
        fields = progress_fields(done, budget, time.perf_counter() - start, status or {})
        bar.update(task, completed=done, total=budget, **fields)

    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()


def progress_fields(done: int, budget: int, seconds: float, status: dict) -> dict[str, str]:
    """The text of a long run's progress: rate, time left at that rate, players in doubt."""
    rate = done / seconds if seconds > 0 else 0.0
    left = (budget - done) / rate if rate > 0 else None
    early = "in_doubt" in status  # the bandit stops once none is in doubt: at most this
    return {
        "rate": f"({rate:,.1f}/s)" if rate else "",
        "left": "" if left is None else f"{'≤ ' if early else ''}{_duration(left)} left",
        "doubt": f", {status['in_doubt']:,} in doubt" if early else "",
    }


def status_progress(say: Callable[[str], object], label: str) -> Callable[..., None]:
    """A ``progress(done, budget, status)`` callback that says where each estimation is in
    one line (``say``: a spinner's text), for jobs that estimate inside criteria."""
    clock = {"start": time.perf_counter(), "last": 0}

    def update(done: int, budget: int, status: dict | None = None) -> None:
        if done < clock["last"]:  # a new estimation (the next layer or step)
            clock["start"] = time.perf_counter()
        clock["last"] = done
        f = progress_fields(done, budget, time.perf_counter() - clock["start"], status or {})
        rate = f" {f['rate']}" if f["rate"] else ""
        left = f", {f['left']}" if f["left"] else ""
        stage = (status or {}).get("stage", label)  # refinement says so; estimates do not
        say(f"{stage}: {done:,}/{budget:,} evaluations{rate}{left}{f['doubt']}")

    return update


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@contextmanager
def cell_progress(label: str):
    """A rich progress bar fed by ``run_compare``'s ``progress(label, done, total)``."""
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=True,
        disable=not console.is_interactive,  # piped stderr: no bar, no stray blank line
    ) as bar:  # fmt: skip
        task = bar.add_task(label, total=None)

        def update(description: str, done: int, total: int) -> None:
            bar.update(task, description=description, completed=done, total=total)

        yield update


@contextmanager
def trial_progress(label: str, total: int):
    """A rich progress bar fed by ``tune_lrp``'s ``progress(trial, trials, value, best)``."""
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("trials, best {task.fields[best]}"), TimeElapsedColumn(),
        console=console, transient=True, disable=not console.is_interactive,
    ) as bar:  # fmt: skip
        task = bar.add_task(label, total=total, best="-")

        def update(done: int, trials: int, value: float, best: float) -> None:
            bar.update(task, completed=done, total=trials, best=f"{best:.4f}")
            if not console.is_interactive:
                console.print(f"trial {done}/{trials}: {value:.4f} (best {best:.4f})")

        yield update
