"""The time budget: durations read from text, the clock and its stages, how many
refinement evaluations fit, and prune keeping a short budget."""

from __future__ import annotations

import json
import time

import pytest
from helpers import USER_MODEL_CODE, run_cli

from shapprune.pruning.budget import (
    MEASURE_MARGIN,
    REFINE_MACS,
    SCORE_PLAN_PASSES,
    Clock,
    measure_seconds,
    parse_duration,
    reference_per_class,
    refine_evaluations,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1h", 3600.0), ("1m30s", 90.0),
     ("2.5m", 150.0), (" 45 s ", 45.0), (12, 12.0)],
)  # fmt: skip
def test_durations_read_as_seconds(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "10x", "1m30", "-5s", "0", "m", "1.2.3s"])
def test_a_bad_duration_is_one_line_naming_the_forms(text):
    with pytest.raises(ValueError) as err:
        parse_duration(text)
    assert "\n" not in str(err.value) and (
        "90s, 10m" in str(err.value) or "positive" in str(err.value)
    )


def test_the_clock_adds_up_its_stages_and_counts_down_its_limit():
    clock = Clock(limit=100.0, start=time.perf_counter() - 40)
    assert 59 < clock.left() <= 60
    for _ in range(2):
        with clock.stage("refining"):
            time.sleep(0.01)
    assert clock.stages["refining"] >= 0.02 and list(clock.stages) == ["refining"]
    assert Clock(limit=1.0, start=time.perf_counter() - 5).left() == 0
    assert Clock().left() == float("inf")


def test_without_a_limit_refinement_is_held_to_macs_the_same_on_every_machine():
    """The zoo's largest model (ResNet-20, 31 MMACs, 250 examples) keeps its 300; a
    ResNet-50 at 224 px (4.1 GMACs) with 60 examples gets about 10; a pass too large for
    two evaluations gets none."""
    clock = Clock()
    assert refine_evaluations(300, clock, pass_macs=31.5e6 * 250)[0] == 300
    n, why = refine_evaluations(300, clock, pass_macs=4.12e9 * 60)
    assert n == int(REFINE_MACS // (4.12e9 * 60)) == 10 and "MACs" in why
    assert refine_evaluations(300, clock, pass_macs=REFINE_MACS)[0] == 0
    assert refine_evaluations(0, clock, pass_macs=1.0) == (0, "no refinement asked")


def test_with_a_limit_refinement_gets_the_time_left_less_measuring():
    clock = Clock(limit=100.0, start=time.perf_counter() - 40)  # 60 s left
    n, why = refine_evaluations(1000, clock, pass_macs=1.0, pass_s=0.5, measure_passes=20)
    expected = int((60 - MEASURE_MARGIN * 20 * 0.5) // 0.5)  # 90 evaluations, give or take
    assert expected - 1 <= n <= expected and "time budget" in why
    assert refine_evaluations(50, clock, pass_macs=1.0, pass_s=0.5)[0] == 50  # asked for less
    late = Clock(limit=10.0, start=time.perf_counter() - 11)
    assert refine_evaluations(1000, late, pass_macs=1.0, pass_s=0.5)[0] == 0
    with pytest.raises(ValueError, match="seconds of one reference pass"):
        refine_evaluations(10, clock, pass_macs=1.0)


def test_a_short_budget_draws_fewer_reference_examples():
    """Scoring and planning cost about SCORE_PLAN_PASSES passes of the reference examples:
    where the time left after measuring cannot hold them, fewer per class, at least one."""
    assert reference_per_class(25, 10, Clock(), example_s=5.0, measure_s=1e6) == (25, "")
    clock = Clock(limit=100.0, start=time.perf_counter() - 40)  # 60 s left
    measure_s = measure_seconds(test_examples=100, example_s=0.02)  # the batch of 64: slow
    assert measure_s == pytest.approx(1.5 * 100 * 0.02 + 2 * 0.46 + 1.5 * (2.0 + 64 * 0.02))
    fast = measure_seconds(test_examples=100, example_s=1e-5)  # every pass repeated
    assert fast == pytest.approx(1.5 * 100 * 1e-5 + 2 * 23e-5 + 1.5 * 13 * 64e-5)
    left = 60 - MEASURE_MARGIN * measure_s
    fits = int(left // (SCORE_PLAN_PASSES * 0.05 * 10))
    n, why = reference_per_class(25, 10, clock, example_s=0.05, measure_s=measure_s)
    assert fits - 1 <= n <= fits < 25 and "instead of 25" in why and "\n" not in why
    assert reference_per_class(3, 10, clock, example_s=0.05, measure_s=measure_s) == (3, "")
    n, why = reference_per_class(25, 10, clock, example_s=10.0, measure_s=measure_s)
    assert n == 1 and "too short" in why


def test_prune_keeps_a_short_budget_and_records_its_stages(tmp_path, monkeypatch, capsys):
    """A refinement asked for far more than fits is allowed only what the budget leaves, and
    the whole command (loading and measuring included) ends near its budget (a generous
    bound here: the figures belong to the benchmark; the refinement stopping at its
    deadline is tested in tests/estimators/test_refine.py)."""
    (tmp_path / "user_net.py").write_text(USER_MODEL_CODE)
    monkeypatch.setenv("SHAPPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    code, said, err = run_cli(
        monkeypatch, capsys, "prune", "--model", f"{tmp_path}/user_net.py:Net",
        "--data", "mnist5k", "--criterion", "weight-l1", "--target", "channels=0.5",
        "--per-layer", "--compensate", "no", "--refine", "1000000", "--time-budget", "6s",
        "--device", "cpu", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    refinement = summary["plans"][0]["refinement"]
    assert 2 <= refinement["evaluations_allowed"] < 1_000_000
    assert refinement["sets_evaluated"] <= refinement["evaluations_allowed"]
    assert summary["time_budget"] == 6.0 and summary["seconds"] < 2 * 6.0
    assert {"loading", "scoring", "planning", "refining", "measuring"} <= set(summary["stages"])
    assert "of a 6 s budget" in err, err
