"""The ``shapprune`` command line: demo, train, rank."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shapprune.criteria.registry import CRITERIA, get_criterion
from shapprune.devices import resolve_device
from shapprune.estimators.executors import ExecutorOptions
from shapprune.estimators.registry import ESTIMATORS, get_estimator, using_progress
from shapprune.jobs import DEMO_EXPERIMENT, evaluating, executor_options, rank_layer
from shapprune.options import declared, parse_options
from shapprune.outputs import check_output
from shapprune.zoo.cache import load_model

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Structured pruning by Shapley values: rank a layer's units by their contribution.",
)
console = Console(stderr=True)
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotImplementedError, TypeError)


# Options shared by several commands
ModelOpt = Annotated[str, typer.Option(help="zoo model name or checkpoint path")]
DataOpt = Annotated[str, typer.Option(help="dataset name (mnist5k is embedded)")]
SeedOpt = Annotated[int, typer.Option(help="random seed")]
RootOpt = Annotated[str | None, typer.Option(help="folder holding local datasets")]
PerClassOpt = Annotated[int, typer.Option(min=1, help="reference examples per class")]
# Help that lists the registered estimators and criteria: written by _refresh_help() when the
# command line runs, so that estimators and criteria registered after import show up.
METHOD_HELP = typer.Option(help="a registered estimator")
CRITERION_HELP = typer.Option(help="a registered criterion")
RANK_OPTION_HELP = typer.Option("--option", help="KEY=VALUE, a declared option of the method")
PRUNE_OPTION_HELP = typer.Option("--option", help="KEY=VALUE, a declared option of the criterion")


def _options_of(decl: type, fixed: tuple = ()) -> str:
    names = [n for n in declared(decl) if n not in fixed]
    return ", ".join(names) if names else "none"


def _refresh_help() -> None:
    """Help texts from the registries and the declarations, as they are now."""
    METHOD_HELP.help = f"one of: {', '.join(ESTIMATORS)}"
    CRITERION_HELP.help = f"one of: {', '.join(CRITERIA)}"
    RANK_OPTION_HELP.help = (
        "KEY=VALUE, repeatable: a declared option of the method ("
        + "; ".join(f"{name}: {_options_of(est.Options)}" for name, est in ESTIMATORS.items())
        + ")"
    )
    PRUNE_OPTION_HELP.help = (
        "KEY=VALUE, repeatable: a declared option of the criterion ("
        + "; ".join(
            f"{name}: {_options_of(f.declaration, tuple(f.fixed))}" for name, f in CRITERIA.items()
        )
        + "); --budget, --metric and --composite set the option of that name"
    )


DeviceOpt = Annotated[
    str, typer.Option(help="cpu, cuda, cuda:N, mps, or auto: the first accelerator, else cpu")
]
_RUN_HELP = {name: text for name, (_, _, text) in declared(ExecutorOptions).items()}
ExecutorOpt = Annotated[str, typer.Option(help=_RUN_HELP["executor"])]
WorkersOpt = Annotated[int, typer.Option(help=_RUN_HELP["workers"])]
RayAddressOpt = Annotated[str | None, typer.Option(help=_RUN_HELP["ray_address"])]
ThreadsOpt = Annotated[int | None, typer.Option(help=_RUN_HELP["threads"])]
CheckpointEveryOpt = Annotated[
    int, typer.Option(help="write the resume checkpoint every N evaluations (and each minute)")
]
CHECKPOINT = "checkpoint.json"  # suffix of the resume file next to the output


def _resuming(found) -> None:
    if found is not None and found.resumed:
        console.print(f"resuming from {found.path}")


def main() -> None:
    """Entry point: every error a user can cause is one line on stderr and exit code 2.

    The command runs outside click's own ``main``, so usage errors, Ctrl-C and the user
    errors below reach this handler as exceptions whatever typer, click or pydantic version
    is installed (some raise usage errors from pydantic, some vendor click).
    """
    _refresh_help()
    command = typer.main.get_command(app)
    try:
        with command.make_context("shapprune", sys.argv[1:]) as ctx:
            command.invoke(ctx)
    except KeyboardInterrupt:
        _fail("interrupted; files already complete are kept, none was left half-written", 130)
    except Exception as err:
        kinds = {cls.__name__ for cls in type(err).__mro__}
        if "Exit" in kinds and hasattr(err, "exit_code"):  # --help, or an explicit exit
            sys.exit(err.exit_code)
        if "Abort" in kinds:
            _fail("aborted", 130)
        if "NoArgsIsHelpError" in kinds:  # click >= 8.2: no arguments shows the help
            print(err.format_message())
            sys.exit(0)
        if "ClickException" in kinds:  # click's or typer's vendored usage errors
            _fail(err.format_message() if hasattr(err, "format_message") else str(err))
        if "ValidationError" in kinds and type(err).__module__.startswith("pydantic"):
            _fail(_pydantic_message(err))
        if isinstance(err, OSError) and err.strerror:  # the path and the reason
            where = f"{err.filename}: " if err.filename is not None else ""
            _fail(f"{where}{err.strerror}")
        if isinstance(err, USER_ERRORS + (OSError,)):
            _fail(str(err.args[0]) if err.args else type(err).__name__)
        raise
    sys.exit(0)


def _fail(message: str, code: int = 2) -> None:
    """``error: message`` as one line on stderr, then exit."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(code)


