"""``shapprune tune-lrp``: LRP rules tuned for pruning with Optuna."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shapprune.commands.app import (
    CRITERION_PANEL,
    DATA_PANEL,
    OUTPUT_PANEL,
    BatchSizeOpt,
    ClassesOpt,
    DataOpt,
    DeviceOpt,
    ImageSizeOpt,
    LoaderWorkersOpt,
    MeanOpt,
    ModelArgOpt,
    ModelOpt,
    ResizeOpt,
    RootOpt,
    SeedOpt,
    StdOpt,
    TrustPickleOpt,
    WeightsOpt,
    app,
    console,
    data_options,
    model_source,
)
from shapprune.commands.progress import trial_progress
from shapprune.devices import resolve_device
from shapprune.outputs import check_output
from shapprune.sources.models import load_model


@app.command("tune-lrp")
def tune_lrp_command(
    model: ModelOpt = "vgg",
    model_arg: ModelArgOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    data: DataOpt = "mnist5k",
    image_size: ImageSizeOpt = None,
    resize: ResizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    classes: ClassesOpt = None,
    batch_size: BatchSizeOpt = None,
    loader_workers: LoaderWorkersOpt = 0,
    units: Annotated[
        str, typer.Option(rich_help_panel=CRITERION_PANEL, help="filters, neurons or heads")
    ] = "filters",
    objective: Annotated[
        str,
        typer.Option(
            rich_help_panel=CRITERION_PANEL,
            help="auc (accuracy vs pruning rate) or shapley (Spearman)",
        ),
    ] = "auc",
    trials: Annotated[
        int,
        typer.Option(
            rich_help_panel=CRITERION_PANEL, min=1, help="complete trials the study should hold"
        ),
    ] = 30,
    sampler: Annotated[
        str, typer.Option(rich_help_panel=CRITERION_PANEL, help="tpe or gp (Gaussian process)")
    ] = "tpe",
    per_class: Annotated[
        int, typer.Option(rich_help_panel=DATA_PANEL, min=1, help="reference examples per class")
    ] = 10,
    normalisation: Annotated[
        str, typer.Option(rich_help_panel=CRITERION_PANEL, help="of scores across layers")
    ] = "l1",
    shapley_budget: Annotated[
        int | None,
        typer.Option(
            rich_help_panel=CRITERION_PANEL,
            help="coalitions for the Shapley values (objective shapley)",
        ),
    ] = None,
    seed: SeedOpt = 0,
    root: RootOpt = None,
    out: Annotated[
        Path,
        typer.Option(
            rich_help_panel=OUTPUT_PANEL, help="composite JSON; the study resumes from OUT.db"
        ),
    ] = Path("composite.json"),
    force: Annotated[
        bool, typer.Option(rich_help_panel=OUTPUT_PANEL, help="replace an existing --out file")
    ] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Tune the LRP rules (one per depth group) for pruning with Optuna; write the best
    composite as JSON, for `prune --criterion lrp --composite FILE`. Rerun to resume."""
    from shapprune.criteria.lrp_tune import (
        accuracy_auc,
        check_tune_options,
        tune_lrp,
        unit_scores,
    )
    from shapprune.data import reference_set
    from shapprune.sources.data import check_data_source, load_data

    check_tune_options(units, objective, trials, sampler, normalisation)
    where = resolve_device(device)
    check_output(out, force=force)
    storage = out.with_name(out.name + ".db")
    loading = data_options(image_size, resize, mean, std, classes, batch_size, loader_workers)
    check_data_source(data)  # before the model: a zoo model would train on it
    net, meta = load_model(model, data, root=root, **model_source(model_arg, weights, trust_pickle))
    net = net.to(where)
    splits = load_data(data, model=net, meta=meta, root=root, seed=0, **loading)
    with trial_progress("tune-lrp", trials) as update:
        result = tune_lrp(
            net, splits, units, objective, trials, seed, storage, sampler=sampler,
            per_class=per_class, normalisation=normalisation, shapley_budget=shapley_budget,
            progress=update,
        )  # fmt: skip
    spec = result.spec
    spec.info.update({"model": model, "data": data})
    # the test split is read only now, after the search
    ref = reference_set(splits.val, per_class=per_class, seed=seed)
    tested = {}
    for label, rules in (("tuned", spec), ("epsilon", "epsilon")):
        scores = unit_scores(net, (ref.x, ref.y), units, rules)
        tested[label] = accuracy_auc(net, scores, splits.test, normalisation)[0]
    spec.info["test_auc"] = tested
    spec.save(out)
    console.print(
        f"best {objective} {result.value:.4f} (plain epsilon {result.baseline:.4f}) "
        f"after {result.trials} trials ({result.new_trials} now, {result.seconds:.1f} s)"
    )
    console.print(f"composite: {spec.describe()}")
    console.print(
        f"test AUC of accuracy vs pruning rate: tuned {tested['tuned']:.4f}, "
        f"epsilon {tested['epsilon']:.4f}"
    )
    console.print(f"wrote {out} (study: {storage})")
