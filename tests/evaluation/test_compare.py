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
