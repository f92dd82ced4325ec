"""LRP composite specs: JSON round trip, depth groups, each rule by hand, attention rules,
conservation of head and neuron relevance, one-line errors."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from shapprune.criteria.lrp import LRPCriterion, make_composite, relevance
from shapprune.criteria.lrp_rules import depth_groups
from shapprune.criteria.lrp_spec import CompositeSpec, RuleSpec, load_spec
from shapprune.game.units import layer_units
from shapprune.zoo.models import Attention, Mlp, build_model


def _signed(model: nn.Module, layer: str, x, y, spec) -> torch.Tensor:
    """Signed relevance (examples x units) of ``layer``'s units under ``spec``."""
    model = model.eval().requires_grad_(True)
    units = layer_units(model, [layer], x[:2])
    model.requires_grad_(False)
    return relevance(model, units, x, y, lambda: make_composite(spec, model))[layer]


def _spec(**rules) -> CompositeSpec:
    groups = {"low": "epsilon", "mid": "epsilon", "high": "epsilon", "fc": "epsilon"}
    groups.update(rules)
    return CompositeSpec({g: RuleSpec(**r) if isinstance(r, dict) else RuleSpec(r)
                          for g, r in groups.items()})  # fmt: skip


# --- JSON -------------------------------------------------------------------------------------


def test_json_round_trip_is_equal_and_builds_the_same_relevance(tmp_path):
    spec = CompositeSpec(
        {"early": RuleSpec("gamma", gamma=0.7), "middle": RuleSpec("zplus"),
         "late": RuleSpec("alpha2beta1"), "head": RuleSpec("epsilon", epsilon=0.03)},
        attention="attnlrp", info={"objective": "auc"},
    )  # fmt: skip
    path = spec.save(tmp_path / "c.json")
    loaded = load_spec(path)
    assert loaded == spec and loaded.info == spec.info
    assert loaded.groups["middle"].rule == "z-plus"  # aliases read as the canonical name
    model = build_model("vit", embed_dim=16, depth=4, num_heads=2, seed=1)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    by_spec = _signed(model, "blocks.1.mlp.fc1", x, y, spec)
    by_file = _signed(model, "blocks.1.mlp.fc1", x, y, str(path))
    assert torch.equal(by_spec, by_file)
    other = CompositeSpec(spec.groups, attention="cp")
    assert not torch.allclose(_signed(model, "blocks.1.mlp.fc1", x, y, other), by_spec)


def test_unused_parameters_do_not_break_equality():
    assert RuleSpec("z-plus", epsilon=0.5, gamma=3.0) == RuleSpec("z-plus")
    assert RuleSpec("epsilon", epsilon=0.5) != RuleSpec("epsilon", epsilon=0.25)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("{not json", "is not JSON"),
        ('{"format": "other"}', "is not an LRP composite"),
        (None, "unknown LRP rule"),
        ('{"format": "shapprune-lrp-composite", "version": 1, "groups": {"low": "epsilon"}}',
         "neither the CNN groups"),
        ('{"format": "shapprune-lrp-composite", "version": 1, "attention": "magic", '
         '"groups": {"low": "epsilon", "mid": "epsilon", "high": "epsilon", "fc": "epsilon"}}',
         "unknown attention rule"),
        ('{"format": "shapprune-lrp-composite", "version": 1, "groups": {"low": {"rule": '
         '"gamma", "gamma": -1}, "mid": "epsilon", "high": "epsilon", "fc": "epsilon"}}',
         "must be >= 0"),
    ],
)  # fmt: skip
def test_bad_files_are_one_line_value_errors(tmp_path, text, needle):
    if text is None:  # an unknown rule name in an otherwise good file
        record = _spec().to_dict()
        record["groups"]["mid"] = {"rule": "softmax"}
        text = json.dumps(record)
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=needle) as err:
        load_spec(path)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=needle):  # the criterion checks it when built
        LRPCriterion(composite=str(path))


def test_missing_file_and_wrong_family_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="tune-lrp"):
        load_spec(tmp_path / "none.json")
    cnn_spec = _spec()
    vit = build_model("vit", embed_dim=16, depth=2, num_heads=2)
    with pytest.raises(ValueError, match="for a cnn but the model is a transformer"):
        make_composite(cnn_spec, vit)


# --- depth groups -----------------------------------------------------------------------------


