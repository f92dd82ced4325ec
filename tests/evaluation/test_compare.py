"""A small comparison run: all outputs written, interrupted runs resume, bad YAML refused."""

import json

import pytest
import yaml

from shapprune import cli
from shapprune.evaluation.compare import CellStore
from shapprune.game.pruning_game import PruningGame

CONFIG = {
    "model": "tinycnn",
    "data": "mnist5k",
    "layers": ["conv1"],
    "experiments": ["robustness", "rates", "oracle", "cost_benefit"],
    "criteria": ["weight-l1", {"name": "shapley-permutation", "budget": 100}],
    "seeds": [0, 1],
    "per_class": 5,
    "heldout": 200,
    "rates": [0.0, 0.5],
    "oracle_ks": [1, 2],
    "cost_methods": ["permutation", "loo"],
    "cost_budgets": [40, 100],
    "cost_seeds": [0, 1],
}


def _run(monkeypatch, capsys, config_path, out):
    monkeypatch.setattr("sys.argv", ["shapprune", "compare", "--config", str(config_path),
                                     "--out", str(out)])  # fmt: skip
    with pytest.raises(SystemExit) as done:
        cli.main()
        raise SystemExit(0)
    return done.value.code or 0, capsys.readouterr().err


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("SHAPPRUNE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    evals = []
    original = PruningGame.value

    def counting(self, masks):
        out = original(self, masks)
        evals.append(1)
        return out

    monkeypatch.setattr(PruningGame, "value", counting)
    return path, tmp_path / "run", evals


def test_compare_writes_everything_and_resumes(setup, monkeypatch, capsys):
    path, out, evals = setup
    # interrupt the first run after three cells
    original_get = CellStore.get

    def interrupted(self, key, compute):
        if self.computed == 3 and not (self.folder / "stop").exists():
            (self.folder / "stop").write_text("")
            raise KeyboardInterrupt
        return original_get(self, key, compute)

    monkeypatch.setattr(CellStore, "get", interrupted)
    code, _ = _run(monkeypatch, capsys, path, out)
    assert code == 130  # Ctrl-C
    assert len(list((out / "cells").glob("*.json"))) == 3
    code, err = _run(monkeypatch, capsys, path, out)
    assert code == 0, err
    total = len(list((out / "cells").glob("*.json")))
    for name in ("results.json", "results.csv", "report.md", "robustness_conv1.png", "rates.png",
                 "cost_benefit_conv1.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    assert (out / "rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "Layer-wise robustness" in report and "Overlap with the oracle" in report
    assert "Regret" in report and "| Spearman | Kendall |" in report
    assert "## Oracle sets, conv1" in report

    results = json.loads((out / "results.json").read_text())
    assert results["results"]["cells_computed"] == total - 3
    # a third run computes nothing and evaluates no coalition
    evals.clear()
    code, _ = _run(monkeypatch, capsys, path, out)
    assert code == 0 and evals == []
    assert json.loads((out / "results.json").read_text())["results"]["cells_computed"] == 0
    # another experiment in the same folder is refused
    path.write_text(yaml.safe_dump({**CONFIG, "per_class": 6}))
    code, err = _run(monkeypatch, capsys, path, out)
    assert code == 2 and "holds results of another experiment" in err


def test_bad_yaml_key_is_named(tmp_path, monkeypatch, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "budgett": 3}))
    code, err = _run(monkeypatch, capsys, path, tmp_path / "out")
    assert code == 2 and "unknown key 'budgett'" in err and err.startswith("error: ")


def test_oracle_and_cost_without_criteria(setup, monkeypatch, capsys):
    path, out, _ = setup
    config = {k: v for k, v in CONFIG.items() if k != "criteria"}
    path.write_text(yaml.safe_dump({**config, "experiments": ["oracle", "cost_benefit"]}))
    code, err = _run(monkeypatch, capsys, path, out)
    assert code == 0, err
    report = (out / "report.md").read_text()
    assert "## Oracle sets, conv1" in report and "## Cost-benefit" in report


def test_compare_takes_a_users_model_weights_and_folder_from_the_yaml(
    tmp_path, monkeypatch, capsys
):
    """model_args, weights, preprocessing and classes in the YAML, as --model-arg,
    --weights, --image-size ... --std and --classes give them to the other commands."""
    import torch
    from helpers import USER_MODEL_CODE, write_images

    (tmp_path / "user_net.py").write_text(USER_MODEL_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SHAPPRUNE_CACHE", str(tmp_path / "cache"))
    import importlib

    user_net = importlib.import_module("user_net")
    torch.manual_seed(0)
    torch.save({"epoch": 3, "model_state_dict": user_net.Net(num_classes=3).state_dict()},
               tmp_path / "ckpt.pth")  # fmt: skip
    folder = write_images(tmp_path / "pets", per_class=10, mode="L")
    (tmp_path / "classes.txt").write_text("emu\ncat\ndog\n")
    config = {
        "model": f"{tmp_path}/user_net.py:Net", "model_args": {"num_classes": 3},
        "weights": str(tmp_path / "ckpt.pth"), "data": str(folder),
        "preprocessing": {"image_size": 28, "mean": 0.5, "std": [0.25]},
        "classes": str(tmp_path / "classes.txt"), "layers": ["conv1"],
        "experiments": ["robustness"], "criteria": ["weight-l1"], "per_class": 1,
        "heldout": 20, "rates": [0.0, 0.5],
    }  # fmt: skip
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(config))
    code, err = _run(monkeypatch, capsys, path, tmp_path / "run")
    assert code == 0, err
    identity = json.loads((tmp_path / "run" / "experiment.json").read_text())
    assert identity["model_args"] == {"num_classes": 3} and identity["classes"].endswith(".txt")
    results = json.loads((tmp_path / "run" / "results.json").read_text())["results"]
    assert results["layers"] == ["conv1"]
    assert list(results["robustness"]) == ["robustness/weight-l1/conv1/0"]
    config["preprocessing"] = {"image_size": 28, "mean": "grey"}
    path.write_text(yaml.safe_dump(config))
    code, err = _run(monkeypatch, capsys, path, tmp_path / "run2")
    assert code == 2 and "'preprocessing.mean' must be a number or a list" in err
