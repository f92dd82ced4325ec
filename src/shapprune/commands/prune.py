"""``shapprune prune``: score units, remove them, measure before and after."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shapprune.commands.app import (
    CHECKPOINT,
    CRITERION_HELP,
    CRITERION_PANEL,
    OUTPUT_PANEL,
    PRUNE_OPTION_HELP,
    RUN_PANEL,
    TARGET_PANEL,
    BatchSizeOpt,
    CheckpointEveryOpt,
    ClassesOpt,
    DataOpt,
    DeviceOpt,
    ExecutorOpt,
    ImageSizeOpt,
    LoaderWorkersOpt,
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
from shapprune.commands.progress import status_progress
from shapprune.criteria.registry import CRITERIA, get_criterion
from shapprune.devices import check_precision, resolve_device
from shapprune.jobs import evaluating, executor_options
from shapprune.options import declared, parse_options
from shapprune.outputs import check_output
from shapprune.progress import using_progress
from shapprune.pruning.defaults import PRUNE_DEFAULTS, PruneDefaults, resolve_cost
from shapprune.pruning.export import (
    SUFFIXES,
    check_exportable,
    export_line,
    export_model,
    parse_formats,
)
from shapprune.sources.models import load_model


def _criterion_options(name: str, explicit: dict, items: list[str]) -> dict:
    """The options of criterion ``name``: the flags given explicitly (by the name of the
    option they set) and the ``--option KEY=VALUE`` items, parsed to the declared types."""
    if name not in CRITERIA:
        get_criterion(name)  # the unknown-criterion error, listing the known ones
    factory = CRITERIA[name]
    given = {k: v for k, v in explicit.items() if v is not None}
    factory.check(given)  # a flag the criterion does not declare is an error
    owner = f"criterion {name!r}"
    return {**given, **parse_options(factory.declaration, items, owner, tuple(factory.fixed))}


_DECLARED_HELP = {name: text for name, (_, _, text) in declared(PruneDefaults).items()}


def _option(panel: str, declared_as: str | None = None, *, help: str | None = None):
    """An option of ``prune`` in its --help panel; its help the declaration's
    (``PruneDefaults``) where the option is declared there."""
    return typer.Option(help=help or _DECLARED_HELP[declared_as], rich_help_panel=panel)


def _yes_no(value: bool | str) -> str:
    return {True: "yes", False: "no"}.get(value, str(value))


def _scope_choice(global_: bool | None) -> bool | str:
    """``--global/--per-layer`` as ``prune_model`` takes it: neither is the default scope."""
    return PRUNE_DEFAULTS.global_ if global_ is None else global_


def _compensate_choice(text: str | None) -> bool | str | None:
    """``--compensate yes|no|auto`` as ``prune_model`` takes it (none given: its default)."""
    choices = {None: PRUNE_DEFAULTS.compensate, "yes": True, "no": False, "auto": "auto"}
    if text not in choices:
        raise ValueError(f"--compensate takes yes, no or auto; got {text!r}")
    return choices[text]


def _declares(criterion: str, key: str) -> bool:
    """Whether criterion ``criterion`` (known or not: checked later) has option ``key``."""
    factory = CRITERIA.get(criterion)
    return factory is not None and key in {f.name for f in dataclasses.fields(factory.declaration)}


def _metrics_table(summary: dict) -> Table:
    table = Table(title=f"{summary['criterion']}, target {summary['target']}")
    for col in ("", "before", "after", "after / before"):
        table.add_column(col, justify="right")
    before, after = summary["before"], summary["after"]
    for key in before:
        ratio = after[key] / before[key] if before[key] else float("nan")
        fmt = "{:.4f}" if key in ("accuracy", "loss") or "latency" in key else "{:,.0f}"
        table.add_row(key, fmt.format(before[key]), fmt.format(after[key]), f"{ratio:.3f}")
    return table


@app.command()
def prune(
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
    batch_size: BatchSizeOpt = None,
    loader_workers: LoaderWorkersOpt = 0,
    per_class: PerClassOpt = PRUNE_DEFAULTS.per_class,
    seed: SeedOpt = PRUNE_DEFAULTS.seed,
    root: RootOpt = None,
    target: Annotated[str, _option(TARGET_PANEL, "target")] = PRUNE_DEFAULTS.target,
    layers: Annotated[
        str | None, _option(TARGET_PANEL, help="comma-separated; default: all")
    ] = None,
    global_: Annotated[
        bool | None,
        typer.Option(
            "--global/--per-layer",
            help="rank units across layers, or cut each alike; default: both are built and "
            "the one with the lower loss on the reference examples is kept",
            rich_help_panel=TARGET_PANEL,
        ),
    ] = None,
    cost: Annotated[
        str,
        _option(
            TARGET_PANEL,
            help="with --global: rank by score per macs|params saved, or none; auto: the "
            "target's kind (macs or params)",
        ),
    ] = PRUNE_DEFAULTS.cost,
    normalisation: Annotated[
        str | None,
        _option(
            TARGET_PANEL,
            help="per-layer scores for --global; default the criterion's (l1, or none)",
        ),
    ] = None,
    refine: Annotated[int, _option(TARGET_PANEL, "refine")] = PRUNE_DEFAULTS.refine,
    compensate: Annotated[
        str | None,
        _option(
            TARGET_PANEL,
            help="removed units leave their mean as a bias: yes|no|auto (the better on the "
            f"reference examples); default {_yes_no(PRUNE_DEFAULTS.compensate)}",
        ),
    ] = None,
    recalibrate: Annotated[bool, _option(TARGET_PANEL, "recalibrate")] = PRUNE_DEFAULTS.recalibrate,
    headroom: Annotated[float, _option(TARGET_PANEL, "headroom")] = PRUNE_DEFAULTS.headroom,
    steps: Annotated[int, _option(TARGET_PANEL, "steps")] = PRUNE_DEFAULTS.steps,
    mode: Annotated[str, _option(TARGET_PANEL, "mode")] = PRUNE_DEFAULTS.mode,
    finetune_epochs: Annotated[
        int, _option(TARGET_PANEL, help="fine-tune after pruning; 0 = the low-data regime")
    ] = 0,
    finetune_lr: Annotated[float, _option(TARGET_PANEL, help="fine-tuning learning rate")] = 1e-3,
    criterion: Annotated[str, CRITERION_HELP] = PRUNE_DEFAULTS.criterion,
    option: Annotated[list[str] | None, PRUNE_OPTION_HELP] = None,
    budget: Annotated[
        int | None, _option(CRITERION_PANEL, help="option 'budget' (Shapley)")
    ] = None,
    metric: Annotated[
        str | None, _option(CRITERION_PANEL, help="option 'metric' (Shapley)")
    ] = None,
    composite: Annotated[
        str | None, _option(CRITERION_PANEL, help="option 'composite' (LRP)")
    ] = None,
    out: Annotated[Path, _option(OUTPUT_PANEL, help="output folder")] = Path("pruned"),
    force: Annotated[
        bool, _option(OUTPUT_PANEL, help="write into a non-empty --out folder")
    ] = False,
    export: Annotated[
        str | None,
        _option(
            OUTPUT_PANEL,
            help="also export the pruned model: exported-program, onnx, torchscript and/or hf "
            "(an hf: model), comma-separated (into --out, each checked against the pruned "
            "module)",
        ),
    ] = None,
    time_budget: Annotated[
        str | None,
        _option(
            RUN_PANEL,
            help="how long the whole command may take (90s, 10m, 1h), loading included: "
            "refinement gets what scoring and planning leave; default: none",
        ),
    ] = None,
    precision: Annotated[str, _option(RUN_PANEL, "precision")] = PRUNE_DEFAULTS.precision,
    device: DeviceOpt = "auto",
    executor: ExecutorOpt = "serial",
    workers: WorkersOpt = 1,
    ray_address: RayAddressOpt = None,
    threads: ThreadsOpt = None,
    checkpoint_every: CheckpointEveryOpt = 10_000,
) -> None:
    """Prune a model: score units, remove them, measure before and after.

    An interrupted run leaves OUT/scores.checkpoint.json; the same command resumes it.
    """
    from shapprune.data import examples, reference_set
    from shapprune.pruning.budget import Clock, parse_duration
    from shapprune.pruning.compress import prune_model
    from shapprune.pruning.plan import Target
    from shapprune.sources.checkpoint import save_pruned
    from shapprune.sources.data import check_data_source, load_data

    clock = Clock(None if time_budget is None else parse_duration(time_budget))

    parsed = Target.parse(target)
    chosen_cost = resolve_cost(cost, _scope_choice(global_), parsed.kind)  # before any work
    formats = parse_formats(export)
    source = model_source(model_arg, weights, trust_pickle)
    loading = data_options(image_size, resize, mean, std, classes, batch_size, loader_workers)
    where = resolve_device(device)
    check_precision(precision, where)
    check_output(out, folder=True)
    resume = out / f"scores.{CHECKPOINT}"
    if out.exists() and any(p != resume for p in out.iterdir()) and not force:
        raise FileExistsError(f"{out} is not empty; choose another --out or pass --force")
    explicit = {"budget": budget, "metric": metric, "composite": composite}
    fill = _compensate_choice(compensate)
    if _declares(criterion, "compensate") and fill != "auto":  # the game removes as removal does
        explicit["compensate"] = fill
    chosen_options = _criterion_options(criterion, explicit, option or [])
    scorer = get_criterion(criterion, **chosen_options)
    runner = executor_options(executor, workers, ray_address, threads)
    identity = {"command": "prune", "model": model, "data": data, "criterion": criterion,
                "options": chosen_options, "target": target, "layers": layers,
                "global": global_, "normalisation": normalisation, "steps": steps,
                "mode": mode, "per_class": per_class, "seed": seed, "root": root,
                "cost": cost, "compensate": compensate, "refine": refine,
                "recalibrate": recalibrate, "headroom": headroom, "source": source,
                "preprocessing": loading["preprocessing"],
                "classes": loading["classes"]}  # fmt: skip
    check_data_source(data)  # before the model: a zoo model would train on it
    with clock.stage("loading"):
        net, meta = load_model(model, data, root=root, **source)
        for fmt in formats:
            check_exportable(net, fmt)
        net = net.to(where)
        splits = load_data(data, model=net, meta=meta, root=root, seed=0, **loading)
    chosen = [s.strip() for s in layers.split(",") if s.strip()] if layers else None
    with (
        evaluating(runner, resume, identity, checkpoint_every) as found,
        console.status("pruning") as status,
        using_progress(status_progress(status.update, "scoring")),
    ):
        say_resuming(found)
        pruned, summary = prune_model(
            net,
            splits,
            scorer,
            parsed,
            layers=chosen,
            global_=_scope_choice(global_),
            steps=steps,
            normalisation=normalisation,
            mode=mode,
            per_class=per_class,
            seed=seed,
            finetune_epochs=finetune_epochs,
            finetune_lr=finetune_lr,
            compensate=fill,
            cost=chosen_cost,
            refine=refine,
            time_budget=clock,
            precision=precision,
            recalibrate=recalibrate,
            headroom=headroom,
            report=status.update,
        )
    out.mkdir(parents=True, exist_ok=True)
    base = {k: meta[k] for k in ("model", "config", "source", "labels") if k in meta}
    base["preprocessing"] = splits.preprocessing  # how its inputs were made, and their classes
    base["labels"] = list(splits.classes) or base.get("labels")
    save_pruned(
        out / "model",
        pruned,
        base=base,
        input_shape=tuple(examples(splits.val, 1).shape[1:]),
        metrics=summary["after"],
        dataset=splits.name,
        overwrite=force,
    )
    summary["source_model"] = model
    if formats:
        ref = reference_set(splits.val, per_class=1, seed=seed)
        with clock.stage("exporting"):
            lines = [
                export_line(export_model(pruned.cpu().eval(), ref.x, fmt,
                                         out / f"model{SUFFIXES[fmt]}"))
                for fmt in formats
            ]  # fmt: skip
    summary["stages"] = {name: round(t, 3) for name, t in clock.stages.items()}
    summary["seconds"] = round(clock.elapsed(), 3)
    write_json(out / "summary.json", summary, force=True)
    console.print(_metrics_table(summary))
    for note in summary["notes"]:
        console.print(f"note: {note}")
    removed = ", ".join(f"{k}: {v}" for k, v in summary["removed"].items())
    console.print(
        f"removed units: {removed}\nwrote {out}/model.safetensors, model.json, summary.json"
    )
    for line in lines if formats else []:
        console.print(line)
    stages = ", ".join(f"{name} {t:.1f}" for name, t in clock.stages.items())
    budget_text = "" if clock.limit is None else f" of a {clock.limit:.0f} s budget"
    console.print(f"{clock.elapsed():.1f} s{budget_text} ({stages})")