def test_depth_groups_split_convolutions_in_thirds_and_blocks_a_quarter_half_quarter():
    vgg = build_model("vgg", cfg=(4, 4, "M", 4, 4, 4, "M", 4))  # 6 convolutions
    family, groups = depth_groups(vgg)
    convs = [g for n, g in groups.items() if n.startswith("features")]
    assert family == "cnn" and convs == ["low"] * 2 + ["mid"] * 2 + ["high"] * 2
    assert groups["classifier.0"] == groups["classifier.2"] == "fc"
    family, groups = depth_groups(build_model("vit", embed_dim=16, depth=8, num_heads=2))
    assert family == "transformer"
    assert [groups[f"blocks.{i}"] for i in range(8)] == ["early"] * 2 + ["middle"] * 4 + [
        "late"
    ] * 2


# --- each rule by hand ------------------------------------------------------------------------


def _two_layer() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """x = (1, 2) -> identity -> ReLU -> logit 3 a1 - a2 = 1: contributions +3 and -2."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[2].weight.copy_(torch.tensor([[3.0, -1.0], [0.0, 0.0]]))
    return model, torch.tensor([[1.0, 2.0]]), torch.tensor([0])


@pytest.mark.parametrize(
    "rule, expected",
    [
        ({"rule": "epsilon", "epsilon": 1e-9}, [3.0, -2.0]),  # a_j w_j / z * R, R = z = 1
        ({"rule": "epsilon", "epsilon": 1.0}, [1.5, -1.0]),  # z + eps = 2 absorbs half
        ({"rule": "z-plus"}, [1.0, 0.0]),  # positive contributions only
        ({"rule": "alpha2-beta1"}, [2.0, -1.0]),  # 2 * positive share - 1 * negative share
        ({"rule": "gamma", "gamma": 0.25}, [3.75 / 1.75, -2.0 / 1.75]),  # w + 0.25 w+
    ],
)
def test_each_rule_by_hand(rule, expected):
    model, x, y = _two_layer()
    rel = _signed(model, "0", x, y, _spec(fc=rule))
    assert rel[0].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)


# --- attention and conservation ---------------------------------------------------------------


class _Heads(nn.Module):
    """tokens -> pre (linear) -> attention -> token mean -> classifier; no biases, so that
    LRP with a tiny epsilon conserves relevance down to the heads."""

    def __init__(self, mlp: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pre = nn.Linear(8, 8, bias=False)
        self.mix = Mlp(8, 12) if mlp else Attention(8, num_heads=2, qkv_bias=False)
        self.fc = nn.Linear(8, 3, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.mix(self.pre(x)).mean(1))


def _tokens():
    g = torch.Generator().manual_seed(3)
    return torch.randn(5, 6, 8, generator=g), torch.tensor([0, 1, 2, 0, 1])


def _fine_spec(attention: str) -> CompositeSpec:
    """Epsilon 1e-9 on every linear layer (all "fc": the toy has no blocks), ``attention``."""
    return CompositeSpec({"low": RuleSpec("epsilon", epsilon=1e-9), "mid": RuleSpec("epsilon"),
                          "high": RuleSpec("epsilon"), "fc": RuleSpec("epsilon", epsilon=1e-9)},
                         attention)  # fmt: skip


@pytest.mark.parametrize("attention", ["weights", "cp", "attnlrp"])
def test_head_relevance_sums_to_the_logit(attention):
    model, (x, y) = _Heads(), _tokens()
    logit = model(x).gather(1, y[:, None])[:, 0].double()
    heads = _signed(model, "mix", x, y, _fine_spec(attention))
    assert heads.shape == (5, 2)
    assert torch.allclose(heads.sum(1), logit, rtol=1e-4, atol=1e-6)


def test_neuron_relevance_sums_to_the_logit():
    model, (x, y) = _Heads(mlp=True), _tokens()
    logit = model(x).gather(1, y[:, None])[:, 0].double()
    neurons = _signed(model, "mix.fc1", x, y, _fine_spec("cp"))
    assert neurons.shape == (5, 12)
    assert torch.allclose(neurons.sum(1), logit, rtol=1e-4, atol=1e-6)


def test_attention_rules_conserve_or_not_below_the_attention():
    """Weights and CP-LRP conserve relevance through the attention; AttnLRP's softmax rule
    does not (it absorbs the softmax's bias part), and it sends relevance through q and k."""
    model, (x, y) = _Heads(), _tokens()
    logit = model(x).gather(1, y[:, None])[:, 0].double()
    below = {a: _signed(model, "pre", x, y, _fine_spec(a)) for a in ("weights", "cp")}
    for rel in below.values():
        assert torch.allclose(rel.sum(1), logit, rtol=1e-3, atol=1e-5)
    assert not torch.allclose(below["weights"], below["cp"], rtol=1e-3)
    attn = _signed(model, "pre", x, y, _fine_spec("attnlrp"))
    assert not torch.allclose(attn, below["cp"], rtol=1e-2)


@pytest.mark.parametrize("attention", ["weights", "cp", "attnlrp"])
def test_torchvision_vit_heads_and_neurons_under_each_attention_rule(attention):
    from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

    from shapprune.criteria.lrp_tune import unit_scores

    torch.manual_seed(0)
    vit = TorchvisionViT(16, 8, num_layers=4, num_heads=2, hidden_dim=16, mlp_dim=32).eval()
    nn.init.normal_(vit.heads.head.weight, std=0.1)  # torchvision initialises it to zeros
    _, groups = depth_groups(vit)
    assert list(groups.values()) == ["early", "middle", "middle", "late"]
    spec = CompositeSpec.uniform("epsilon", "transformer", attention)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2])
    heads = unit_scores(vit, (x, y), "heads", spec)  # the canonized model computes the same
    neurons = unit_scores(vit, (x, y), "neurons", spec)
    assert len(heads) == 4 and all(s.shape == (2,) and (s > 0).all() for s in heads.values())
    assert len(neurons) == 4 and all(s.shape == (32,) for s in neurons.values())
    first = heads["encoder.layers.encoder_layer_0.self_attention"]
    other = unit_scores(vit, (x, y), "heads", CompositeSpec.uniform("epsilon", "transformer",
                        "attnlrp" if attention != "attnlrp" else "cp"))  # fmt: skip
    # the attention rule of the blocks above changes the relevance reaching block 0's heads
    assert not np.allclose(other["encoder.layers.encoder_layer_0.self_attention"], first)


