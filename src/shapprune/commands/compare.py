"""``shapprune compare`` (experiments from a config), ``oracle`` (oracle sets) and ``demo``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shapprune.commands.app import (
    CHECKPOINT,
    CRITERION_PANEL,
    OUTPUT_PANEL,
    CheckpointEveryOpt,
    ClassesOpt,
    DataOpt,
    DeviceOpt,
    ExecutorOpt,
    ImageSizeOpt,
    MeanOpt,
    ModelArgOpt,
    ModelOpt,
    PerClassOpt,
    RayAddressOpt,
    ResizeOpt,
    RootOpt,
    SeedOpt,
    StdOpt,
    ThreadsOpt,
    TrustPickleOpt,
    WeightsOpt,
    WorkersOpt,
    app,
    console,
    data_options,
    model_source,
    write_json,
)
from shapprune.commands.progress import cell_progress, evaluation_progress
from shapprune.commands.rank import ranking_table
from shapprune.devices import resolve_device
from shapprune.jobs import DEMO_EXPERIMENT, evaluating, executor_options, rank_layer
from shapprune.outputs import check_output
from shapprune.sources.models import load_model


@app.command()
def compare(
    config: Annotated[
        Path, typer.Option(rich_help_panel=CRITERION_PANEL, help="experiment YAML (see examples/)")
    ],
    out: Annotated[
        Path, typer.Option(rich_help_panel=OUTPUT_PANEL, help="output folder (rerun to resume)")
    ] = Path("runs/compare"),
    device: DeviceOpt = "auto",
    executor: ExecutorOpt = "serial",
    workers: WorkersOpt = 1,
    ray_address: RayAddressOpt = None,
    threads: ThreadsOpt = None,
    checkpoint_every: CheckpointEveryOpt = 10_000,
) -> None:
    """Compare criteria on layers, rates and seeds: JSON, CSV, plots and a Markdown report.

    Finished cells are saved as they complete, estimations within a cell every
    --checkpoint-every evaluations; the same command again resumes.
    """
    from shapprune.evaluation.compare import check_resumable, run_compare
    from shapprune.evaluation.config import load_config
    from shapprune.evaluation.report import write_outputs

    where = resolve_device(device)
    experiment = load_config(config)
    check_output(out, folder=True, resumes="experiment.json")
    runner = executor_options(executor, workers, ray_address, threads)
    check_resumable(experiment, out)
    identity = {"command": "compare", **json.loads((out / "experiment.json").read_text())}
    resume = out / f"estimations.{CHECKPOINT}"
    with (
        evaluating(runner, resume, identity, checkpoint_every),
        cell_progress("compare") as update,
    ):
        results = run_compare(experiment, out, progress=update, device=where)
    report = write_outputs(experiment, results, out)
    console.print(f"{results['cells_computed']} cells computed; wrote {report} and plots in {out}")


@app.command()
def oracle(
    model: ModelOpt = "tinycnn",
    model_arg: ModelArgOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    data: DataOpt = "mnist5k",
    image_size: ImageSizeOpt = None,
    resize: ResizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    classes: ClassesOpt = None,
    layer: Annotated[
        str, typer.Option(rich_help_panel=CRITERION_PANEL, help="module name")
    ] = "conv1",
    ks: Annotated[
        str, typer.Option(rich_help_panel=CRITERION_PANEL, help="set sizes, comma-separated")
    ] = "1,2,3,4,5",
    per_class: PerClassOpt = 25,
    max_subsets: Annotated[
        int, typer.Option(rich_help_panel=CRITERION_PANEL, help="beyond this, beam search")
    ] = 20_000,
    beam_width: Annotated[
        int, typer.Option(rich_help_panel=CRITERION_PANEL, help="beam width")
    ] = 8,
    root: RootOpt = None,
    out: Annotated[Path, typer.Option(rich_help_panel=OUTPUT_PANEL, help="JSON file")] = Path(
        "oracle.json"
    ),
    force: Annotated[
        bool, typer.Option(rich_help_panel=OUTPUT_PANEL, help="replace an existing --out file")
    ] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Oracle sets of a layer: for each k, the k units whose joint removal hurts least."""
    from shapprune.data import reference_set
    from shapprune.evaluation.oracle import oracle_rank, oracle_sets
    from shapprune.game.pruning_game import PruningGame
    from shapprune.sources.data import check_data_source, load_data

    where = resolve_device(device)
    loading = data_options(image_size, resize, mean, std, classes)
    try:
        sizes = [int(k) for k in ks.split(",") if k.strip()]
    except ValueError:
        raise ValueError(f"--ks takes set sizes as comma-separated integers, got {ks!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--ks takes set sizes >= 1, got {ks!r}")
    check_output(out, force=force)
    check_data_source(data)  # before the model: a zoo model would train on it
    net, meta = load_model(model, data, root=root, **model_source(model_arg, weights, trust_pickle))
    net = net.to(where)
    splits = load_data(data, model=net, meta=meta, root=root, seed=0, **loading)
    ref = reference_set(splits.val, per_class=per_class, seed=0, classes=splits.classes)
    game = PruningGame(net, layer, (ref.x, ref.y))
    found = oracle_sets(game, sizes, max_subsets=max_subsets, beam_width=beam_width)
    record = {"model": model, "data": data, "layer": layer, **found.to_dict()}
    record["rank"] = oracle_rank(found, game.n_players).tolist()
    write_json(out, record, force)
    for k in sizes:
        how = "exhaustive" if found.exhaustive[k] else "beam search"
        console.print(f"k={k}: remove {found.sets[k]} -> value {found.values[k]:.5f} ({how})")
    console.print(f"{found.n_evals} evaluations; wrote {out}")


