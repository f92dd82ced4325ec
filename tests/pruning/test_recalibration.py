"""BatchNorm statistics re-estimated after removal: the statistics are the reference
inputs', the model is left as it was found otherwise, and prune keeps what it re-estimated."""

import pytest
import torch
from helpers import randomise_norms, toy_splits
from torch import nn

from shapprune.data import reference_set
from shapprune.pruning.compress import prune_model
from shapprune.pruning.recalibration import batchnorms, recalibrate_batchnorm
from shapprune.zoo.models import build_model


def _net() -> nn.Module:
    torch.manual_seed(0)
    return randomise_norms(
        nn.Sequential(
            nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5),
            nn.Flatten(), nn.Linear(6 * 6 * 6, 8), nn.BatchNorm1d(8), nn.Linear(8, 2),
        )
    )  # fmt: skip


def _inputs_of(module: nn.Module, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = module.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return seen[0]


def test_the_statistics_become_the_inputs_own():
    model, x = _net(), torch.randn(40, 3, 8, 8)
    assert recalibrate_batchnorm(model, x) == 2
    # Exact for the first; a later one saw its inputs normalised by the batch's biased
    # variance where eval mode now uses the unbiased one: a relative 1/(2n) apart
    for norm, (dims, tol) in zip(batchnorms(model), [([0, 2, 3], 1e-5), ([0], 1e-2)], strict=True):
        seen = _inputs_of(norm, model, x)
        torch.testing.assert_close(norm.running_mean, seen.mean(dims), atol=tol, rtol=tol)
        torch.testing.assert_close(norm.running_var, seen.var(dims), atol=tol, rtol=tol)


def test_chunks_are_averaged_and_a_single_last_example_is_folded_in():
    model, x = _net(), torch.randn(9, 3, 8, 8)
    recalibrate_batchnorm(model, x, chunk=4)  # 4, 5: a chunk of 1 cannot be normalised
    first = model[1]
    seen = _inputs_of(first, model, x)
    expected = (seen[:4].mean([0, 2, 3]) + seen[4:].mean([0, 2, 3])) / 2
    torch.testing.assert_close(first.running_mean, expected, atol=1e-5, rtol=1e-5)
    assert int(first.num_batches_tracked) == 2


def test_the_model_is_left_as_found():
    model, x = _net(), torch.randn(10, 3, 8, 8)
    model[1].momentum = 0.3
    model.train()
    model[3].eval()  # a mixed state is kept too
    before = {name: m.training for name, m in model.named_modules()}
    weights = [p.clone() for p in model.parameters()]
    recalibrate_batchnorm(model, x)
    assert {name: m.training for name, m in model.named_modules()} == before
    assert model[1].momentum == 0.3 and model[6].momentum == 0.1
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))


def test_dropout_is_off_while_reestimating():
    model, x = _net(), torch.randn(30, 3, 8, 8)
    recalibrate_batchnorm(model, x)
    again = _net()
    again.load_state_dict(model.state_dict())
    recalibrate_batchnorm(again, x)  # dropout on would draw other masks: other statistics
    torch.testing.assert_close(model[6].running_mean, again[6].running_mean)


def test_nothing_to_do_without_batchnorm_and_too_few_examples_refused():
    plain = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    assert recalibrate_batchnorm(plain, torch.randn(1, 3, 2, 2)) == 0
    untracked = nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False))
    assert recalibrate_batchnorm(untracked, torch.randn(1, 3)) == 0
    with pytest.raises(ValueError, match="at least 2 examples"):
        recalibrate_batchnorm(_net(), torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("recalibrate", [True, False])
def test_prune_keeps_the_statistics_of_its_reference_examples(recalibrate):
    """ResNet-20 (BatchNorm after every convolution, residual sums): with ``recalibrate``
    the pruned model's statistics are those of the reference examples through the pruned
    network; without, the original model's, sliced to the channels that stay."""
    model = randomise_norms(build_model("resnet20", seed=0))
    data = toy_splits(40, shape=(1, 28, 28))
    pruned, summary = prune_model(
        model, data, "weight-l1", "macs=0.5", global_=False, compensate=False, refine=0,
        per_class=3, recalibrate=recalibrate,
    )  # fmt: skip
    assert summary["recalibrate"] is recalibrate
    ref = reference_set(data.val, per_class=3, seed=0, classes=data.classes)
    norm = pruned.layer3[2].bn2  # deep: every removal upstream changed its inputs
    seen = _inputs_of(norm, pruned, ref.x)
    found = torch.allclose(norm.running_mean, seen.mean([0, 2, 3]), atol=2e-2)  # see above
    assert found is recalibrate
    if not recalibrate:  # every value one the original had, for a channel that stayed
        original = model.layer3[2].bn2.running_mean
        assert torch.isin(norm.running_mean, original).all()
