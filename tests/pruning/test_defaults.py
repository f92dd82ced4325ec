"""One set of defaults: ``shapprune prune`` with no options runs what ``prune_model`` with
no options runs, both read from ``PRUNE_DEFAULTS``; the help is grouped by what it sets."""

import inspect

import pytest

from shapprune import cli
from shapprune.pruning import compress
from shapprune.pruning.defaults import PRUNE_DEFAULTS, resolve_cost
from shapprune.pruning.plan import Target


class Called(Exception):
    """Raised by the stand-in for prune_model once it has seen its arguments."""


def test_the_command_passes_the_library_defaults(tmp_path, monkeypatch):
    seen = {}
    library = {
        name: p.default
        for name, p in inspect.signature(compress.prune_model).parameters.items()
        if p.default is not inspect.Parameter.empty
    }

    def spy(model, data, criterion=None, target=None, **kwargs):
        seen.update(criterion=criterion, target=target, **kwargs)
        raise Called

    monkeypatch.setattr(compress, "prune_model", spy)
    monkeypatch.setattr("sys.argv", ["shapprune", "prune", "--out", str(tmp_path / "o")])
    with pytest.raises(Called):
        cli.main()
    assert seen["criterion"].name == PRUNE_DEFAULTS.criterion
    assert seen["target"] == Target.parse(PRUNE_DEFAULTS.target)
    names = ("global_", "compensate", "refine", "per_class", "steps", "mode", "seed",
             "precision", "recalibrate")  # fmt: skip
    for name in names:
        assert seen[name] == library[name] == getattr(PRUNE_DEFAULTS, name), name
    # the command resolves "auto" to the target's kind, as the library does
    assert seen["cost"] == resolve_cost(library["cost"], library["global_"], "macs") == "macs"


def test_resolve_cost():
    assert resolve_cost("auto", "auto", "params") == "params"
    assert resolve_cost("auto", False, "macs") is None
    assert resolve_cost("auto", True, "channels") is None
    assert resolve_cost("none", True, "macs") is None
    with pytest.raises(ValueError, match="cost takes macs, params, none or auto; got 'flops'"):
        resolve_cost("flops", True, "macs")


def test_prune_model_with_the_model_and_data_alone_runs_the_defaults(mnist5k):
    """The criterion by name (lrp), the target, both scopes, compensation, refinement."""
    from shapprune.zoo.models import build_model

    model = build_model("lenet5", seed=0).eval()
    pruned, summary = compress.prune_model(model, mnist5k, per_class=1, refine=4)
    assert summary["criterion"] == "lrp" and summary["target"] == PRUNE_DEFAULTS.target
    assert summary["global"] == "auto" and summary["compensate"] == "auto"
    assert summary["cost"] == "macs" and summary["plans"][0]["scope"]["chosen"]
    assert summary["plans"][0]["refinement"]["sets_evaluated"] > 0
    assert 0.5 <= 1 - summary["after"]["macs"] / summary["before"]["macs"] < 0.55


def test_help_groups_the_options(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["shapprune", "prune", "--help"])
    monkeypatch.setenv("COLUMNS", "120")
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 0
    text = capsys.readouterr().out
    panels = ["Model", "Data", "Target and plan", "Criterion", "Output", "Running"]
    where = [text.find(f"─ {p}") for p in panels]
    assert -1 not in where and where == sorted(where), where
    assert text.find("--refine") > where[2] and text.find("--export") > where[4]
