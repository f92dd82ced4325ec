"""``shapprune export``: a pruned model as a file that runs without shapprune."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from shapprune.commands.app import (
    DATA_PANEL,
    OUTPUT_PANEL,
    ClassesOpt,
    ImageSizeOpt,
    MeanOpt,
    ResizeOpt,
    RootOpt,
    StdOpt,
    TrustPickleOpt,
    app,
    console,
    data_options,
)
from shapprune.pruning.export import (
    FORMATS,
    SUFFIXES,
    check_export_path,
    export_line,
    export_model,
    parse_formats,
)


@app.command()
def export(
    folder: Annotated[Path, typer.Argument(help="what prune wrote (its --out folder)")],
    format: Annotated[
        str,
        typer.Option(
            "--format", rich_help_panel=OUTPUT_PANEL, help=f"one of: {', '.join(FORMATS)}"
        ),
    ] = "exported-program",
    out: Annotated[
        Path | None,
        typer.Option(rich_help_panel=OUTPUT_PANEL, help="the file (hf: the folder) to write"),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            rich_help_panel=DATA_PANEL,
            help="reference examples from this data source; default: the one prune used",
        ),
    ] = None,
    image_size: ImageSizeOpt = None,
    resize: ResizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    classes: ClassesOpt = None,
    examples: Annotated[
        int, typer.Option(rich_help_panel=DATA_PANEL, min=1, help="reference examples to check on")
    ] = 8,
    root: RootOpt = None,
    force: Annotated[
        bool,
        typer.Option(
            rich_help_panel=OUTPUT_PANEL,
            help="replace an existing --out file (hf: write into a folder with files)",
        ),
    ] = False,
    trust_pickle: TrustPickleOpt = False,
) -> None:
    """Export a pruned model (exported program, ONNX, TorchScript, or a Hugging Face folder
    for an hf: model), checked against the pruned module on reference examples."""
    from shapprune.data import examples as first_examples
    from shapprune.sources.data import load_data
    from shapprune.sources.models import load_model

    (fmt,) = parse_formats(format) or [None]
    if fmt is None or "," in format:
        raise ValueError(f"--format takes one of: {', '.join(FORMATS)}; got {format!r}")
    if not (folder / "model.json").is_file():
        raise FileNotFoundError(f"{folder / 'model.json'} not found: give the folder prune wrote")
    target = out if out is not None else folder / f"model{SUFFIXES[fmt]}"
    if fmt == "exported-program" and target.suffix != ".pt2":
        raise ValueError(f"an exported program's file ends in .pt2 (torch.export.load): {target}")
    check_export_path(target, fmt, force)
    model, meta = load_model(str(folder), trust_pickle=trust_pickle)
    name = data or meta.get("dataset")
    if name:
        loading = data_options(image_size, resize, mean, std, classes)
        splits = load_data(name, model=model, meta=meta, root=root, seed=0, **loading)
        x = first_examples(splits.val, examples)
    else:
        shape = meta.get("pruning", {}).get("input_shape")
        if not shape:
            raise ValueError(f"{folder} records no dataset and no input shape; pass --data")
        g = torch.Generator().manual_seed(0)
        x = torch.randn(examples, *shape, generator=g)
        console.print("note: no dataset recorded: checked on random inputs of the model's shape")
    console.print(export_line(export_model(model, x, fmt, target, force=True)))