def _pydantic_message(err: Exception) -> str:
    try:
        first = err.errors()[0]
        return f"invalid value {first.get('input')!r}: {first.get('msg')}"
    except Exception:  # another pydantic version: its own text, made one line by _fail
        return str(err)


@contextmanager
def _evaluation_progress(label: str, total: int):
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
        say(f"{label}: {done:,}/{budget:,} evaluations{rate}{left}{f['doubt']}")

    return update


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@contextmanager
def _cell_progress(label: str):
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


def _write_json(out: Path, record: dict, force: bool) -> None:
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; choose another --out or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def _ranking_table(record: dict, show: int | None = None) -> Table:
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
    data: DataOpt = "mnist5k",
    layer: Annotated[str, typer.Option(help="module name, as in model.named_modules()")] = "conv2",
    method: Annotated[str, METHOD_HELP] = "permutation",
    option: Annotated[list[str] | None, RANK_OPTION_HELP] = None,
    budget: Annotated[int | None, typer.Option(help="coalition evaluations")] = None,
    seed: SeedOpt = 0,
    metric: Annotated[str, typer.Option(help="loss|accuracy|margin")] = "loss",
    per_class: PerClassOpt = 25,
    root: RootOpt = None,
    out: Annotated[Path | None, typer.Option(help="write the result as JSON here")] = None,
    force: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
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
    decl = get_estimator(method).Options
    options = parse_options(decl, option or [], f"method {method!r}")
    runner = executor_options(executor, workers, ray_address, threads)
    resume = out.with_name(f"{out.name}.{CHECKPOINT}") if out is not None else None
    identity = {"command": "rank", "model": model, "data": data, "layer": layer,
                "method": method, "options": options, "budget": budget, "seed": seed,
                "metric": metric, "per_class": per_class, "root": root}  # fmt: skip
    with evaluating(runner, resume, identity, checkpoint_every) as found:
        _resuming(found)
        record = rank_layer(
            model, data, layer, method, budget, seed, metric, per_class, root,
            _evaluation_progress, options=options, device=resolve_device(device),
        )  # fmt: skip
        if out is not None:
            _write_json(out, record, force)
    console.print(_ranking_table(record, show=10))
    console.print(
        f"{record['n_evals']} evaluations in {record['seconds']:.2f} s "
        f"({record['n_evals'] / max(record['seconds'], 1e-9):.0f}/s)"
    )
    if out is not None:
        console.print(f"wrote {out}")


