"""The pruning job end to end: one-shot, iterative, mask mode, fine-tuning, the CLI."""

import json

import pytest

from shapprune import cli
from shapprune.criteria.registry import get_criterion
from shapprune.evaluation.measure import evaluate
from shapprune.pruning.compress import prune_model
from shapprune.pruning.removal import apply_removals
from shapprune.zoo.data import reference_set
from shapprune.zoo.models import build_model

PER_LAYER = {"global_": False, "refine": 0}  # the plain one-shot cut, no search


@pytest.fixture(scope="module")
def lenet(mnist5k):
    from shapprune.training import train_model

    model = build_model("lenet5", seed=0)
    train_model(model, mnist5k, epochs=1, lr=2e-3, batch_size=64, progress=False)
    return model.eval()


def test_one_shot_half_the_conv_filters(lenet, mnist5k):
    pruned, summary = prune_model(
        lenet,
        mnist5k,
        get_criterion("weight-l1"),
        "channels=0.5",
        layers=["conv1", "conv2"],
        compensate=False,
        **PER_LAYER,
    )
    assert summary["removed"] == {"conv1": 10, "conv2": 25}
    assert pruned.conv1.out_channels == 10 and pruned.conv2.out_channels == 25
    assert summary["after"]["params"] < summary["before"]["params"]
    assert summary["after"]["macs"] < 0.5 * summary["before"]["macs"]
    # the same model pruned by hand: the 10 and 25 filters of least L1 norm, removed directly
    norms = {n: getattr(lenet, n).weight.detach().abs().sum((1, 2, 3)) for n in ("conv1", "conv2")}
    lowest = {n: sorted(norms[n].argsort()[:k].tolist()) for n, k in (("conv1", 10), ("conv2", 25))}
    assert summary["plans"][0]["removals"] == lowest
    by_hand = apply_removals(lenet, lowest, mnist5k.val.x[:2])
    expected = evaluate(by_hand, mnist5k.test)
    assert summary["after"]["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert summary["after"]["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert summary["before"]["accuracy"] == evaluate(lenet, mnist5k.test)["accuracy"]


def test_iterative_macs_target_rescores_between_steps(lenet, mnist5k):
    calls = []

    class Spy:
        name = "spy"

        def score(self, model, layers, data, seed=0):
            calls.extend((layer, getattr(model, layer).out_channels) for layer in layers)
            return get_criterion("weight-l2").score(model, layers, data, seed=seed)

    pruned, summary = prune_model(
        lenet, mnist5k, Spy(), "macs=0.5", layers=["conv1", "conv2"], steps=2, **PER_LAYER
    )
    assert len(calls) == 4 and calls[2][1] < calls[0][1]  # step 2 scored the pruned model
    assert 0.5 <= 1 - summary["after"]["macs"] / summary["before"]["macs"] < 0.56
    assert len(summary["plans"]) == 2 and len(summary["history"]) == 4


def test_mask_mode_matches_remove_mode(lenet, mnist5k):
    crit = get_criterion("random")
    kwargs = dict(layers=["conv2", "fc1"], global_=True, refine=0)
    removed, a = prune_model(lenet, mnist5k, crit, "channels=0.4", **kwargs)
    masked, b = prune_model(lenet, mnist5k, crit, "channels=0.4", mode="mask", **kwargs)
    assert a["after"]["accuracy"] == pytest.approx(b["after"]["accuracy"])
    assert b["after"]["params"] == a["before"]["params"]
    with pytest.raises(ValueError, match="needs mode='remove'"):
        prune_model(lenet, mnist5k, crit, "channels=0.4", mode="mask", steps=2)


def test_fine_tuning_recovers_accuracy(lenet, mnist5k):
    crit = get_criterion("random")
    args = (lenet, mnist5k, crit, "channels=0.8")
    _, plain = prune_model(*args, layers=["conv2"], **PER_LAYER)
    _, tuned = prune_model(*args, layers=["conv2"], finetune_epochs=1, **PER_LAYER)
    assert tuned["after"]["accuracy"] > plain["after"]["accuracy"]


def test_unknown_layers_are_named(lenet, mnist5k):
    with pytest.raises(ValueError, match="not prunable layer.*fc2.*prunable layers: conv1"):
        prune_model(lenet, mnist5k, get_criterion("random"), "channels=0.5", layers=["fc2"])


def _cli(monkeypatch, capsys, *args):
    monkeypatch.setattr("sys.argv", ["shapprune", *args])
    with pytest.raises(SystemExit) as done:
        cli.main()
        raise SystemExit(0)
    return done.value.code or 0, capsys.readouterr().err


def test_cli_prune_writes_model_and_summary(tmp_path, monkeypatch, capsys, lenet):
    from shapprune.sources.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "base", lenet, name="lenet5", config={"seed": 0}, metrics={})
    out = tmp_path / "pruned"
    args = ["prune", "--model", str(tmp_path / "base.json"), "--criterion", "weight-l1"]
    args += ["--target", "macs=0.5", "--layers", "conv1,conv2", "--refine", "20", "--out", str(out)]
    code, err = _cli(monkeypatch, capsys, *args)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert 0.5 <= 1 - summary["after"]["macs"] / summary["before"]["macs"] < 0.56
    model, meta = load_checkpoint(out / "model")
    assert model.conv2.out_channels < 50 and meta["pruning"]["history"]
    code, err = _cli(monkeypatch, capsys, *args)
    assert code == 2 and "is not empty" in err
    code, err = _cli(monkeypatch, capsys, *args[:-1], str(tmp_path / "o2"), "--criterion", "magic")
    assert code == 2 and "unknown criterion 'magic'" in err and "weight-l1" in err
    code, err = _cli(monkeypatch, capsys, *args[:-1], str(tmp_path / "o3"), "--target", "macs=2")
    assert code == 2 and "(0, 1)" in err
    code, err = _cli(monkeypatch, capsys, *args[:-1], str(tmp_path / "o4"), "--compensate", "mean")
    assert code == 2 and "--compensate takes yes, no or auto; got 'mean'" in err
    code, err = _cli(
        monkeypatch, capsys, *args[:-1], str(tmp_path / "o5"), "--per-layer", "--cost", "macs"
    )
    assert code == 2 and "needs global_=True" in err


