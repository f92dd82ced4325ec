"""Tests for the generic plots: they write PNG files and never open a window."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import shapprune.evaluation.plots as plots
from shapprune.evaluation.plots import bar_plot, line_plot

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG


def test_plots_use_agg_even_when_the_environment_asks_for_a_window(tmp_path):
    # a fresh process told to use an interactive backend, with no display to open it on
    code = (
        "import matplotlib, sys; from shapprune.evaluation.plots import bar_plot; "
        f"bar_plot({str(tmp_path / 'b.png')!r}, {{'a': (1.0, None)}}, 'y', 't'); "
        "print(matplotlib.get_backend().lower())"
    )
    src = Path(plots.__file__).resolve().parents[2]
    env = {"MPLBACKEND": "TkAgg", "PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}
    env["MPLCONFIGDIR"] = str(tmp_path / "mpl")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["agg"] and _is_png(tmp_path / "b.png")


def test_line_plot_with_bands_and_log_axis(tmp_path):
    x = np.array([10, 100, 1000])
    series = {
        "permutation": (x, np.array([0.5, 0.8, 0.95]), np.array([0.1, 0.05, 0.01])),
        "loo": (x, np.array([0.3, 0.3, 0.3]), None),
    }
    out = line_plot(tmp_path / "sub" / "lines.png", series, "budget", "spearman", "t", logx=True)
    assert out == tmp_path / "sub" / "lines.png" and _is_png(out)
    plain = line_plot(tmp_path / "plain.png", series, "budget", "spearman", "t")
    assert _is_png(plain)


def test_line_plot_rejects_mismatched_series(tmp_path):
    with pytest.raises(ValueError, match="differ"):
        line_plot(tmp_path / "bad.png", {"a": ([1, 2], [1, 2, 3], None)}, "x", "y", "t")


def test_bar_plot(tmp_path):
    values = {"shapley": (0.35, 0.01), "random": (0.48, None), "taylor": (0.47, 0.02)}
    out = bar_plot(tmp_path / "bars.png", values, "AUC", "robustness")
    assert _is_png(out)
