"""Experiment configs: checked key by key, with errors that name the key."""

from pathlib import Path

import pytest
from toys import register_toys

from shapprune.evaluation.config import load_config, parse_config

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid(path):
    config = load_config(path)
    assert config.experiments and config.model


def test_criteria_with_options_and_labels():
    config = parse_config({"criteria": ["random", {"name": "shapley-kernel", "budget": 50}]})
    assert [c.label for c in config.criteria] == ["random", "shapley-kernel[budget=50]"]
    assert config.criteria[1].options == {"budget": 50}


@pytest.mark.parametrize(
    "raw,needle",
    [
        ({"criteria": ["random"], "sedes": [0]}, "unknown key 'sedes'"),
        ({"criteria": ["random"], "seeds": 3}, "key 'seeds' must be list"),
        ({"criteria": ["random"], "per_class": "ten"}, "key 'per_class' must be int"),
        ({"criteria": ["random"], "global": "yes"}, "key 'global' must be bool"),
        ({"criteria": ["random"], "rates": [0.1, "x"]}, "every entry of 'rates'"),
        ({"criteria": ["random"], "rates": [1.5]}, "'rates' must lie in [0, 1)"),
        ({"criteria": [{"budget": 3}]}, "key 'criteria' entries"),
        ({"criteria": ["random"], "experiments": ["magic"]}, "key 'experiments' has unknown"),
        ({"experiments": ["robustness"]}, "key 'criteria' must list"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_configs_name_the_key(raw, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace(")", r"\)")):
        parse_config(raw)


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("criteria: [random\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="nothere.yaml not found"):
        load_config(tmp_path / "nothere.yaml")


@pytest.mark.parametrize(
    "entry,needle",
    [
        ({"name": "shapley-permutation", "budgt": 2000}, "config: key 'criteria': criterion "
         "'shapley-permutation' has no option 'budgt'; its options: budget, metric"),
        ({"name": "shapley-kernel", "budget": "many"}, "option 'budget' must be int or None"),
        ({"name": "weight-l1", "budget": 10}, "'weight-l1' has no option 'budget'"),
        ("nope", "key 'criteria' has unknown criterion 'nope'; known: apoz"),
    ],
)  # fmt: skip
def test_criterion_options_are_checked_against_the_declaration(entry, needle):
    with pytest.raises(ValueError) as err:
        parse_config({"criteria": [entry]})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_cost_methods_must_be_registered(registries):
    with pytest.raises(ValueError, match="key 'cost_methods' has unknown \\['toyloo'\\]"):
        parse_config({"criteria": ["random"], "cost_methods": ["toyloo"]})
    register_toys()  # registered later, accepted without editing the config code
    config = parse_config({"criteria": ["toy-index", "shapley-toyloo"], "cost_methods": ["toyloo"]})
    assert [c.name for c in config.criteria] == ["toy-index", "shapley-toyloo"]
