"""Every command a user types, on one model of each family the zoo has: a plain CNN
(LeNet-5), a BatchNorm CNN (VGG), a residual network with BatchNorm (ResNet-20) and a
transformer (ViT), with the namesake Shapley criterion where the command takes one.

The models have random weights and non-trivial BatchNorm statistics (no training: what is
tested is that each command runs its whole path on each family and writes what it says;
the values themselves are tested below the CLI). Budgets are the smallest that run.
"""

import json

import pytest
import torch
import yaml
from helpers import randomise_norms, run_cli

from shapprune.sources.checkpoint import load_checkpoint, save_checkpoint
from shapprune.zoo.models import build_model

# family -> (zoo model, a small layer, two layers to prune with a Shapley criterion)
FAMILIES = {
    "plain": ("lenet5", "conv1", "conv1,conv2"),
    "batchnorm": ("vgg", "features.0", "features.0,features.4"),
    "residual": ("resnet20", "layer1.0.conv1", "conv1,layer1.0.conv1"),
    "transformer": ("vit", "blocks.0.attn", "blocks.0.attn,blocks.1.mlp.fc1"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A random-weight checkpoint of each family's model, BatchNorm statistics randomised
    (the state then holds BatchNorm's 0-dim int64 ``num_batches_tracked``)."""
    folder = tmp_path_factory.mktemp("families")
    paths = {}
    for family, (name, *_) in FAMILIES.items():
        model = randomise_norms(build_model(name, seed=0))
        save_checkpoint(folder / name, model, name=name, config={}, metrics={})
        paths[family] = str(folder / f"{name}.json")
    return paths


def _ok(code: int, err: str) -> None:
    assert code == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize("family", list(FAMILIES))
def test_rank_with_permutation_writes_and_resumes(
    family, checkpoints, tmp_path, monkeypatch, capsys
):
    _, layer, _ = FAMILIES[family]
    out = tmp_path / "ranks.json"
    args = ["rank", "--model", checkpoints[family], "--layer", layer, "--method", "permutation",
            "--budget", "300", "--per-class", "2", "--out", out]  # fmt: skip
    code, _, err = run_cli(monkeypatch, capsys, *args)
    _ok(code, err)
    record = json.loads(out.read_text())
    assert sorted(record["ranking"]) == list(range(len(record["values"])))
    assert 0 < record["n_evals"] <= 300
    # the resume file's fingerprint reads the whole state, BatchNorm's buffers included
    checkpoint = out.with_name(out.name + ".checkpoint.json")
    assert not checkpoint.exists()  # removed once the result is written
    if family == "batchnorm":  # the same command again gives the same values
        code, _, err = run_cli(monkeypatch, capsys, *args, "--force")
        _ok(code, err)
        assert json.loads(out.read_text())["values"] == record["values"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prune_with_a_shapley_criterion(family, checkpoints, tmp_path, monkeypatch, capsys):
    _, _, layers = FAMILIES[family]
    out = tmp_path / "pruned"
    code, stdout, err = run_cli(
        monkeypatch, capsys, "prune", "--model", checkpoints[family], "--criterion",
        "shapley-permutation", "--budget", "40", "--layers", layers, "--target", "macs=0.2",
        "--refine", "0", "--per-class", "2", "--out", out,
    )  # fmt: skip
    _ok(code, err)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["after"]["macs"] < summary["before"]["macs"]
    # a budget below what a layer needs is raised there, and said once
    assert any("budget 40 is below" in note for note in summary["notes"])
    model, _ = load_checkpoint(out / "model")
    assert sum(p.numel() for p in model.parameters()) == summary["after"]["params"]


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_prune_with_its_defaults(family, precision, checkpoints, tmp_path, monkeypatch, capsys):
    """The default criterion (LRP), scope and compensation chosen on the reference loss; a
    short refinement; in float32 and with the removals evaluated under bfloat16 autocast."""
    out = tmp_path / "pruned"
    code, _, err = run_cli(
        monkeypatch, capsys, "prune", "--model", checkpoints[family], "--refine", "4",
        "--per-class", "2", "--precision", precision, "--out", out,
    )  # fmt: skip
    _ok(code, err)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["criterion"] == "lrp" and summary["precision"] == precision
    model, _ = load_checkpoint(out / "model")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert summary["after"]["macs"] <= 0.5 * summary["before"]["macs"] * 1.05


@pytest.mark.parametrize("family", list(FAMILIES))
def test_compare_with_a_shapley_criterion_writes_its_table(
    family, checkpoints, tmp_path, monkeypatch, capsys
):
    _, layer, _ = FAMILIES[family]
    config = {
        "model": checkpoints[family],
        "data": "mnist5k",
        "layers": [layer],
        "experiments": ["robustness"],
        "criteria": ["weight-l1", {"name": "shapley-permutation", "budget": 200}],
        "seeds": [0],
        "per_class": 2,
        "heldout": 50,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, "compare", "--config", path, "--out", out)
    _ok(code, err)
    report = (out / "report.md").read_text()
    assert "shapley-permutation" in report and "weight-l1" in report and "|" in report


@pytest.mark.parametrize("family", list(FAMILIES))
def test_oracle_on_each_family(family, checkpoints, tmp_path, monkeypatch, capsys):
    _, layer, _ = FAMILIES[family]
    out = tmp_path / "oracle.json"
    code, _, err = run_cli(
        monkeypatch, capsys, "oracle", "--model", checkpoints[family], "--layer", layer,
        "--ks", "1,2", "--per-class", "2", "--max-subsets", "600", "--out", out,
    )  # fmt: skip
    _ok(code, err)
    record = json.loads(out.read_text())
    assert record["layer"] == layer


def test_tune_lrp_on_a_batchnorm_model(checkpoints, tmp_path, monkeypatch, capsys):
    """LRP canonizes BatchNorm (merged into the convolution before it): tuning runs on it
    (the residual network's canonization runs in prune's defaults above)."""
    out = tmp_path / "composite.json"
    code, _, err = run_cli(
        monkeypatch, capsys, "tune-lrp", "--model", checkpoints["batchnorm"], "--trials", "2",
        "--per-class", "2", "--out", out,
    )  # fmt: skip
    _ok(code, err)
    assert json.loads(out.read_text())
