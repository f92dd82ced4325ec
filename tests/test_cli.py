"""The command line: train, rank, demo, and one-line errors with exit code 2."""

import json

import pytest

from shapprune import cli


def run(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.argv", ["shapprune", *args])
    with pytest.raises(SystemExit) as done:
        cli.main()
        raise SystemExit(0)
    out = capsys.readouterr()
    return done.value.code or 0, out.out, out.err


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
    code, _, err = run(monkeypatch, capsys, "train", "--epochs", "1", "--out", str(trained))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert trained.with_suffix(".safetensors").read_bytes() == before


def test_rank_writes_json(trained, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ranks.json"
    args = ["rank", "--model", str(trained) + ".json", "--layer", "conv1", "--method"]
    code, _, err = run(
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
    code, _, err = run(
        monkeypatch, capsys, *args, "permutation", "--budget", "200", "--out", str(out)
    )
    assert code == 2 and "exists" in err
    code, _, _ = run(
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
    code, _, err = run(monkeypatch, capsys, *base, *args)
    assert code == 2
    assert needle in err and err.startswith("error: ") and "Traceback" not in err


def test_unknown_zoo_model(monkeypatch, capsys):
    code, _, err = run(monkeypatch, capsys, "rank", "--model", "alexnet")
    assert code == 2 and "unknown model 'alexnet'" in err and "lenet5" in err