@app.command()
def demo(
    budget: Annotated[
        int,
        typer.Option(rich_help_panel=CRITERION_PANEL, help="coalition evaluations for the ranking"),
    ] = 5000,
    seed: SeedOpt = 0,
    out: Annotated[
        Path, typer.Option(rich_help_panel=OUTPUT_PANEL, help="report folder (rerun to resume)")
    ] = Path("shapprune-demo"),
    device: DeviceOpt = "auto",
) -> None:
    """LeNet-5 on the embedded MNIST 5k: Shapley ranking of conv2, then criteria compared
    (layer-wise robustness, oracle sets, accuracy vs pruning rate) in a report with plots."""
    from shapprune.evaluation.compare import check_resumable, run_compare
    from shapprune.evaluation.config import parse_config
    from shapprune.evaluation.report import summarise, write_outputs

    check_output(out, folder=True, resumes="experiment.json")
    start = time.perf_counter()
    where = resolve_device(device)
    record = rank_layer(
        "lenet5", "mnist5k", "conv2", "permutation", budget, seed,
        progress=evaluation_progress, device=where,
    )  # fmt: skip
    acc = record["model_metrics"].get("test_accuracy")
    console.print(
        f"LeNet-5 on MNIST 5k: test accuracy {acc:.4f}; game on "
        f"{record['reference_examples']} validation images, metric = -cross-entropy"
    )
    console.print(ranking_table(record, show=5))
    console.print(f"{record['n_evals']} coalition evaluations in {record['seconds']:.2f} s")

    experiment = parse_config(DEMO_EXPERIMENT, "demo")
    check_resumable(experiment, out)
    with cell_progress("comparing criteria") as update:
        results = run_compare(experiment, out, progress=update, device=where)
    report = write_outputs(experiment, results, out)
    summary = summarise(experiment, results)
    table = Table(title="Layer-wise robustness AUC (lower is better) and mean accuracy vs rate")
    for col in ("criterion", *summary["robustness"], "accuracy AUC"):
        table.add_column(col, justify="right" if col != "criterion" else "left")
    for label, by_rate in summary["rates"].items():
        cells = [f"{summary['robustness'][layer][label][0]:.3f}" for layer in summary["robustness"]]
        table.add_row(label, *cells, f"{by_rate['auc'][0]:.3f}")
    console.print(table)
    console.print(f"report: {report}; demo wall time {time.perf_counter() - start:.1f} s")
