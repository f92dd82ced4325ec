"""Generic figures for the experiments: lines with error bands, and bars with error bars.

Matplotlib runs on the Agg backend (files only, never a window); every figure is saved as
a PNG and closed. The callers build the series.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 120

Series = tuple[Sequence[float], Sequence[float], Sequence[float] | None]


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


def line_plot(
    path: str | Path,
    series: Mapping[str, Series],
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
) -> Path:
    """One line per name from ``(x, mean, std or None)``, a shaded ±std band where given."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (x, mean, std) in series.items():
        x, mean = np.asarray(x, dtype=float), np.asarray(mean, dtype=float)
        if x.shape != mean.shape:
            raise ValueError(f"series {name!r}: x {x.shape} and mean {mean.shape} differ")
        (line,) = ax.plot(x, mean, marker="o", markersize=3, label=name)
        if std is not None:
            std = np.asarray(std, dtype=float)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, which="both", alpha=0.3)
    if series:
        ax.legend()
    return _save(fig, path)


def bar_plot(
    path: str | Path,
    values: Mapping[str, tuple[float, float | None]],
    ylabel: str,
    title: str,
) -> Path:
    """One bar per name from ``(mean, std or None)``, with ±std error bars where given."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(values) + 2), 4))
    names = list(values)
    means = [float(values[n][0]) for n in names]
    errs = [float(values[n][1]) if values[n][1] is not None else 0.0 for n in names]
    ax.bar(names, means, yerr=errs, capsize=4, color="C0", alpha=0.8)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(True, axis="y", alpha=0.3)
    if len(names) > 4:
        ax.tick_params(axis="x", labelrotation=30)
    return _save(fig, path)
