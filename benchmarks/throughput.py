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

import time

import torch
import torch.fx as fx
from common import arguments, fmt_spread, rates, write_json

from shapprune.data import load_dataset
from shapprune.game import PruningGame
from shapprune.models import build_model
from shapprune.split import tile
from shapprune.train import pretrained

SECONDS_PER_RUN = 2.0
LAYERS = [("lenet5", "conv2"), ("vgg", "features.11"), ("resnet20", "layer2.0.conv2")]
MODES = {
    "naive (full forward per coalition)": dict(cache=False, max_stack=1),
    "prefix-cached, one coalition per pass": dict(max_stack=1, decompose=False),
    "prefix-cached + batched": dict(decompose=False),
    "prefix-cached + batched + decomposed (default)": dict(),
}


def evals_per_second(game: PruningGame, n: int, repeats: int) -> dict[str, float]:
    """Coalition evaluations per second over ``repeats`` runs of up to ``n`` random
    coalitions (fewer where a run would last over ``SECONDS_PER_RUN``, but at least one
    full stacked pass)."""
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(n, game.n_players, generator=g) > 0.5
    start = time.perf_counter()
    game.value(masks[: min(n, 2)])  # warm-up, and a first guess of the rate
    rate = min(n, 2) / (time.perf_counter() - start)
    n = max(min(n, game.stack_size()), min(n, int(rate * SECONDS_PER_RUN)))
    masks = masks[:n]
    return rates(lambda: game.value(masks), n, repeats)


def unmasked_suffix(game: PruningGame) -> tuple[fx.GraphModule, list[torch.Tensor]]:
    """The game's suffix with every masking multiply removed, and its inputs for one
    stacked pass (``game.stack_size()`` copies of the cached batch), built in advance."""
    split, cache = game._split, game._caches[0]
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


def limit(game: PruningGame, repeats: int) -> dict[str, float]:
    """Evaluations per second if a coalition cost only the plain suffix forward pass."""
    suffix, inputs = unmasked_suffix(game)
    m = game.stack_size()
    with torch.inference_mode():
        suffix(*inputs)  # warm-up
        return rates(lambda: suffix(*inputs), m, repeats)


def main() -> None:
    args = arguments(__doc__, "throughput")
    n_fast, n_slow, repeats = (16, 4, 1) if args.quick else (1024, 24, 5)
    data = load_dataset("mnist5k")
    ref = (data.val.x[:64], data.val.y[:64]) if args.quick else (data.val.x[:256], data.val.y[:256])
    results = []
    for name, layer in LAYERS:
        model = build_model(name) if args.quick else pretrained(name, "mnist5k", progress=False)[0]
        rows = []
        for label, opts in MODES.items():
            game = PruningGame(model, layer, ref, **opts)
            n = n_slow if opts.get("max_stack") == 1 else n_fast
            rows.append(
                {
                    "mode": label,
                    "evals_per_s": evals_per_second(game, n, repeats),
                    "stack": game.stack_size(),
                }
            )
        plain_game = PruningGame(model, layer, ref, decompose=False)
        lim = limit(plain_game, repeats)
        rows.append(
            {
                "mode": "limit: plain suffix forward, no masking",
                "evals_per_s": lim,
                "stack": plain_game.stack_size(),
            }
        )
        naive, top = rows[0]["evals_per_s"]["median"], lim["median"]
        print(f"#### {name} {layer}: {game.n_players} units, {len(ref[0])} images\n")
        print(
            "Coalition evaluations per second, median (min-max) of "
            f"{repeats} runs; stack: coalitions per forward pass.\n"
        )
        print("| mode | evals/s | stack | x naive | x limit |\n|---|---|---|---|---|")
        for r in rows:
            med = r["evals_per_s"]["median"]
            r["x_naive"], r["x_limit"] = med / naive, med / top
            print(
                f"| {r['mode']} | {fmt_spread(r['evals_per_s'])} | {r['stack']} "
                f"| {r['x_naive']:.1f} | {r['x_limit']:.2f} |"
            )
        print()
        results.append({"model": name, "layer": layer, "units": game.n_players, "rows": rows})
    write_json(args.out, {"layers": results})


if __name__ == "__main__":
    main()
