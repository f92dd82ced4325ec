"""``prune_model`` with ``shapprune prune``'s defaults on torchvision's classification classes.

Small instances (random weights, 32 x 32 inputs, one reference example per class) of a
representative few: DenseNet (a BatchNorm over a concatenation follows, in child order, a
convolution of fewer channels), a BatchNorm ResNet and ConvNeXt (LayerNorm, depthwise
convolutions, layer scale). Every family at its builder's size, with times:
``benchmarks/torchvision_families.py``.
"""

import pytest
import torch
from helpers import randomise_norms
from torch import nn
from torchvision.models import ConvNeXt, DenseNet, ResNet
from torchvision.models.convnext import CNBlockConfig
from torchvision.models.resnet import BasicBlock

from shapprune.criteria.registry import get_criterion
from shapprune.pruning import compress
from shapprune.pruning.compress import prune_model
from shapprune.pruning.plan import Target
from shapprune.zoo.data import DatasetSplits, Split

CLASSES = 10
FAMILIES = {
    "densenet": lambda: DenseNet(8, (2, 2), num_init_features=16, bn_size=2, num_classes=10),
    "resnet": lambda: ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10),
    "convnext": lambda: ConvNeXt(
        [CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10
    ),
}


def _splits(size: int = 32) -> DatasetSplits:
    g = torch.Generator().manual_seed(0)

    def split() -> Split:
        y = torch.arange(CLASSES)
        return Split(torch.randn(CLASSES, 3, size, size, generator=g), y)

    return DatasetSplits(split(), split(), split(), "random", CLASSES, 3, size)


@pytest.mark.parametrize("family", FAMILIES)
def test_prune_defaults_meet_a_macs_target(family):
    torch.manual_seed(0)
    model = randomise_norms(FAMILIES[family]())
    data = _splits()
    target = Target.parse("macs=0.5")
    pruned, summary = prune_model(
        model,
        data,
        target=target,
        refine=2,
        per_class=1,  # else the defaults: prune's
    )
    assert summary["compensate"] == "auto" and summary["plans"][0]["scope"]["chosen"]
    assert summary["after"]["macs"] <= 0.5 * summary["before"]["macs"]
    assert sum(summary["removed"].values()) > 0
    with torch.no_grad():
        out = pruned(data.test.x)
    assert out.shape == (CLASSES, CLASSES) and bool(out.isfinite().all())


def test_auto_compensation_meets_the_target_with_the_biases_it_adds(monkeypatch):
    """The compensated removal gives bias-free consumers a bias, whose additions count as
    MACs: a plan found on zeroed removals missed the target when compensation won."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, bias=False), nn.ReLU(), nn.Conv2d(32, 32, 1, bias=False), nn.ReLU(),
        nn.Conv2d(32, 32, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip

    def favour_biases(model: nn.Module, split) -> dict:  # the compensated removal wins
        biased = sum(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
        return {"loss": -float(biased), "accuracy": 0.0}

    monkeypatch.setattr(compress, "evaluate", favour_biases)
    crit = get_criterion("weight-l1")
    _, summary = prune_model(
        model, _splits(8), crit, "macs=0.5", global_=True, compensate="auto", per_class=1
    )
    assert summary["plans"][0]["compensated"]
    assert summary["after"]["macs"] <= 0.5 * summary["before"]["macs"]
