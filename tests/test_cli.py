"""The command line: train, rank, demo, and one-line errors with exit code 2."""

import json

import pytest
from helpers import run_cli

from shapprune import cli, commands


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LeNet-5 trained for one epoch by the CLI itself."""
    prefix = tmp_path_factory.mktemp("ck") / "lenet"
    mp = pytest.MonkeyPatch()
    mp.setattr("sys.argv", ["shapprune", "train", "--epochs", "1", "--out", str(prefix)])
    try:
        with pytest.raises(SystemExit) as done:
            cli.main()
            raise SystemExit(0)
    finally:
        mp.undo()
    assert (done.value.code or 0) == 0
    return prefix


def test_train_writes_checkpoint_and_refuses_to_overwrite(trained, monkeypatch, capsys):
    meta = json.loads(trained.with_suffix(".json").read_text())
    assert meta["model"] == "lenet5" and meta["metrics"]["test_accuracy"] > 0.8
    before = trained.with_suffix(".safetensors").read_bytes()
    code, _, err = run_cli(monkeypatch, capsys, "train", "--epochs", "1", "--out", str(trained))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert trained.with_suffix(".safetensors").read_bytes() == before


def test_rank_writes_json(trained, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ranks.json"
    args = ["rank", "--model", str(trained) + ".json", "--layer", "conv1", "--method"]
    code, _, err = run_cli(
        monkeypatch, capsys, *args, "permutation", "--budget", "200", "--out", str(out)
    )
    assert code == 0, err
    record = json.loads(out.read_text())
    assert len(record["values"]) == len(record["stderr"]) == 20
    assert sorted(record["ranking"]) == list(range(20))
    assert 0 < record["n_evals"] <= 200 and record["seconds"] > 0
    values = record["values"]
    assert all(
        values[a] <= values[b]
        for a, b in zip(record["ranking"], record["ranking"][1:], strict=False)
    )
    # the same command again refuses to replace the file; --force replaces it identically
    code, _, err = run_cli(
        monkeypatch, capsys, *args, "permutation", "--budget", "200", "--out", str(out)
    )
    assert code == 2 and "exists" in err
    code, _, _ = run_cli(
        monkeypatch, capsys, *args, "permutation", "--budget", "200", "--out", str(out), "--force"
    )
    assert code == 0 and json.loads(out.read_text())["values"] == values


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--layer", "conv7"], "no layer named 'conv7'"),
        (["--method", "magic"], "unknown method 'magic'"),
        (["--method", "exact"], "refused above 20 players"),
        (["--budget", "5"], "budget 5 is too small"),
        (["--data", "cifar10", "--root", "/nonexistent"], "/nonexistent"),
    ],
)
def test_rank_bad_input_is_one_line_exit_2(trained, monkeypatch, capsys, args, needle):
    base = ["rank", "--model", str(trained) + ".json", "--layer", "conv2"]
    code, _, err = run_cli(monkeypatch, capsys, *base, *args)
    assert code == 2
    assert needle in err and err.startswith("error: ") and "Traceback" not in err


def test_unknown_zoo_model(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "rank", "--model", "alexnet")
    assert code == 2 and "unknown model 'alexnet'" in err and "lenet5" in err


def test_oracle_writes_sets_that_are_the_best(tmp_path, monkeypatch, capsys):
    from itertools import combinations

    import torch
    from helpers import F32_ACROSS_SHAPES

    from shapprune.game.pruning_game import PruningGame
    from shapprune.sources.checkpoint import save_checkpoint
    from shapprune.zoo.data import load_dataset, reference_set
    from shapprune.zoo.models import build_model

    model = build_model("tinycnn", seed=0).eval()
    save_checkpoint(tmp_path / "tiny", model, name="tinycnn", config={}, metrics={})
    out = tmp_path / "oracle.json"
    base = ["oracle", "--model", str(tmp_path / "tiny.json"), "--layer", "conv1"]
    code, _, err = run_cli(
        monkeypatch, capsys, *base, "--ks", "1,2,3", "--per-class", "3", "--out", str(out)
    )
    assert code == 0, err
    record = json.loads(out.read_text())
    assert record["layer"] == "conv1" and record["n_evals"] == 8 + 28 + 56
    assert {k: len(s) for k, s in record["sets"].items()} == {"1": 1, "2": 2, "3": 3}
    assert all(record["exhaustive"].values())
    assert sorted(record["rank"]) == list(range(8)) and record["rank"][0] == record["sets"]["1"][0]
    # each set is the best of its size, in a game rebuilt from the same reference examples
    ref = reference_set(load_dataset("mnist5k").val, per_class=3, seed=0)
    game = PruningGame(model, "conv1", (ref.x, ref.y))
    for k in (1, 2):
        subsets = list(combinations(range(8), k))
        masks = torch.ones(len(subsets), 8, dtype=torch.bool)
        for row, s in enumerate(subsets):
            masks[row, list(s)] = False
        values = game.value(masks).numpy()
        best = record["values"][str(k)]
        assert values.max() == pytest.approx(best, abs=F32_ACROSS_SHAPES)
        found = subsets.index(tuple(sorted(record["sets"][str(k)])))
        assert values[found] == pytest.approx(best, abs=F32_ACROSS_SHAPES)
    # beyond max_subsets: beam search, marked as such, sets still of the asked sizes
    args = [*base, "--ks", "1,3", "--per-class", "3", "--max-subsets", "10", "--out", str(out)]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--force")
    assert code == 0, err
    beam = json.loads(out.read_text())
    assert beam["exhaustive"] == {"1": True, "3": False}
    assert len(set(beam["sets"]["3"])) == 3
    assert beam["values"]["3"] <= record["values"]["3"] + F32_ACROSS_SHAPES


def test_demo_on_a_small_setting_writes_its_report(tmp_path, monkeypatch, capsys):
    import shapprune.zoo.training as training

    monkeypatch.setenv("SHAPPRUNE_CACHE", str(tmp_path / "cache"))
    quick = dict(training.RECIPES[("lenet5", "mnist5k")], epochs=1)
    monkeypatch.setitem(training.RECIPES, ("lenet5", "mnist5k"), quick)
    small = {
        "model": "lenet5",
        "data": "mnist5k",
        "layers": ["conv1"],
        "experiments": ["robustness", "oracle"],
        "criteria": ["random", "weight-l1"],
        "seeds": [0],
        "per_class": 2,
        "oracle_ks": [1, 2],
    }
    monkeypatch.setattr(commands.compare, "DEMO_EXPERIMENT", small)
    out = tmp_path / "demo"
    code, _, err = run_cli(monkeypatch, capsys, "demo", "--budget", "400", "--out", str(out))
    assert code == 0, err
    text = " ".join(err.split())
    assert "Shapley ranking of conv2" in text and "evaluations" in text
    assert {"report.md", "results.json", "results.csv", "cells"} <= {p.name for p in out.iterdir()}
    assert list(out.glob("*.png"))
    results = json.loads((out / "results.json").read_text())
    robustness = results["summary"]["robustness"]
    assert list(robustness) == ["conv1"] and set(robustness["conv1"]) == {"random", "weight-l1"}
    oracle = results["results"]["oracle"]["conv1"]
    assert {k: len(s) for k, s in oracle["sets"].items()} == {"1": 1, "2": 2}
    assert "## Layer-wise robustness" in (out / "report.md").read_text()
    cells = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    # the same command again resumes: every cell is read back, the results are the same
    code, _, err = run_cli(monkeypatch, capsys, "demo", "--budget", "400", "--out", str(out))
    assert code == 0, err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == cells
    assert json.loads((out / "results.json").read_text())["summary"] == results["summary"]