def test_timm_vit_heads_and_neurons_with_a_tuned_spec():
    import timm

    from shapprune.criteria.lrp_tune import unit_scores

    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", num_classes=3, img_size=16, patch_size=4, depth=3
    ).eval()
    family, groups = depth_groups(vit)
    assert family == "transformer" and list(groups.values()) == ["early", "middle", "late"]
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2])
    scores = {}
    for attention in ("cp", "attnlrp"):
        spec = CompositeSpec.uniform("epsilon", "transformer", attention)
        # the canonized model must compute the same outputs (checked inside)
        scores[attention] = unit_scores(vit, (x, y), "heads", spec)
        assert list(scores[attention]) == [f"blocks.{i}.attn" for i in range(3)]
    assert not np.allclose(scores["cp"]["blocks.0.attn"], scores["attnlrp"]["blocks.0.attn"])
    neurons = unit_scores(vit, (x, y), "neurons", CompositeSpec.uniform("z-plus", "transformer"))
    assert all(s.shape == (768,) and np.isfinite(s).all() for s in neurons.values())


def test_a_spec_file_sets_the_criterion_normalisation(tmp_path):
    spec = CompositeSpec(_spec().groups, info={"normalisation": "none"})
    path = spec.save(tmp_path / "c.json")
    assert LRPCriterion(composite=str(path)).normalisation == "none"
    assert LRPCriterion().normalisation == "l1"


def test_torchvision_resnet18_filters_with_a_spec_file(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=4).eval()
    _, groups = depth_groups(model)
    convs = [g for n, g in groups.items() if g != "fc"]
    assert len(convs) == 20 and convs.count("low") == convs.count("high") == 7
    assert groups["conv1"] == "low" and groups["layer4.1.conv2"] == "high"
    assert groups["fc"] == "fc"
    path = _spec(low="z-plus", mid={"rule": "gamma", "gamma": 0.5}).save(tmp_path / "r.json")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    layers = ["layer1.0.conv1", "layer4.1.conv1"]
    tuned = LRPCriterion(composite=str(path)).score(model, layers, (x, y))
    plain = LRPCriterion(composite="epsilon").score(model, layers, (x, y))
    assert tuned["layer1.0.conv1"].shape == (64,) and tuned["layer4.1.conv1"].shape == (512,)
    # layer4's filters enter a "high" convolution (epsilon in both): the same relevance;
    # layer1's enter a "low" one (z-plus against epsilon): different
    np.testing.assert_allclose(tuned["layer4.1.conv1"], plain["layer4.1.conv1"], rtol=1e-5)
    assert not np.allclose(tuned["layer1.0.conv1"], plain["layer1.0.conv1"], rtol=1e-2)