def test_cli_prune_global_cost_aware_and_compensated(tmp_path, monkeypatch, capsys, lenet):
    from shapprune.sources.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "base", lenet, name="lenet5", config={"seed": 0}, metrics={})
    out = tmp_path / "pruned"
    args = ["prune", "--model", str(tmp_path / "base.json"), "--criterion", "loo"]
    args += ["--target", "macs=0.5", "--global", "--cost", "macs", "--compensate", "yes"]
    args += ["--refine", "20"]
    code, err = _cli(monkeypatch, capsys, *args, "--per-class", "3", "--out", str(out))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compensate"] is True and summary["plans"][0]["cost"] == "macs"
    assert 0.5 <= 1 - summary["after"]["macs"] / summary["before"]["macs"] < 0.52
    model, _ = load_checkpoint(out / "model")  # folded biases reload
    assert model.conv2.out_channels < 50


@pytest.mark.parametrize("target", ["channels=0.3", "channels=0.7"])
def test_auto_compensation_keeps_the_removal_better_on_the_reference_examples(
    lenet, mnist5k, target
):
    layers = ["conv1", "conv2"]
    crit = get_criterion("weight-l1")
    pruned, summary = prune_model(
        lenet, mnist5k, crit, target, layers=layers, per_class=10, **PER_LAYER
    )
    assert summary["compensate"] == "auto"
    plan = summary["plans"][0]
    ref = reference_set(mnist5k.val, per_class=10, seed=0)
    example = mnist5k.val.x[:2]
    zeroed = apply_removals(lenet, plan["removals"], example)
    filled = apply_removals(lenet, plan["removals"], example, compensate=ref.x)
    losses = [evaluate(m, ref)["loss"] for m in (zeroed, filled)]
    assert losses[0] != losses[1]
    assert plan["compensated"] == (losses[1] < losses[0])
    kept = filled if plan["compensated"] else zeroed
    assert summary["after"]["loss"] == pytest.approx(evaluate(kept, mnist5k.test)["loss"])


def test_removal_that_contradicts_the_criterion_s_game_is_refused(lenet, mnist5k):
    crit = get_criterion("loo", compensate=True)
    with pytest.raises(ValueError, match="set the criterion's option compensate=false too"):
        prune_model(lenet, mnist5k, crit, "channels=0.5", layers=["conv1"], compensate=False)
    with pytest.raises(ValueError, match="compensate must be true, false or 'auto'"):
        prune_model(lenet, mnist5k, crit, "channels=0.5", layers=["conv1"], compensate="mean")


def test_refinement_changes_units_not_counts(lenet, mnist5k):
    crit = get_criterion("weight-l1")
    kw = {"layers": ["conv1", "conv2"], "per_class": 3, "compensate": False, "global_": False}
    _, plain = prune_model(lenet, mnist5k, crit, "macs=0.5", refine=0, **kw)
    _, refined = prune_model(lenet, mnist5k, crit, "macs=0.5", refine=40, **kw)
    info = refined["plans"][0]["refinement"]
    assert 0 < info["sets_evaluated"] <= 40 and info["value"] >= info["seed_value"]
    assert refined["removed"] == plain["removed"] and refined["refine"] == 40
    assert refined["after"]["macs"] == plain["after"]["macs"]
    with pytest.raises(ValueError, match="refine is a number of evaluations"):
        prune_model(lenet, mnist5k, crit, "macs=0.5", refine=-1, **kw)


