"""``shapprune rank`` (a layer's Shapley values) and ``shapprune train`` (a zoo model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shapprune.commands.app import (
    CHECKPOINT,
    CRITERION_PANEL,
    METHOD_HELP,
    MODEL_PANEL,
    OUTPUT_PANEL,
    RANK_OPTION_HELP,
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
    say_resuming,
    write_json,
)
from shapprune.commands.progress import evaluation_progress
from shapprune.devices import resolve_device
from shapprune.estimators.registry import get_estimator
from shapprune.jobs import evaluating, executor_options, rank_layer
from shapprune.options import parse_options
from shapprune.outputs import check_output


def ranking_table(record: dict, show: int | None = None) -> Table:
    table = Table(title=f"Shapley ranking of {record['layer']} ({record['method']}), least first")
    for col in ("rank", "unit", "value", "stderr"):
        table.add_column(col, justify="right" if col != "unit" else "left")
    order = record["ranking"]
    rows = list(enumerate(order))
    if show is not None and len(rows) > 2 * show:
        rows = rows[:show] + [None] + rows[-show:]
    for row in rows:
        if row is None:
            table.add_row("...", "...", "...", "...")
            continue
        r, i = row
        table.add_row(
            str(r + 1),
            record["players"][i],
            f"{record['values'][i]:+.5f}",
            f"{record['stderr'][i]:.5f}",
        )
    return table


@app.command()
def rank(
    model: ModelOpt = "lenet5",
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
        str,
        typer.Option(
            rich_help_panel=CRITERION_PANEL, help="module name, as in model.named_modules()"
        ),
    ] = "conv2",
    method: Annotated[str, METHOD_HELP] = "permutation",
    option: Annotated[list[str] | None, RANK_OPTION_HELP] = None,
    budget: Annotated[
        int | None, typer.Option(rich_help_panel=CRITERION_PANEL, help="coalition evaluations")
    ] = None,
    seed: SeedOpt = 0,
    metric: Annotated[
        str, typer.Option(rich_help_panel=CRITERION_PANEL, help="loss|accuracy|margin")
    ] = "loss",
    per_class: PerClassOpt = 25,
    root: RootOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(rich_help_panel=OUTPUT_PANEL, help="write the result as JSON here"),
    ] = None,
    force: Annotated[
        bool, typer.Option(rich_help_panel=OUTPUT_PANEL, help="replace an existing --out file")
    ] = False,
    device: DeviceOpt = "auto",
    executor: ExecutorOpt = "serial",
    workers: WorkersOpt = 1,
    ray_address: RayAddressOpt = None,
    threads: ThreadsOpt = None,
    checkpoint_every: CheckpointEveryOpt = 10_000,
) -> None:
    """Shapley values of a layer's units, written as JSON with the ranking.

    With --out, an interrupted run leaves OUT.checkpoint.json; the same command resumes it.
    """
    if out is not None:
        check_output(out, force=force)
    source = model_source(model_arg, weights, trust_pickle)
    loading = data_options(image_size, resize, mean, std, classes)
    decl = get_estimator(method).Options
    options = parse_options(decl, option or [], f"method {method!r}")
    runner = executor_options(executor, workers, ray_address, threads)
    resume = out.with_name(f"{out.name}.{CHECKPOINT}") if out is not None else None
    identity = {"command": "rank", "model": model, "data": data, "layer": layer,
                "method": method, "options": options, "budget": budget, "seed": seed,
                "metric": metric, "per_class": per_class, "root": root,
                "source": source, "preprocessing": loading["preprocessing"],
                "classes": loading["classes"]}  # fmt: skip
    with evaluating(runner, resume, identity, checkpoint_every) as found:
        say_resuming(found)
        record = rank_layer(
            model, data, layer, method, budget, seed, metric, per_class, root,
            evaluation_progress, options=options, device=resolve_device(device),
            weights=source["weights"], trust_pickle=source["trust_pickle"],
            model_args={k: v for k, v in source.items() if k not in ("weights", "trust_pickle")},
            preprocessing=loading["preprocessing"], classes=loading["classes"],
        )  # fmt: skip
        if out is not None:
            write_json(out, record, force)
    console.print(ranking_table(record, show=10))
    console.print(
        f"{record['n_evals']} evaluations in {record['seconds']:.2f} s "
        f"({record['n_evals'] / max(record['seconds'], 1e-9):.0f}/s)"
    )
    if out is not None:
        console.print(f"wrote {out}")


@app.command()
def train(
    model: Annotated[
        str, typer.Option(rich_help_panel=MODEL_PANEL, help="zoo model name")
    ] = "lenet5",
    data: DataOpt = "mnist5k",
    out: Annotated[
        Path,
        typer.Option(rich_help_panel=OUTPUT_PANEL, help="checkpoint prefix (.safetensors + .json)"),
    ] = Path("checkpoints/model"),
    epochs: Annotated[
        int | None, typer.Option(rich_help_panel="Training", help="default: the model's recipe")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(rich_help_panel="Training", help="default: the model's recipe")
    ] = None,
    seed: SeedOpt = 0,
    root: RootOpt = None,
    force: Annotated[
        bool, typer.Option(rich_help_panel=OUTPUT_PANEL, help="replace an existing checkpoint")
    ] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Train a zoo model and save it as safetensors weights plus a JSON description."""
    from shapprune.sources.checkpoint import save_checkpoint
    from shapprune.zoo.models import MODELS
    from shapprune.zoo.training import recipe_for, train_by_recipe

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; known models: {', '.join(sorted(MODELS))}")
    for path in (out.with_name(out.name + ".safetensors"), out.with_name(out.name + ".json")):
        check_output(path, force=force)
    recipe = recipe_for(model, data)
    recipe.update({k: v for k, v in (("epochs", epochs), ("lr", lr)) if v is not None})
    net, config, metrics, data_name = train_by_recipe(
        model, data, recipe, seed=seed, root=root, device=resolve_device(device)
    )
    paths = save_checkpoint(
        out, net, name=model, config=config, metrics=metrics, dataset=data_name, overwrite=force
    )
    console.print(
        f"test accuracy {metrics['test_accuracy']:.4f}, loss {metrics['test_loss']:.4f} "
        f"({metrics['seconds']:.1f} s); wrote {paths[0]} and {paths[1]}"
    )