@app.command()
def train(
    model: Annotated[str, typer.Option(help="zoo model name")] = "lenet5",
    data: DataOpt = "mnist5k",
    out: Annotated[Path, typer.Option(help="checkpoint prefix (.safetensors + .json)")] = Path(
        "checkpoints/model"
    ),
    epochs: Annotated[int | None, typer.Option(help="default: the model's recipe")] = None,
    lr: Annotated[float | None, typer.Option(help="default: the model's recipe")] = None,
    seed: SeedOpt = 0,
    root: RootOpt = None,
    force: Annotated[bool, typer.Option(help="replace an existing checkpoint")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Train a zoo model and save it as safetensors weights plus a JSON description."""
    from shapprune.pruning.checkpoint import save_checkpoint
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


DEFAULT_PRUNE_CRITERION = "lrp"  # what won the head-to-head (benchmarks/vs_torch_pruning.py)
DEFAULT_REFINE = 300


def _cost_choice(text: str, global_: bool | None, target) -> str | None:
    """``--cost macs|params|none|auto`` as ``prune_model`` takes it (auto: the target's
    kind for a global plan, none per layer or for a channels target; ``global_`` None:
    the scope is chosen by ``prune_model``, the cost serves its global candidate)."""
    if text not in ("macs", "params", "none", "auto"):
        raise ValueError(f"--cost takes macs, params, none or auto; got {text!r}")
    if text == "auto":
        return target.kind if global_ is not False and target.kind in ("macs", "params") else None
    return None if text == "none" else text


def _compensate_choice(text: str | None) -> bool | str | None:
    """``--compensate yes|no|auto`` as ``prune_model`` takes it."""
    choices = {None: None, "yes": True, "no": False, "auto": "auto"}
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
    data: DataOpt = "mnist5k",
    criterion: Annotated[str, CRITERION_HELP] = DEFAULT_PRUNE_CRITERION,
    option: Annotated[list[str] | None, PRUNE_OPTION_HELP] = None,
    target: Annotated[str, typer.Option(help="channels=F, params=F or macs=F")] = "macs=0.5",
    layers: Annotated[str | None, typer.Option(help="comma-separated; default: all")] = None,
    global_: Annotated[
        bool | None,
        typer.Option(
            "--global/--per-layer",
            help="rank units across layers, or cut each alike; default: both are built and "
            "the one with the lower loss on the reference examples is kept",
        ),
    ] = None,
    normalisation: Annotated[
        str | None,
        typer.Option(help="per-layer scores for --global; default the criterion's (l1, or none)"),
    ] = None,
    cost: Annotated[
        str,
        typer.Option(
            help="with --global: rank by score per macs|params saved, or none; auto: the "
            "target's kind (macs or params)"
        ),
    ] = "auto",
    refine: Annotated[
        int,
        typer.Option(
            help="evaluations of whole removal sets on the reference examples spent "
            "swapping units within layers at the target (0: none)"
        ),
    ] = DEFAULT_REFINE,
    compensate: Annotated[
        str | None,
        typer.Option(
            help="removed units leave their mean as a bias: yes|no|auto (the better on the "
            "reference examples); default auto"
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="iterative pruning in this many steps")] = 1,
    mode: Annotated[str, typer.Option(help="remove (physically) or mask")] = "remove",
    budget: Annotated[int | None, typer.Option(help="option 'budget' (Shapley)")] = None,
    metric: Annotated[str | None, typer.Option(help="option 'metric' (Shapley)")] = None,
    composite: Annotated[str | None, typer.Option(help="option 'composite' (LRP)")] = None,
    per_class: PerClassOpt = 25,
    finetune_epochs: Annotated[int, typer.Option(help="0 = the low-data regime")] = 0,
    finetune_lr: Annotated[float, typer.Option(help="fine-tuning learning rate")] = 1e-3,
    seed: SeedOpt = 0,
    root: RootOpt = None,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("pruned"),
    force: Annotated[bool, typer.Option(help="write into a non-empty --out folder")] = False,
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
    from shapprune.pruning.checkpoint import save_pruned
    from shapprune.pruning.compress import prune_model
    from shapprune.pruning.plan import Target
    from shapprune.zoo.data import load_dataset

    parsed = Target.parse(target)
    where = resolve_device(device)
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
                "cost": cost, "compensate": compensate, "refine": refine}  # fmt: skip
    net, meta = load_model(model, data, root=root)
    net = net.to(where)
    splits = load_dataset(data, root=root, seed=0)
    chosen = [s.strip() for s in layers.split(",") if s.strip()] if layers else None
    with (
        evaluating(runner, resume, identity, checkpoint_every) as found,
        console.status("pruning") as status,
        using_progress(status_progress(status.update, "scoring")),
    ):
        _resuming(found)
        pruned, summary = prune_model(
            net,
            splits,
            scorer,
            parsed,
            layers=chosen,
            global_="auto" if global_ is None else global_,
            steps=steps,
            normalisation=normalisation,
            mode=mode,
            per_class=per_class,
            seed=seed,
            finetune_epochs=finetune_epochs,
            finetune_lr=finetune_lr,
            compensate=fill,
            cost=_cost_choice(cost, global_, parsed),
            refine=refine,
            report=status.update,
        )
    out.mkdir(parents=True, exist_ok=True)
    base = {"model": meta["model"], "config": meta["config"]}
    save_pruned(
        out / "model",
        pruned,
        base=base,
        input_shape=tuple(splits.val.x.shape[1:]),
        metrics=summary["after"],
        dataset=splits.name,
        overwrite=force,
    )
    summary["source_model"] = model
    _write_json(out / "summary.json", summary, force=True)
    console.print(_metrics_table(summary))
    removed = ", ".join(f"{k}: {v}" for k, v in summary["removed"].items())
    console.print(
        f"removed units: {removed}\nwrote {out}/model.safetensors, model.json, summary.json"
    )


@contextmanager
def _trial_progress(label: str, total: int):
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


@app.command("tune-lrp")
def tune_lrp_command(
    model: ModelOpt = "vgg",
    data: DataOpt = "mnist5k",
    units: Annotated[str, typer.Option(help="filters, neurons or heads")] = "filters",
    objective: Annotated[
        str, typer.Option(help="auc (accuracy vs pruning rate) or shapley (Spearman)")
    ] = "auc",
    trials: Annotated[int, typer.Option(min=1, help="complete trials the study should hold")] = 30,
    sampler: Annotated[str, typer.Option(help="tpe or gp (Gaussian process)")] = "tpe",
    per_class: Annotated[int, typer.Option(min=1, help="reference examples per class")] = 10,
    normalisation: Annotated[str, typer.Option(help="of scores across layers")] = "l1",
    shapley_budget: Annotated[
        int | None, typer.Option(help="coalitions for the Shapley values (objective shapley)")
    ] = None,
    seed: SeedOpt = 0,
    root: RootOpt = None,
    out: Annotated[Path, typer.Option(help="composite JSON; the study resumes from OUT.db")] = Path(
        "composite.json"
    ),
    force: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
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
    from shapprune.zoo.data import load_dataset, reference_set

    check_tune_options(units, objective, trials, sampler, normalisation)
    where = resolve_device(device)
    check_output(out, force=force)
    storage = out.with_name(out.name + ".db")
    net, _ = load_model(model, data, root=root)
    net = net.to(where)
    splits = load_dataset(data, root=root, seed=0)
    with _trial_progress("tune-lrp", trials) as update:
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


@app.command()
def compare(
    config: Annotated[Path, typer.Option(help="experiment YAML (see examples/)")],
    out: Annotated[Path, typer.Option(help="output folder (rerun to resume)")] = Path(
        "runs/compare"
    ),
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
        _cell_progress("compare") as update,
    ):
        results = run_compare(experiment, out, progress=update, device=where)
    report = write_outputs(experiment, results, out)
    console.print(f"{results['cells_computed']} cells computed; wrote {report} and plots in {out}")


@app.command()
def oracle(
    model: ModelOpt = "tinycnn",
    data: DataOpt = "mnist5k",
    layer: Annotated[str, typer.Option(help="module name")] = "conv1",
    ks: Annotated[str, typer.Option(help="set sizes, comma-separated")] = "1,2,3,4,5",
    per_class: PerClassOpt = 25,
    max_subsets: Annotated[int, typer.Option(help="beyond this, beam search")] = 20_000,
    beam_width: Annotated[int, typer.Option(help="beam width")] = 8,
    root: RootOpt = None,
    out: Annotated[Path, typer.Option(help="JSON file")] = Path("oracle.json"),
    force: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Oracle sets of a layer: for each k, the k units whose joint removal hurts least."""
    from shapprune.evaluation.oracle import oracle_rank, oracle_sets
    from shapprune.game.pruning_game import PruningGame
    from shapprune.zoo.data import load_dataset, reference_set

    where = resolve_device(device)
    try:
        sizes = [int(k) for k in ks.split(",") if k.strip()]
    except ValueError:
        raise ValueError(f"--ks takes set sizes as comma-separated integers, got {ks!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--ks takes set sizes >= 1, got {ks!r}")
    check_output(out, force=force)
    net, _ = load_model(model, data, root=root)
    net = net.to(where)
    ref = reference_set(load_dataset(data, root=root).val, per_class=per_class, seed=0)
    game = PruningGame(net, layer, (ref.x, ref.y))
    found = oracle_sets(game, sizes, max_subsets=max_subsets, beam_width=beam_width)
    record = {"model": model, "data": data, "layer": layer, **found.to_dict()}
    record["rank"] = oracle_rank(found, game.n_players).tolist()
    _write_json(out, record, force)
    for k in sizes:
        how = "exhaustive" if found.exhaustive[k] else "beam search"
        console.print(f"k={k}: remove {found.sets[k]} -> value {found.values[k]:.5f} ({how})")
    console.print(f"{found.n_evals} evaluations; wrote {out}")


@app.command()
def demo(
    budget: Annotated[int, typer.Option(help="coalition evaluations for the ranking")] = 5000,
    seed: SeedOpt = 0,
    out: Annotated[Path, typer.Option(help="report folder (rerun to resume)")] = Path(
        "shapprune-demo"
    ),
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
        progress=_evaluation_progress, device=where,
    )  # fmt: skip
    acc = record["model_metrics"].get("test_accuracy")
    console.print(
        f"LeNet-5 on MNIST 5k: test accuracy {acc:.4f}; game on "
        f"{record['reference_examples']} validation images, metric = -cross-entropy"
    )
    console.print(_ranking_table(record, show=5))
    console.print(f"{record['n_evals']} coalition evaluations in {record['seconds']:.2f} s")

    experiment = parse_config(DEMO_EXPERIMENT, "demo")
    check_resumable(experiment, out)
    with _cell_progress("comparing criteria") as update:
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