def test_auto_scope_keeps_the_cut_better_on_the_reference_examples(lenet, mnist5k):
    crit = get_criterion("weight-l1")
    kw = {"layers": ["conv1", "conv2", "fc1"], "per_class": 5, "compensate": False, "refine": 0}
    lamp = {"global_": True, "normalisation": "lamp", "cost": None}  # LAMP's shares alone
    scopes = {"global": {"global_": True}, "per-layer": {"global_": False}, "global (lamp)": lamp}
    runs = {label: prune_model(lenet, mnist5k, crit, "macs=0.5", **how, **kw)
            for label, how in scopes.items()}  # fmt: skip
    pruned, auto = prune_model(lenet, mnist5k, crit, "macs=0.5", global_="auto", **kw)
    scope = auto["plans"][0]["scope"]
    ref = reference_set(mnist5k.val, per_class=5, seed=0)
    losses = {label: evaluate(m, ref)["loss"] for label, (m, _) in runs.items()}
    assert scope["reference_loss"] == pytest.approx(losses)  # the three candidates, each
    better = min(losses, key=losses.get)
    assert scope["chosen"] == better
    assert auto["removed"] == runs[better][1]["removed"]
    assert auto["after"]["loss"] == pytest.approx(runs[better][1]["after"]["loss"])
    assert runs["global (lamp)"][1]["removed"] != runs["global"][1]["removed"]  # two plans
    _, own = prune_model(lenet, mnist5k, crit, "macs=0.5", global_="auto",
                         normalisation="l1", **kw)  # fmt: skip
    assert set(own["plans"][0]["scope"]["reference_loss"]) == {"global", "per-layer"}
    with pytest.raises(ValueError, match="global_ must be true, false or 'auto'"):
        prune_model(lenet, mnist5k, crit, "macs=0.5", global_="both", **kw)
    with pytest.raises(ValueError, match="needs global_=True"):
        prune_model(lenet, mnist5k, crit, "macs=0.5", global_=False, cost="macs", **kw)


def test_a_macs_target_aims_the_estimators_at_its_cut(lenet, mnist5k):
    import numpy as np

    from shapprune.estimators.registry import estimate
    from shapprune.game.pruning_game import PruningGame
    from shapprune.pruning.compress import select_layers, units_fraction
    from shapprune.pruning.plan import Target

    example, layers = mnist5k.val.x[:2], ["conv1", "conv2"]
    units = select_layers(lenet, example, layers)
    fraction = units_fraction(lenet, units, Target.parse("macs=0.3"), example, lenet)
    uniform = prune_model(
        lenet, mnist5k, get_criterion("random"), "macs=0.3", layers=layers, **PER_LAYER
    )[1]
    assert fraction == pytest.approx(sum(uniform["removed"].values()) / 70)
    crit = get_criterion("network-shapley", method="bandit", budget=600)
    prune_model(
        lenet, mnist5k, crit, "macs=0.3", layers=layers, global_=True, per_class=2, refine=0
    )
    assert crit.last_estimate.info["k"] == round(fraction * 70) and crit.cut_fraction is None
    # a semivalue's window is centred on the kept size (it needs one: an error without)
    semi = get_criterion("shapley-semivalue", weights="window", budget=200)
    prune_model(lenet, mnist5k, semi, "channels=0.25", layers=["conv1"], per_class=2, **PER_LAYER)
    ref = reference_set(mnist5k.val, per_class=2, seed=0)
    game = PruningGame(lenet, "conv1", (ref.x, ref.y), compensate=True)
    direct = estimate(game, "semivalue", budget=200, seed=0, weights="window", kept=0.75)
    np.testing.assert_allclose(semi.last_estimate.values, direct.values, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="window weights need kept"):
        semi.score(lenet, ["conv1"], (ref.x, ref.y))


@pytest.mark.parametrize("steps", [1, 2])
def test_one_dependency_graph_per_model_pruned(monkeypatch, steps):
    """prune's defaults on the zoo VGG (both scopes, cost-aware bisection, compensation
    chosen, refinement) build one dependency graph per model they prune copies of, plus
    LRP's own of its float working copy: per step, two (it was 165 in all; every copy
    made for a plan, a cost or a removal now comes with its graph)."""
    from helpers import toy_splits

    from shapprune.game import coupling

    built = []
    real = coupling.DependencyGraph.build_dependency

    def counted(self, model, *args, **kwargs):
        built.append(type(model).__name__)
        return real(self, model, *args, **kwargs)

    monkeypatch.setattr(coupling.DependencyGraph, "build_dependency", counted)
    model = build_model("vgg", seed=0).eval()
    data = toy_splits(n=20, shape=(1, 28, 28))
    pruned, summary = prune_model(model, data, target="macs=0.5", per_class=1, refine=4,
                                  steps=steps)  # fmt: skip
    assert summary["after"]["macs"] <= 0.5 * summary["before"]["macs"]
    assert len(built) == 2 * steps, built
