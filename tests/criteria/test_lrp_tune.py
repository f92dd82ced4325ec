"""tune_lrp: a tiny search runs, resumes from its SQLite file, never reads the test split;
the CLI tunes, refuses to overwrite, and prunes with the tuned composite."""

import json

import numpy as np
import pytest
import torch
from helpers import run_cli

from shapprune.criteria.lrp_spec import load_spec
from shapprune.criteria.lrp_tune import (
    RATES,
    _Objective,
    accuracy_auc,
    tune_lrp,
    unit_scores,
)
from shapprune.sources.checkpoint import save_checkpoint
from shapprune.zoo.models import build_model


class _NoTest:
    """Dataset splits whose test split may not be read."""

    def __init__(self, splits) -> None:
        self.val, self.name, self.num_classes = splits.val, splits.name, splits.num_classes

    @property
    def test(self):
        raise AssertionError("the search read the test split")


def test_a_tiny_search_resumes_from_sqlite_and_never_reads_the_test_split(
    tiny_cnn, mnist5k, tmp_path
):
    db = tmp_path / "study.db"
    seen = []
    data = _NoTest(mnist5k)
    first = tune_lrp(
        tiny_cnn, data, "filters", "auc", trials=2, seed=0, storage=db, per_class=3,
        progress=lambda *a: seen.append(a),
    )  # fmt: skip
    assert db.is_file() and first.trials == 2 and first.new_trials == 2
    assert [s[0] for s in seen] == [1, 2] and seen[-1][3] == first.value
    assert first.values[0] == first.baseline  # the plain epsilon composite went first
    assert first.value == max(first.values) and 0 < first.value <= 1
    again = tune_lrp(tiny_cnn, data, "filters", "auc", trials=3, seed=0, storage=db, per_class=3)
    assert again.trials == 3 and again.new_trials == 1
    assert again.values[:2] == first.values  # the earlier trials were kept, not rerun
    assert again.spec.info["trials"] == 3 and again.spec.info["layers"] == ["conv1", "conv2"]
    with pytest.raises(ValueError, match="another setting"):
        tune_lrp(tiny_cnn, data, "filters", "shapley", trials=3, seed=0, storage=db, per_class=3)


def test_the_objective_is_the_mean_accuracy_of_the_global_masked_curve(tiny_cnn, mnist5k):
    ref = mnist5k.val.x[:60], mnist5k.val.y[:60]
    judge = _Objective(tiny_cnn, *ref, "filters", "auc", "l1", 64)
    scores = judge.scores("epsilon")
    curve = judge.curve(scores)
    assert len(curve) == len(RATES) == 20 and RATES[-1] == 0.95
    full = float((tiny_cnn(ref[0]).argmax(1) == ref[1]).double().mean())
    assert curve[0] == pytest.approx(full)  # rate 0 is the intact model
    assert curve[-1] < curve[0]  # 95 % of the filters masked hurts
    assert judge("epsilon") == pytest.approx(np.mean(curve))
    # the same curve from the public helper (a fresh game on the same examples)
    auc, again = accuracy_auc(tiny_cnn, unit_scores(tiny_cnn, ref, "filters", "epsilon"), ref)
    assert again == pytest.approx(curve) and auc == pytest.approx(np.mean(curve))


def test_the_curve_of_a_dataset_is_read_in_chunks_and_equals_the_tensors(tiny_cnn, mnist5k):
    """A test split that is a Dataset (an image folder) is never held whole: chunks of 25
    examples give the example-weighted curve of the one game on all 60."""
    from torch.utils.data import TensorDataset

    x, y = mnist5k.val.x[:60], mnist5k.val.y[:60]
    scores = unit_scores(tiny_cnn, (x, y), "filters", "epsilon")
    auc, curve = accuracy_auc(tiny_cnn, scores, (x, y))
    chunked_auc, chunked = accuracy_auc(tiny_cnn, scores, TensorDataset(x, y), chunk=25)
    assert chunked == pytest.approx(curve, abs=1e-9) and chunked_auc == pytest.approx(auc)
    with pytest.raises(ValueError, match="no examples"):
        accuracy_auc(tiny_cnn, scores, TensorDataset(x[:0], y[:0]))


def test_shapley_objective_is_a_spearman_and_keeps_the_values(tiny_cnn, mnist5k, tmp_path):
    db = tmp_path / "s.db"
    result = tune_lrp(
        tiny_cnn, mnist5k, "filters", "shapley", trials=2, seed=0, storage=db, per_class=2,
        shapley_budget=96,
    )  # fmt: skip
    assert -1 <= result.value <= 1 and result.value == max(result.values)
    import optuna

    kept = optuna.load_study(study_name="tune-lrp", storage=f"sqlite:///{db}").user_attrs
    assert len(kept["shapley"]) == 8 + 16  # conv1 and conv2 filters, estimated once


