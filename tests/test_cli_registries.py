"""The command line reaches estimators and criteria registered from test code alone, with
their declared options parsed from --option KEY=VALUE."""

import json

import pytest
from helpers import run_cli
from toys import register_toys

from shapprune.sources.checkpoint import load_checkpoint, save_checkpoint
from shapprune.zoo.models import build_model


@pytest.fixture
def checkpoint(tmp_path, registries):
    """An (untrained) tinycnn checkpoint, with the toys registered for the test."""
    register_toys()
    save_checkpoint(
        tmp_path / "base", build_model("tinycnn", seed=0), name="tinycnn", config={}, metrics={}
    )
    return str(tmp_path / "base.json")


def test_rank_with_a_registered_estimator_and_its_option(checkpoint, tmp_path, monkeypatch, capsys):
    base = ["rank", "--model", checkpoint, "--layer", "conv1", "--per-class", "2"]
    toy, loo = tmp_path / "toy.json", tmp_path / "loo.json"
    code, _, err = run_cli(
        monkeypatch, capsys, *base, "--method", "toyloo", "--option", "scale=2.5", "--out", str(toy)
    )
    assert code == 0, err
    code, _, err = run_cli(monkeypatch, capsys, *base, "--method", "loo", "--out", str(loo))
    assert code == 0, err
    toy_record, loo_record = json.loads(toy.read_text()), json.loads(loo.read_text())
    assert toy_record["method"] == "toyloo" and toy_record["options"] == {"scale": 2.5}
    assert toy_record["values"] == pytest.approx([2.5 * v for v in loo_record["values"]])
    assert toy_record["n_evals"] == 9  # n + 1 for 8 filters


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            ["--method", "toyloo", "--option", "scale=big"],
            "option 'scale' must be float, got 'big'",
        ),
        (["--method", "toyloo", "--option", "scal=2"], "has no option 'scal'; its options: scale"),
        (["--method", "toyloo", "--option", "scale"], "option 'scale' must read key=value"),
        (["--method", "permutation", "--option", "patience=x"], "option 'patience' must be int"),
        (["--method", "magic"], "unknown method 'magic'; choose one of: exact, "),
    ],
)
def test_rank_option_errors_are_one_line(checkpoint, monkeypatch, capsys, args, needle):
    code, _, err = run_cli(monkeypatch, capsys, "rank", "--model", checkpoint, *args)
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_prune_with_a_registered_criterion(checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pruned"
    args = ["prune", "--model", checkpoint, "--layers", "conv1", "--target", "channels=0.5"]
    args += ["--refine", "0"]
    code, _, err = run_cli(
        monkeypatch, capsys, *args, "--criterion", "toy-index", "--option", "factor=2",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["criterion"] == "toy-index"
    model, _ = load_checkpoint(out / "model")
    assert model.conv1.out_channels == 4
    # the toy scores unit i as 2 i: the units kept are the last four, the scores as declared
    assert summary["plans"][0]["scores"]["conv1"] == [2.0 * i for i in range(8)]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--criterion", "toy-index", "--budget", "5"], "'toy-index' has no option 'budget'"),
        (["--criterion", "toy-index", "--option", "factor=x"], "option 'factor' must be float"),
        (["--criterion", "weight-l1", "--metric", "loss"], "'weight-l1' has no option 'metric'"),
        (["--criterion", "shapley-toyloo", "--option", "scale=-1"], "scale must be > 0"),
        (["--criterion", "lrp", "--composite", "x"], "unknown LRP composite 'x'"),
    ],
)
def test_prune_option_errors_are_one_line(checkpoint, tmp_path, monkeypatch, capsys, args, needle):
    base = ["prune", "--model", checkpoint, "--out", str(tmp_path / "o")]
    code, _, err = run_cli(monkeypatch, capsys, *base, *args)
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_help_lists_what_is_registered_now(checkpoint, monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "rank", "--help")
    assert code == 0 and "toyloo" in out and "scale" in out
    code, out, _ = run_cli(monkeypatch, capsys, "prune", "--help")
    assert code == 0 and "toy-index" in out and "shapley-toyloo" in out
