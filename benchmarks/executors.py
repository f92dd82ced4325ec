"""Executors: serial vs ``processes`` vs ``ray``, 1 and 2 workers of 1 thread each, on a
late-layer game: wall time of one permutation estimate, speed-up at 2 workers, the
per-batch overhead of each executor, and whether the values are bit-identical.

Game: the zoo VGG's last convolution (``features.11``, 128 filters; trained on MNIST 5k),
250 validation images, built from a ``GameSpec`` (each worker rebuilds it from the spec).
Every run: ``estimate(game, "permutation", budget=BUDGET, seed=0)``, the main process on
one torch thread too. Workers are started and the game built before timing (a warm-up
estimate), so the times are evaluation, not start-up; start-up (Ray's: actors only, the
local cluster is started once beforehand) is reported apart. Each
executor runs ``ROUNDS`` times in a row (the median is kept), one executor after another.

Per-batch overhead: the round trip of a batch of one coalition through the executor, minus
the same coalition evaluated in this process (median of ``OVERHEAD_REPEATS``).

Run: ``python benchmarks/executors.py [--quick] [--out FILE.json]``. ``--quick``: an
untrained LeNet-5's ``fc1`` (500 units, from a checkpoint written to a temporary folder), a
small budget, one round.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import arguments, fmt_spread, spread, write_json

from shapprune.estimators.executors import ExecutedGame, Executor, make_executor
from shapprune.estimators.registry import estimate
from shapprune.game.spec import GameSpec
from shapprune.sources.checkpoint import save_checkpoint
from shapprune.zoo.models import build_model

BUDGET = 20_000
ROUNDS = 3
OVERHEAD_REPEATS = 50
SETTINGS = [("serial", 1), ("processes", 1), ("processes", 2), ("ray", 1), ("ray", 2)]


def spec_for(quick: bool, folder: Path) -> GameSpec:
    """The game: the zoo VGG's last conv, or (quick) an untrained LeNet-5's fc1."""
    if not quick:
        return GameSpec(model="vgg", layer="features.11", per_class=25)
    st, _ = save_checkpoint(folder / "lenet", build_model("lenet5", seed=0), name="lenet5",
                            config={"seed": 0}, metrics={})  # fmt: skip
    return GameSpec(model=str(st), layer="fc1", per_class=4)


def timed_estimate(game, executor: Executor, budget: int):
    start = time.perf_counter()
    est = estimate(game, "permutation", budget=budget, seed=0, executor=executor)
    return est, time.perf_counter() - start


def batch_overhead(game, executor: Executor, repeats: int) -> float:
    """Median seconds a one-coalition batch spends in the executor beyond its evaluation."""
    mask = torch.ones(1, game.n_players, dtype=torch.bool)
    executed = ExecutedGame(game, executor)
    extra = []
    for _ in range(repeats):
        start = time.perf_counter()
        executed.value(mask)
        through = time.perf_counter() - start
        start = time.perf_counter()
        game.value(mask)
        extra.append(through - (time.perf_counter() - start))
    return statistics.median(extra)


def _local_ray():
    """One local Ray cluster (loopback, one CPU per core) for both Ray settings: the
    executors join it rather than each starting (and stopping) its own."""
    import ray

    ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=os.cpu_count(),
             include_dashboard=False, log_to_driver=False, configure_logging=False)  # fmt: skip
    return ray


def main() -> None:
    args = arguments(__doc__, "executors")
    torch.set_num_threads(1)
    budget, rounds = (2_100, 1) if args.quick else (BUDGET, ROUNDS)
    repeats = 10 if args.quick else OVERHEAD_REPEATS
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        spec = spec_for(args.quick, Path(folder))
        game = spec.build("cpu")
        seconds: dict[str, list[float]] = {}
        values: dict[str, np.ndarray] = {}
        startup, overhead, evals = {}, {}, 0
        ray = _local_ray()
        for name, workers in SETTINGS:  # one at a time
            label = f"{name}, {workers} worker{'s' if workers > 1 else ''}"
            start = time.perf_counter()
            with make_executor(name, workers=workers, threads=1) as ex:
                estimate(game, "loo", executor=ex)  # starts the workers, builds their games
                startup[label] = time.perf_counter() - start
                seconds[label] = []
                for _ in range(rounds):
                    est, took = timed_estimate(game, ex, budget)
                    seconds[label].append(took)
                    values.setdefault(label, est.values)
                    assert np.array_equal(values[label], est.values)
                    evals = est.n_evals
                overhead[label] = batch_overhead(game, ex, repeats)
        ray.shutdown()
    serial = statistics.median(seconds["serial, 1 worker"])
    rows = []
    for label in seconds:
        median = statistics.median(seconds[label])
        rows.append({
            "executor": label,
            "seconds": spread(seconds[label]),
            "evals_per_s": evals / median,
            "speedup_vs_serial": serial / median,
            "batch_overhead_ms": 1e3 * overhead[label],
            "startup_s": startup[label],
            "identical_to_serial": bool(np.array_equal(values[label], values["serial, 1 worker"])),
        })  # fmt: skip
    by = {row["executor"]: row for row in rows}
    result = {
        "game": spec.to_dict(),
        "players": game.n_players,
        "stack_size": game.stack_size(),
        "budget": budget,
        "evaluations": evals,
        "rounds": rounds,
        "cores": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "rows": rows,
        "speedup_2_workers": {
            name: by[f"{name}, 1 worker"]["seconds"]["median"]
            / by[f"{name}, 2 workers"]["seconds"]["median"]
            for name in ("processes", "ray")
        },
        "quick": args.quick,
    }
    write_json(args.out, result)
    where = f"{spec.model} {spec.layer}" if not args.quick else f"untrained lenet5 {spec.layer}"
    print(f"#### {where}: {game.n_players} units, {len(game.x)} images\n")
    after = result["load_average_after"][0]
    print(f"One permutation estimate ({evals:,} evaluations, seed 0; the main process and "
          f"every worker on 1 torch thread), median (min-max) of {rounds} run(s) per executor; "
          f"{game.stack_size()} coalitions per chunk (the game's stack). Overhead/batch: a "
          "one-coalition batch through the executor minus the same evaluation in-process. "
          f"Machine: {os.cpu_count()} cores shared with other jobs (load average "
          f"{load_before[0]:.1f} before, {after:.1f} after).\n")  # fmt: skip
    print("| executor | seconds, median (min-max) | evaluations/s | x serial | overhead/batch "
          "(ms) | start-up (s) | bit-identical |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['executor']} | {fmt_spread(row['seconds'], 2)} | "
              f"{row['evals_per_s']:,.0f} | {row['speedup_vs_serial']:.2f} | "
              f"{row['batch_overhead_ms']:.2f} | {row['startup_s']:.1f} | "
              f"{'yes' if row['identical_to_serial'] else 'NO'} |")  # fmt: skip
    speedups = ", ".join(f"{k} {v:.2f}x" for k, v in result["speedup_2_workers"].items())
    print(f"\nspeed-up from 1 to 2 workers: {speedups}")


if __name__ == "__main__":
    main()
