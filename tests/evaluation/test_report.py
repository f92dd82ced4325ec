"""The report's numbers by hand, from results of a known shape."""

import csv

import numpy as np
import pytest

from shapprune.evaluation.config import CriterionSpec, ExperimentConfig
from shapprune.evaluation.experiments import mean_accuracy, robustness_table
from shapprune.evaluation.report import summarise, write_outputs

CONFIG = ExperimentConfig(
    criteria=[CriterionSpec("a"), CriterionSpec("b")], seeds=[0, 1], rates=[0.0, 0.5]
)
CURVES = {("a", 0): [0.0, 1.0, 2.0], ("a", 1): [0.0, 2.0, 4.0], ("b", 0): [0.0, 0.5, 1.0],
          ("b", 1): [0.0, 0.5, 1.0]}  # fmt: skip
ACCURACY = {("a", 0): [0.9, 0.5], ("a", 1): [0.9, 0.7], ("b", 0): [0.9, 0.3], ("b", 1): [0.9, 0.3]}
SCORES = {"a": [0.1, 0.5, 0.2], "b": [0.9, 0.1, 0.5]}  # lowest first: a 0, 2, 1; b 1, 2, 0
RESULTS = {
    "layers": ["conv"],
    "robustness": {f"robustness/{c}/conv/{s}": {"curve": v} for (c, s), v in CURVES.items()},
    "rates": {
        f"rates/{c}/{s}": {"rates": [0.0, 0.5], "accuracy": v} for (c, s), v in ACCURACY.items()
    },
    "scores": {f"scores/{c}/conv/{s}": {"scores": SCORES[c]} for c, s in CURVES},
    "oracle": {
        "conv": {
            "sets": {"1": [0], "2": [0, 1]},
            "values": {"1": -0.1, "2": -0.3},
            "exhaustive": {"1": True, "2": True},
            "rank": [0, 1, 2],
        }
    },
}


def test_robustness_by_hand():
    # one normaliser (4, the largest increase) for every criterion and seed; x = 0, 1/3, 2/3
    out = summarise(CONFIG, RESULTS)["robustness"]["conv"]
    assert out["a"] == pytest.approx((0.375, np.std([0.25, 0.5], ddof=1)))
    assert out["b"] == pytest.approx((0.125, 0.0))
    table = robustness_table({k: np.asarray(v) for k, v in CURVES.items()})
    assert out["a"][0] == pytest.approx((table["a", 0] + table["a", 1]) / 2)


def test_rates_by_hand():
    out = summarise(CONFIG, RESULTS)["rates"]
    assert out["a"]["mean"] == pytest.approx([0.9, 0.6])
    assert out["a"]["std"] == pytest.approx([0.0, np.std([0.5, 0.7], ddof=1)])
    assert out["a"]["auc"] == pytest.approx((0.75, np.std([0.7, 0.8], ddof=1)))
    assert out["b"]["auc"] == pytest.approx((mean_accuracy(ACCURACY["b", 0]), 0.0))


def test_overlaps_by_hand():
    out = summarise(CONFIG, RESULTS)["overlap"]["conv"]
    assert out["a"] == {1: (1.0, 0.0), 2: (0.5, 0.0)}  # {0} of {0}; {0, 2} of {0, 1}
    assert out["b"] == {1: (0.0, 0.0), 2: (0.5, 0.0)}  # {1} of {0}; {1, 2} of {0, 1}


def test_written_report_and_csv_carry_the_numbers(tmp_path):
    report = write_outputs(CONFIG, RESULTS, tmp_path).read_text()
    assert "| a | 0.375 ± 0.177 |" in report and "| b | 0.125 |" in report
    assert "| a | 0.750 ± 0.071 |" in report
    assert "| a | 1.000 | 0.500 |" in report
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["experiment", "layer", "criterion", "x", "mean", "std"]
    assert ["oracle_overlap", "conv", "b", "2", "0.5", "0.0"] in rows
    assert (tmp_path / "robustness_conv.png").stat().st_size > 0
