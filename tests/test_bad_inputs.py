"""A battery of bad inputs through the command line: each is one line on stderr, exit code 2
(130 when interrupted), no traceback, and every file the user had is left as it was."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import run_cli
from PIL import Image

from shapprune import cli, commands
from shapprune.sources.checkpoint import save_checkpoint
from shapprune.zoo.models import build_model

UNWRITABLE = "/sys/shapprune-test"  # refused even to root: sysfs takes no new files


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else ""
        for p in sorted(folder.rglob("*"))
    }


def _images(folder: Path, n: int = 4) -> None:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(n):
            pixels = (rng.random((8, 8)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / cls / f"{i}.png")


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's folder: a small checkpoint, outputs of earlier runs and broken files."""
    d = tmp_path_factory.mktemp("user")
    model = build_model("tinycnn", seed=0)
    save_checkpoint(d / "tiny", model, name="tinycnn", config={}, metrics={})
    weights = (d / "tiny.safetensors").read_bytes()
    meta = json.loads((d / "tiny.json").read_text())
    (d / "syntax.json").write_text('{"model": "tinycnn", "config": ')
    (d / "syntax.safetensors").write_bytes(weights)
    (d / "list.json").write_text("[1, 2]")
    (d / "list.safetensors").write_bytes(weights)
    (d / "alien.json").write_text(json.dumps({**meta, "model": "alexnet"}))
    (d / "alien.safetensors").write_bytes(weights)
    (d / "garbage.json").write_text(json.dumps(meta))
    (d / "garbage.safetensors").write_bytes(b"\x00\x01not safetensors at all" * 10)
    (d / "shapes.json").write_text(json.dumps({**meta, "model": "lenet5"}))
    (d / "shapes.safetensors").write_bytes(weights)
    (d / "noweights.json").write_text(json.dumps(meta))
    (d / "syntax.yaml").write_text("model: tinycnn\nlayers: [conv1\ncriteria: [random]\n")
    (d / "key.yaml").write_text("model: tinycnn\nlayerz: [conv1]\ncriteria: [random]\n")
    (d / "type.yaml").write_text("model: tinycnn\nper_class: many\ncriteria: [random]\n")
    (d / "binary.yaml").write_bytes(b"\xff\xfe\x00\x81model")
    good = {
        "model": str(d / "tiny.json"),
        "layers": ["conv1"],
        "criteria": ["random", "weight-l1"],
        "experiments": ["robustness"],
        "per_class": 2,
    }
    (d / "good.yaml").write_text(yaml.safe_dump(good))
    (d / "other.yaml").write_text(yaml.safe_dump({**good, "per_class": 3}))
    (d / "earlier.json").write_text('{"mine": true}')
    (d / "earlier.safetensors").write_bytes(weights)
    (d / "a-file").write_text("not a folder")
    (d / "full").mkdir()
    (d / "full" / "notes.txt").write_text("keep me")
    _images(d / "corrupt")
    (d / "corrupt" / "a" / "broken.png").write_text("this is no image")
    _images(d / "truncated")
    png = (d / "truncated" / "a" / "0.png").read_bytes()
    (d / "truncated" / "b" / "cut.png").write_bytes(png[: len(png) // 2])
    (d / "empty-images" / "a").mkdir(parents=True)
    # an earlier compare run of another experiment in "runs"
    (d / "runs").mkdir()
    (d / "runs" / "experiment.json").write_text(json.dumps({"model": "lenet5", "per_class": 9}))
    return d


M = "{d}/tiny.json"
CASES = {
    # wrong types
    "budget-word": (["rank", "--budget", "lots"], "Invalid value for '--budget'"),
    "budget-float": (["rank", "--budget", "1e3"], "Invalid value for '--budget'"),
    "seed-word": (["rank", "--seed", "x"], "Invalid value for '--seed'"),
    "per-class-float": (["rank", "--per-class", "2.5"], "Invalid value for '--per-class'"),
    "lr-word": (["train", "--lr", "junk"], "Invalid value for '--lr'"),
    "epochs-word": (["train", "--epochs", "many"], "Invalid value for '--epochs'"),
    "steps-word": (["prune", "--steps", "x"], "Invalid value for '--steps'"),
    "finetune-lr-word": (["prune", "--finetune-lr", "x"], "Invalid value for '--finetune-lr'"),
    "max-subsets-word": (["oracle", "--max-subsets", "x"], "Invalid value for '--max-subsets'"),
    "beam-width-float": (["oracle", "--beam-width", "1.5"], "Invalid value for '--beam-width'"),
    "demo-budget-word": (["demo", "--budget", "x"], "Invalid value for '--budget'"),
    "compare-no-config": (["compare"], "Missing option '--config'"),
    "precision-unknown": (["prune", "--precision", "fp8"], "precision must be one of"),
    "precision-float16-on-cpu": (
        ["prune", "--device", "cpu", "--precision", "float16"],
        "float16 autocast needs a CUDA device",
    ),
    # usage
    "unknown-option": (["rank", "--bogus"], "No such option: --bogus"),
    "unknown-command": (["rnak"], "No such command 'rnak'"),
    "option-without-value": (["rank", "--out"], "'--out' requires an argument"),
    "extra-argument": (["prune", "--global", "x"], "unexpected extra argument"),
    # out of range
    "budget-negative": (["rank", "--model", M, "--budget", "-5"], "budget -5 is too small"),
    "per-class-zero": (["rank", "--per-class", "0"], "'--per-class'"),
    "target-above-1": (["prune", "--target", "channels=1.5"], "must lie in (0, 1), got 1.5"),
    "target-kind": (["prune", "--target", "flops=0.5"], "unknown target 'flops'"),
    "target-no-number": (["prune", "--target", "macs=half"], "needs a number"),
    "steps-zero": (["prune", "--model", M, "--steps", "0"], "steps must be >= 1"),
    "ks-junk": (["oracle", "--ks", "1,x"], "comma-separated integers, got '1,x'"),
    "ks-zero": (["oracle", "--ks", "0,1"], "set sizes >= 1"),
    "ks-too-big": (["oracle", "--model", M, "--ks", "9"], "ks"),
    "epochs-negative": (["train", "--epochs", "-1", "--out", "{d}/new"], "need epochs >= 1"),
    # unknown names
    "method": (["rank", "--model", M, "--method", "magic"], "unknown method 'magic'"),
    "metric": (["rank", "--model", M, "--metric", "f1"], "unknown metric 'f1'"),
    "layer": (["rank", "--model", M, "--layer", "conv7"], "no layer named 'conv7'"),
    "dataset": (["rank", "--model", M, "--data", "nosuch"], "unknown dataset 'nosuch'"),
    "mode": (["prune", "--model", M, "--mode", "cut"], "unknown mode 'cut'"),
    "criterion": (["prune", "--model", M, "--criterion", "nope"], "unknown criterion 'nope'"),
    "normalisation": (
        ["prune", "--model", M, "--global", "--normalisation", "zz"],
        "unknown normalisation 'zz'",
    ),
    "zoo-model": (["train", "--model", "alexnet"], "unknown model 'alexnet'"),
    # missing files
    "checkpoint-missing": (["rank", "--model", "{d}/gone.json"], "gone.json not found"),
    "weights-missing": (["rank", "--model", "{d}/noweights.json"], "noweights.safetensors"),
    "config-missing": (["compare", "--config", "{d}/gone.yaml"], "gone.yaml not found"),
    "data-root-missing": (["rank", "--model", M, "--data", "cifar10", "--root", "/nope"], "/nope"),
    "image-folder-empty": (["rank", "--model", M, "--data", "{d}/empty-images"], "no images"),
    # corrupt files of every kind the command line reads
    "json-syntax": (["rank", "--model", "{d}/syntax.json"], "syntax.json is not valid JSON"),
    "json-list": (["rank", "--model", "{d}/list.json"], "not a shapprune checkpoint"),
    "json-alien-model": (["rank", "--model", "{d}/alien.json"], "alexnet"),
    "safetensors-garbage": (
        ["rank", "--model", "{d}/garbage.json"],
        "garbage.safetensors is not a valid safetensors file",
    ),
    "safetensors-shapes": (["rank", "--model", "{d}/shapes.json"], "does not fit model 'lenet5'"),
    "yaml-syntax": (["compare", "--config", "{d}/syntax.yaml"], "(line 3, column 9)"),
    "yaml-key": (["compare", "--config", "{d}/key.yaml"], "unknown key 'layerz'"),
    "yaml-type": (["compare", "--config", "{d}/type.yaml"], "'per_class' must be"),
    "yaml-binary": (["compare", "--config", "{d}/binary.yaml"], "not a text file"),
    "image-corrupt": (
        ["rank", "--model", M, "--data", "{d}/corrupt"],
        "broken.png is not a readable image",
    ),
    "image-truncated": (
        ["rank", "--model", M, "--data", "{d}/truncated"],
        "cut.png is not a readable image",
    ),
    # outputs that cannot be written, checked before any work
    "rank-out-unwritable": (
        ["rank", "--model", M, "--out", f"{UNWRITABLE}/x.json"],
        "cannot write /sys/shapprune-test/x.json: Permission denied",
    ),
    "rank-out-under-file": (
        ["rank", "--model", M, "--out", "{d}/a-file/x.json"],
        "a-file is a file, not a folder",
    ),
    "rank-out-is-folder": (["rank", "--model", M, "--out", "{d}/full"], "is a folder"),
    "oracle-out-unwritable": (
        ["oracle", "--model", M, "--out", f"{UNWRITABLE}/o.json"],
        "Permission denied",
    ),
    "train-out-unwritable": (["train", "--out", f"{UNWRITABLE}/m"], "Permission denied"),
    "prune-out-is-file": (["prune", "--model", M, "--out", "{d}/a-file"], "is a file"),
    "prune-out-unwritable": (["prune", "--model", M, "--out", UNWRITABLE], "Permission denied"),
    "compare-out-unwritable": (
        ["compare", "--config", "{d}/good.yaml", "--out", UNWRITABLE],
        "Permission denied",
    ),
    "demo-out-is-file": (["demo", "--out", "{d}/a-file"], "is a file"),
    # existing outputs without --force
    "rank-out-exists": (["rank", "--model", M, "--out", "{d}/earlier.json"], "exists"),
    "oracle-out-exists": (["oracle", "--model", M, "--out", "{d}/earlier.json"], "exists"),
    "train-out-exists": (["train", "--out", "{d}/earlier"], "exists"),
    "prune-out-not-empty": (["prune", "--model", M, "--out", "{d}/full"], "is not empty"),
    "compare-out-foreign-folder": (
        ["compare", "--config", "{d}/good.yaml", "--out", "{d}/full"],
        "holds other files and no earlier run",
    ),
    "demo-out-foreign-folder": (["demo", "--out", "{d}/full"], "holds other files"),
    "compare-other-experiment": (
        ["compare", "--config", "{d}/good.yaml", "--out", "{d}/runs"],
        "holds results of another experiment",
    ),
}


@pytest.mark.parametrize("args,needle", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_and_changes_nothing(
    user, tmp_path, monkeypatch, capsys, args, needle
):
    monkeypatch.setenv("SHAPPRUNE_CACHE", str(tmp_path / "cache"))  # no zoo model is trained
    monkeypatch.chdir(tmp_path)
    before = snapshot(user)
    code, _, err = run_cli(monkeypatch, capsys, *(a.format(d=user) for a in args))
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and needle in err, err
    assert snapshot(user) == before  # nothing the user had was replaced, added or removed
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_battery_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize(
    "args,needle",
    [
        (["rank", "--budget", "lots"], "Invalid value for '--budget'"),
        (["compare", "--config", "{d}/syntax.yaml"], "is not valid YAML (line 3, column 9)"),
    ],
)
def test_no_traceback_reaches_the_terminal(user, tmp_path, args, needle):
    src = Path(cli.__file__).resolve().parents[1]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(src), "SHAPPRUNE_CACHE": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "shapprune", *(a.format(d=user) for a in args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and needle in done.stderr, done.stderr


def _interrupt_after(monkeypatch, target: str, calls: int) -> None:
    """Ctrl-C on the ``calls``-th call of ``target`` (``module.Class.method``)."""
    module, cls, name = target.rsplit(".", 2)
    owner = getattr(__import__(module, fromlist=[cls]), cls)
    original = getattr(owner, name)
    seen = []

    def wrapper(*args, **kwargs):
        seen.append(1)
        if len(seen) >= calls:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def test_interrupted_rank_keeps_the_earlier_file(user, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ranks.json"
    out.write_text('{"earlier": true}')
    _interrupt_after(monkeypatch, "shapprune.game.pruning_game.PruningGame.value", 1)
    args = ["rank", "--model", f"{user}/tiny.json", "--layer", "conv1", "--budget", "200"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", out, "--force")
    assert code == 130 and err.count("\n") == 1 and err.startswith("error: interrupted")
    assert out.read_text() == '{"earlier": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranks.json"]  # no temporary left


def test_interrupted_prune_writes_nothing(user, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pruned"
    _interrupt_after(monkeypatch, "shapprune.game.pruning_game.PruningGame.value", 1)
    args = ["prune", "--model", f"{user}/tiny.json", "--target", "channels=0.5", "--budget", "60"]
    args += ["--criterion", "shapley-permutation"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--per-class", "2", "--out", out)
    assert code == 130 and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_interrupted_compare_resumes(user, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = ["compare", "--config", f"{user}/good.yaml", "--out", out]
    with monkeypatch.context() as patch:
        _interrupt_after(patch, "shapprune.evaluation.compare.CellStore.get", 3)
        code, _, err = run_cli(patch, capsys, *args)
    assert code == 130 and err.count("\n") == 1 and err.startswith("error: interrupted")
    kept = sorted(p.name for p in (out / "cells").iterdir())
    assert len(kept) == 2 and all(name.endswith(".json") for name in kept)  # whole cells only
    assert not (out / "results.json").exists()
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert set(kept) < set(cells) and all(name.endswith(".json") for name in cells)
    first_cell = json.loads((out / "cells" / kept[0]).read_text())
    assert first_cell  # the resumed run read it back, it was complete
    total = len(cells)
    assert f"{total - len(kept)} cells computed" in " ".join(err.split())
    results = json.loads((out / "results.json").read_text())
    assert set(results["summary"]["robustness"]["conv1"]) == {"random", "weight-l1"}


def _validation_error() -> Exception:
    from pydantic import TypeAdapter, ValidationError

    try:
        TypeAdapter(int).validate_python("lots")
    except ValidationError as err:
        return err
    raise AssertionError("pydantic accepted 'lots' as an integer")


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda: __import__("click").BadParameter("click's own usage error"), "click's own"),
        (lambda: __import__("typer").BadParameter("typer's usage error"), "typer's usage"),
        (_validation_error, "invalid value 'lots': Input should be a valid integer"),
        (lambda: PermissionError(13, "Permission denied", "/data/x.json"), "/data/x.json: Per"),
        (lambda: IsADirectoryError(21, "Is a directory", "/data/out"), "/data/out: Is a dir"),
        (lambda: OSError(28, "No space left on device", "/data/big"), "/data/big: No space"),
        (lambda: OSError("a bare OSError"), "a bare OSError"),
    ],
    ids=["click", "typer", "pydantic", "permission", "is-a-dir", "no-space", "bare-oserror"],
)
def test_errors_of_any_library_version_are_one_line(monkeypatch, capsys, make, needle):
    """Whatever typer, click or pydantic raise (versions differ), and OS errors mid-run."""

    def fail(*args, **kwargs):
        raise make()

    monkeypatch.setattr(commands.rank, "rank_layer", fail)
    code, _, err = run_cli(monkeypatch, capsys, "rank")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err and "Traceback" not in err
