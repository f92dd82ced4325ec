"""Evaluation throughput: coalition evaluations per second of the pruning game, by mode,
against the limit of a plain forward pass of the same suffix.

Layers: LeNet-5 conv2, the zoo VGG's last convolution and the zoo ResNet-20's middle stage
(the residual channels of stage 2, shared by every block of the stage), 256 validation
images each. Modes: naive (a full forward pass per coalition), prefix-cached (one
coalition per pass), prefix-cached + batched coalitions, and the default (batched, with
linear first consumers decomposed into per-player output tables). The limit is the
suffix of the network (from the masked consumers on) run on the same stacked batch with
no masking at all: what any masking scheme has to pay at least.

Run: ``python benchmarks/throughput.py [--quick] [--out FILE.json]``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.fx as fx
from common import arguments, fmt_spread, spread, write_json

from shapprune.game.pruning_game import PruningGame
from shapprune.game.split import SplitModel, tile
from shapprune.game.tracing import trace
from shapprune.zoo.cache import pretrained
from shapprune.zoo.data import load_dataset
from shapprune.zoo.models import build_model

SECONDS_PER_RUN = 2.0
LAYERS = [("lenet5", "conv2"), ("vgg", "features.11"), ("resnet20", "layer2.0.conv2")]
MODES = {
    "naive (full forward per coalition)": dict(cache=False, max_stack=1),
    "prefix-cached, one coalition per pass": dict(max_stack=1, decompose=False),
    "prefix-cached + batched": dict(decompose=False),
    "prefix-cached + batched + decomposed (default)": dict(),
}


def coalition_run(game: PruningGame, n: int) -> tuple[Callable[[], object], int]:
    """A timed run of the game on up to ``n`` random coalitions (fewer where it would last
    over ``SECONDS_PER_RUN``, but at least one full stacked pass), and its count."""
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(n, game.n_players, generator=g) > 0.5
    start = time.perf_counter()
    game.value(masks[: min(n, 2)])  # warm-up, and a first guess of the rate
    rate = min(n, 2) / (time.perf_counter() - start)
    n = max(min(n, game.stack_size()), min(n, int(rate * SECONDS_PER_RUN)))
    masks = masks[:n]
    return (lambda: game.value(masks)), n


def interleaved_rates(runs: list[tuple[Callable[[], object], int]], repeats: int) -> list[list]:
    """Evaluations per second of each run, per round: every round times each run once, so
    that a slow spell of the machine touches all of them alike."""
    return [[count / _seconds(run) for run, count in runs] for _ in range(repeats)]


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def unmasked_suffix(game: PruningGame) -> tuple[fx.GraphModule, list[torch.Tensor]]:
    """The suffix of the game's network (every masked consumer run on its input, as the
    network does) with no masking at all, and its inputs for one stacked pass
    (``game.stack_size()`` copies of the game's first batch), built in advance."""
    points = game.units.mask_points
    split = SplitModel(trace(game.model), points, game.x, game.n_players, mask_weights=False)
    cache = split.prepare(game.x[: game.batch_size])
    m = game.stack_size()
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    edge_inputs = set()
    for node in split.suffix.graph.nodes:
        if node.op == "placeholder" and node.name.startswith("edge_"):
            edge_inputs.add(node)
        masking = node.target is torch.mul and len(node.args) == 2 and node.args[1] in edge_inputs
        if masking:
            env[node] = env[node.args[0]]  # the unmasked tensor
        elif node.op != "placeholder" or node not in edge_inputs or _is_frontier(split, node):
            env[node] = graph.node_copy(node, lambda a: env[a])
    plain = fx.GraphModule(split.suffix, graph)
    plain.graph.eliminate_dead_code()
    plain.recompile()
    inputs = [
        cache.tensors[i] if bd is None else tile(cache.tensors[i], bd, m)
        for i, bd in split.plain_inputs
    ]
    inputs += [tile(cache.tensors[e.source], e.batch_dim, m) for e in split.edges if e.frontier]
    return plain, inputs


def _is_frontier(split, node: fx.Node) -> bool:
    return split.edges[int(node.name.split("_")[1])].frontier


def limit_run(game: PruningGame, n: int) -> tuple[Callable[[], object], int]:
    """Timed plain suffix forward passes for about ``n`` coalitions (at least one pass),
    and how many coalitions they stand for."""
    suffix, inputs = unmasked_suffix(game)
    passes = max(1, n // game.stack_size())

    def run() -> None:
        with torch.inference_mode():
            for _ in range(passes):
                suffix(*inputs)

    run()  # warm-up
    return run, passes * game.stack_size()


def main() -> None:
    args = arguments(__doc__, "throughput")
    n_fast, n_slow, repeats = (16, 4, 1) if args.quick else (1024, 24, 5)
    data = load_dataset("mnist5k")
    ref = (data.val.x[:64], data.val.y[:64]) if args.quick else (data.val.x[:256], data.val.y[:256])
    results = []
    for name, layer in LAYERS:
        model = build_model(name) if args.quick else pretrained(name, "mnist5k", progress=False)[0]
        games = [PruningGame(model, layer, ref, **opts) for opts in MODES.values()]
        runs = [
            coalition_run(game, n_slow if opts.get("max_stack") == 1 else n_fast)
            for game, opts in zip(games, MODES.values(), strict=True)
        ]
        batched = games[2]  # cached + batched: the same stack as the limit's
        runs.append(limit_run(batched, runs[2][1]))
        rounds = interleaved_rates(runs, repeats)
        labels = [*MODES, "limit: plain suffix forward, no masking"]
        rows = [
            {
                "mode": label,
                "evals_per_s": spread([r[i] for r in rounds]),
                "x_naive": statistics.median(r[i] / r[0] for r in rounds),
                "x_limit": statistics.median(r[i] / r[-1] for r in rounds),
                "stack": (games[i] if i < len(games) else batched).stack_size(),
            }
            for i, label in enumerate(labels)
        ]
        game = games[0]
        print(f"#### {name} {layer}: {game.n_players} units, {len(ref[0])} images\n")
        print(
            f"Coalition evaluations per second, median (min-max) of {repeats} rounds; each "
            "round times every mode once. x naive, x limit: median over the rounds of the "
            "ratio within a round. Stack: coalitions per forward pass.\n"
        )
        print("| mode | evals/s | stack | x naive | x limit |\n|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['mode']} | {fmt_spread(r['evals_per_s'])} | {r['stack']} "
                f"| {r['x_naive']:.1f} | {r['x_limit']:.2f} |"
            )
        print()
        results.append({"model": name, "layer": layer, "units": game.n_players, "rows": rows})
    write_json(args.out, {"layers": results})


if __name__ == "__main__":
    main()
