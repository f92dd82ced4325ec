"""The command line's --executor, --workers and --ray-address, and resuming rank and prune."""

import json
from contextlib import contextmanager

import pytest
import torch
from helpers import run_cli

from shapprune import commands
from shapprune.estimators import resume
from shapprune.sources.checkpoint import save_checkpoint
from shapprune.zoo.models import build_model


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """A random-weight LeNet-5 checkpoint (no training: the values need not be useful)."""
    folder = tmp_path_factory.mktemp("cli-executors")
    st, _ = save_checkpoint(folder / "lenet", build_model("lenet5", seed=3), name="lenet5",
                            config={"seed": 3}, metrics={})  # fmt: skip
    return str(st)


def _rank(model, out, *extra):
    return ["rank", "--model", model, "--layer", "conv2", "--budget", "2000", "--per-class",
            "4", "--out", str(out), *extra]  # fmt: skip


def _interrupting(after: int):
    """A stand-in for the CLI's progress bar that presses Ctrl-C after ``after`` batches."""

    @contextmanager
    def progress(label, total):
        seen = []

        def update(done, budget):
            seen.append(done)
            if len(seen) == after:
                raise KeyboardInterrupt

        yield update

    return progress


def test_rank_resumes_an_interrupted_run(model, tmp_path, monkeypatch, capsys):
    whole = tmp_path / "whole.json"
    assert run_cli(monkeypatch, capsys, *_rank(model, whole))[0] == 0
    out = tmp_path / "ranks.json"
    checkpoint = tmp_path / "ranks.json.checkpoint.json"
    with monkeypatch.context() as m:
        m.setattr(commands.rank, "evaluation_progress", _interrupting(2))
        code, _, err = run_cli(monkeypatch, capsys, *_rank(model, out))
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert checkpoint.exists() and not out.exists()
    code, _, err = run_cli(monkeypatch, capsys, *_rank(model, out))
    assert code == 0, err
    assert "resuming from" in err and not checkpoint.exists()
    got, expected = json.loads(out.read_text()), json.loads(whole.read_text())
    assert got["values"] == expected["values"] and got["n_evals"] == expected["n_evals"]


def test_rank_refuses_the_checkpoint_of_another_command(model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ranks.json"
    with monkeypatch.context() as m:
        m.setattr(commands.rank, "evaluation_progress", _interrupting(2))
        assert run_cli(monkeypatch, capsys, *_rank(model, out))[0] == 130
    code, _, err = run_cli(monkeypatch, capsys, *_rank(model, out, "--seed", "1"))
    assert code == 2 and "another run (it differs in: seed)" in err and err.count("\n") == 1


def test_rank_on_two_processes_gives_the_serial_values(model, tmp_path, monkeypatch, capsys):
    serial, parallel = tmp_path / "serial.json", tmp_path / "parallel.json"
    assert run_cli(monkeypatch, capsys, *_rank(model, serial))[0] == 0
    threads = str(torch.get_num_threads())  # as many per worker as this process uses
    args = _rank(model, parallel, "--executor", "processes", "--workers", "2", "--threads", threads)
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert json.loads(parallel.read_text())["values"] == json.loads(serial.read_text())["values"]


def test_prune_resumes_its_scoring(model, tmp_path, monkeypatch, capsys):
    args = ["prune", "--model", model, "--criterion", "shapley-permutation", "--budget", "2000",
            "--layers", "conv1,conv2", "--target", "channels=0.5", "--per-class", "4",
            "--refine", "0"]  # fmt: skip
    whole = tmp_path / "whole"
    assert run_cli(monkeypatch, capsys, *args, "--out", whole)[0] == 0
    out = tmp_path / "pruned"
    recorded = resume.Checkpoint.recorded
    calls = []

    def interrupt(self, n):  # Ctrl-C during the second layer's estimation
        recorded(self, n)
        calls.append(n)
        if len(calls) == 6:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(resume.Checkpoint, "recorded", interrupt)
        assert run_cli(monkeypatch, capsys, *args, "--out", out)[0] == 130
    assert [p.name for p in out.iterdir()] == ["scores.checkpoint.json"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", out)  # no --force needed
    assert code == 0, err
    assert "resuming from" in err
    got = json.loads((out / "summary.json").read_text())
    expected = json.loads((whole / "summary.json").read_text())
    assert got["plans"][0]["scores"] == expected["plans"][0]["scores"]
    assert not (out / "scores.checkpoint.json").exists()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--executor", "threads"], "unknown executor 'threads'; choose one of: serial"),
        (["--workers", "0"], "--workers must be >= 1, got 0; use 1 or more"),
        (["--executor", "ray", "--ray-address", "127.0.0.1:1"], "cannot reach a Ray cluster"),
        (["--ray-address", "127.0.0.1:1"], "add --executor ray"),
    ],
)
def test_bad_executor_settings_are_one_line_exit_2(
    model, tmp_path, monkeypatch, capsys, flags, needle
):
    prune = ["prune", "--model", model, "--out", tmp_path / "pruned"]
    for command in (["rank", "--model", model], prune):
        code, _, err = run_cli(monkeypatch, capsys, *command, *flags)
        assert code == 2 and needle in err, err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
