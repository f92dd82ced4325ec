"""The typer application, the options several commands share, and the entry point that
turns every error a user can cause into one line and exit code 2."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shapprune.criteria.registry import CRITERIA
from shapprune.estimators.executors import ExecutorOptions
from shapprune.estimators.registry import ESTIMATORS
from shapprune.options import declared

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Structured pruning by Shapley values: rank a layer's units by their contribution.",
)
console = Console(stderr=True)
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotImplementedError, TypeError)


# --help groups each command's options into these panels, in the order a user decides them
MODEL_PANEL = "Model"
DATA_PANEL = "Data"
TARGET_PANEL = "Target and plan"
CRITERION_PANEL = "Criterion"
OUTPUT_PANEL = "Output"
RUN_PANEL = "Running (device, workers, resume)"

# Options shared by several commands
# --model's help lists the registered sources: written by _refresh_help() too
MODEL_HELP = typer.Option(help="a model source", rich_help_panel=MODEL_PANEL)
ModelOpt = Annotated[str, MODEL_HELP]
ModelArgOpt = Annotated[
    list[str] | None,
    typer.Option(
        rich_help_panel=MODEL_PANEL,
        help="KEY=VALUE, repeatable: an argument of the model's builder (num_classes=10)",
    ),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        rich_help_panel=MODEL_PANEL,
        help="weights to load: .safetensors, or a state_dict in .pt/.pth/.bin",
    ),
]
TrustPickleOpt = Annotated[
    bool,
    typer.Option(
        rich_help_panel=MODEL_PANEL,
        help="allow unpickling a whole module (torch.save(model)): only files you trust",
    ),
]
# --data's help lists the registered data sources: written by _refresh_help() too
DATA_HELP = typer.Option(help="a data source", rich_help_panel=DATA_PANEL)
DataOpt = Annotated[str, DATA_HELP]
SeedOpt = Annotated[int, typer.Option(help="random seed", rich_help_panel=DATA_PANEL)]
RootOpt = Annotated[
    str | None, typer.Option(rich_help_panel=DATA_PANEL, help="folder holding local datasets")
]
PerClassOpt = Annotated[
    int, typer.Option(rich_help_panel=DATA_PANEL, min=1, help="reference examples per class")
]
# How an image folder becomes the model's inputs, and how data is streamed: the options of
# every command that reads data (load_data's keywords, gathered by data_options)
ImageSizeOpt = Annotated[
    int | None,
    typer.Option(min=1, rich_help_panel=DATA_PANEL,
                 help="image folders: the input size (square) the model takes; default the "
                      "model's own (timm, hf:, a pruned checkpoint)"),
]  # fmt: skip
ResizeOpt = Annotated[
    int | None,
    typer.Option(min=1, rich_help_panel=DATA_PANEL,
                 help="image folders: resize the shorter side to this, then centre-crop "
                      "--image-size (default: resize straight to --image-size)"),
]  # fmt: skip
MeanOpt = Annotated[
    str | None,
    typer.Option(rich_help_panel=DATA_PANEL,
                 help="image folders: per-channel mean of the model's normalisation, "
                      "comma-separated (0.485,0.456,0.406)"),
]  # fmt: skip
StdOpt = Annotated[
    str | None,
    typer.Option(rich_help_panel=DATA_PANEL,
                 help="image folders: per-channel std of the model's normalisation, "
                      "comma-separated (0.229,0.224,0.225)"),
]  # fmt: skip
ClassesOpt = Annotated[
    Path | None,
    typer.Option(rich_help_panel=DATA_PANEL,
                 help="image folders: a file of class names, one a line, in the model's output "
                      "order (default: the model's labels, else the folder names sorted)"),
]  # fmt: skip
BatchSizeOpt = Annotated[
    int | None,
    typer.Option(min=1, rich_help_panel=DATA_PANEL,
                 help="examples per batch when measuring streamed data (default 64)"),
]  # fmt: skip
LoaderWorkersOpt = Annotated[
    int,
    typer.Option(min=0, rich_help_panel=DATA_PANEL,
                 help="DataLoader processes decoding images (0: in this process); not "
                      "--workers, which runs coalitions"),
]  # fmt: skip
# Help that lists the registered estimators and criteria: written by _refresh_help() when the
# command line runs, so that estimators and criteria registered after import show up.
METHOD_HELP = typer.Option(help="a registered estimator", rich_help_panel=CRITERION_PANEL)
CRITERION_HELP = typer.Option(help="a registered criterion", rich_help_panel=CRITERION_PANEL)
RANK_OPTION_HELP = typer.Option(
    "--option", help="KEY=VALUE, a declared option of the method", rich_help_panel=CRITERION_PANEL
)
PRUNE_OPTION_HELP = typer.Option(
    "--option",
    help="KEY=VALUE, a declared option of the criterion",
    rich_help_panel=CRITERION_PANEL,
)


def _options_of(decl: type, fixed: tuple = ()) -> str:
    names = [n for n in declared(decl) if n not in fixed]
    return ", ".join(names) if names else "none"


def _refresh_help() -> None:
    """Help texts from the registries and the declarations, as they are now."""
    from shapprune.sources.data import describe_data_sources
    from shapprune.sources.models import describe_sources

    MODEL_HELP.help = describe_sources()
    DATA_HELP.help = describe_data_sources()
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
    str,
    typer.Option(
        rich_help_panel=RUN_PANEL,
        help="cpu, cuda, cuda:N, mps, or auto: the first accelerator, else cpu",
    ),
]
_RUN_HELP = {name: text for name, (_, _, text) in declared(ExecutorOptions).items()}
ExecutorOpt = Annotated[str, typer.Option(rich_help_panel=RUN_PANEL, help=_RUN_HELP["executor"])]
WorkersOpt = Annotated[int, typer.Option(rich_help_panel=RUN_PANEL, help=_RUN_HELP["workers"])]
RayAddressOpt = Annotated[
    str | None, typer.Option(rich_help_panel=RUN_PANEL, help=_RUN_HELP["ray_address"])
]
ThreadsOpt = Annotated[
    int | None, typer.Option(rich_help_panel=RUN_PANEL, help=_RUN_HELP["threads"])
]
CheckpointEveryOpt = Annotated[
    int,
    typer.Option(
        rich_help_panel=RUN_PANEL,
        help="write the resume checkpoint every N evaluations (and each minute)",
    ),
]
CHECKPOINT = "checkpoint.json"  # suffix of the resume file next to the output


def model_source(model_arg, weights, trust_pickle: bool) -> dict:
    """The keywords of ``load_model`` that the source options give."""
    from shapprune.sources.models import parse_model_args

    return {
        **parse_model_args(model_arg),
        "weights": None if weights is None else str(weights),
        "trust_pickle": trust_pickle,
    }


def data_options(
    image_size: int | None = None,
    resize: int | None = None,
    mean: str | None = None,
    std: str | None = None,
    classes: Path | None = None,
    batch_size: int | None = None,
    loader_workers: int = 0,
) -> dict:
    """The keywords of ``load_data`` that the data options give."""
    from shapprune.sources.preprocessing import parse_floats

    explicit = {
        "image_size": image_size,
        "resize": resize,
        "mean": parse_floats(mean, "--mean"),
        "std": parse_floats(std, "--std"),
    }
    return {
        "preprocessing": {k: v for k, v in explicit.items() if v is not None},
        "classes": None if classes is None else str(classes),
        "batch_size": batch_size,
        "workers": loader_workers,
    }


def say_resuming(found) -> None:
    if found is not None and found.resumed:
        console.print(f"resuming from {found.path}")


_PACKAGE = str(Path(__file__).resolve().parents[1])
_show_warning = warnings.showwarning


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """shapprune's own warnings (a skipped file, an option that does not apply) as one
    ``warning:`` line, without the source line Python shows; others as Python shows them."""
    if str(filename).startswith(_PACKAGE):
        print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)
    else:
        _show_warning(message, category, filename, lineno, file, line)


def main() -> None:
    """Entry point: every error a user can cause is one line on stderr and exit code 2.

    The command runs outside click's own ``main``, so usage errors, Ctrl-C and the user
    errors below reach this handler as exceptions whatever typer, click or pydantic version
    is installed (some raise usage errors from pydantic, some vendor click).
    """
    warnings.showwarning = _one_line_warning
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


def write_json(out: Path, record: dict, force: bool) -> None:
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; choose another --out or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