def test_bad_options_are_one_line_errors(tiny_cnn, mnist5k):
    for kwargs, needle in [
        ({"units": "layers"}, "unknown units"),
        ({"objective": "loss"}, "unknown objective"),
        ({"trials": 0}, "trials must be"),
        ({"sampler": "cma"}, "unknown sampler"),
        ({"units": "heads"}, "no prunable heads"),
    ]:
        with pytest.raises(ValueError, match=needle) as err:
            tune_lrp(tiny_cnn, mnist5k, **{"trials": 1, **kwargs})
        assert "\n" not in str(err.value)


def test_cli_tunes_refuses_to_overwrite_and_prunes_with_the_composite(
    tiny_cnn, tmp_path, monkeypatch, capsys
):
    save_checkpoint(tmp_path / "tiny", tiny_cnn, name="tinycnn", config={}, metrics={})
    out = tmp_path / "c.json"
    args = ["tune-lrp", "--model", tmp_path / "tiny.json", "--trials", "2", "--per-class", "2"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", out, "--device", "cpu")
    assert code == 0, err
    spec = load_spec(out)
    assert spec.info["trials"] == 2 and set(spec.info["test_auc"]) == {"tuned", "epsilon"}
    assert (tmp_path / "c.json.db").is_file() and "trial 2/2" in err
    from shapprune.criteria.registry import get_criterion

    assert get_criterion("lrp", composite=str(out)).normalisation == "l1"  # as it was tuned
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", out)
    assert code == 2 and err.startswith("error:") and "exists" in err and err.count("\n") == 1
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", tmp_path / "d.json", "--units",
                           "rows")  # fmt: skip
    assert code == 2 and "unknown units" in err and err.count("\n") == 1
    pruned = tmp_path / "pruned"
    code, _, err = run_cli(
        monkeypatch, capsys, "prune", "--model", tmp_path / "tiny.json", "--criterion", "lrp",
        "--composite", out, "--global", "--target", "channels=0.25", "--per-class", "2",
        "--out", pruned, "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((pruned / "summary.json").read_text())
    assert sum(summary["removed"].values()) == 6  # a quarter of the 24 filters


def test_cli_bad_composite_file_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "shapprune-lrp-composite", "version": 1,
                               "groups": {"low": "epsilon", "mid": "gama", "high": "epsilon",
                                          "fc": "epsilon"}}))  # fmt: skip
    code, _, err = run_cli(
        monkeypatch, capsys, "prune", "--criterion", "lrp", "--composite", bad,
        "--out", tmp_path / "p",
    )  # fmt: skip
    assert code == 2 and "unknown LRP rule 'gama'" in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_unit_scores_of_neurons_and_heads_on_a_vit():
    vit = build_model("vit", embed_dim=16, depth=2, num_heads=2)
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6)
    heads = unit_scores(vit, (x, y), "heads", "epsilon")
    neurons = unit_scores(vit, (x, y), "neurons", "epsilon")
    assert list(heads) == ["blocks.0.attn", "blocks.1.attn"]
    assert all(s.shape == (2,) and (s > 0).all() for s in heads.values())
    assert list(neurons) == ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1"]
    assert all(s.shape == (32,) for s in neurons.values())


def test_compare_configs_accept_a_tuned_composite(tmp_path):
    from shapprune.criteria.lrp_spec import CompositeSpec
    from shapprune.evaluation.config import parse_config

    path = CompositeSpec.uniform("gamma", gamma=0.5).save(tmp_path / "tuned.json")
    raw = {"model": "tinycnn", "layers": ["conv1"], "criteria": [
        {"name": "lrp", "composite": str(path)}]}  # fmt: skip
    (spec,) = parse_config(raw, "cfg").criteria
    assert spec.options == {"composite": str(path)}
    raw["criteria"][0]["composite"] = str(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        parse_config(raw, "cfg")


def test_an_interrupted_search_resumes_with_the_gp_sampler(tiny_cnn, mnist5k, tmp_path):
    db, data = tmp_path / "i.db", (mnist5k.val.x[:40], mnist5k.val.y[:40])

    def stop(done, *_):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune_lrp(tiny_cnn, data, trials=4, storage=db, sampler="gp", progress=stop)
    resumed = tune_lrp(tiny_cnn, data, trials=4, storage=db, sampler="gp")
    assert resumed.new_trials == 2 and resumed.trials == 4
