"""Progress on long runs: rate, time left, and the bandit's players in doubt."""

import numpy as np
import torch

from shapprune import cli
from shapprune.estimators.registry import estimate


class Linear:
    n_players = 30

    def value(self, masks: torch.Tensor) -> torch.Tensor:
        w = torch.linspace(0, 1, self.n_players, dtype=torch.float64)
        z = masks.reshape(-1, self.n_players).double()
        return z @ w + 2 * (z.mean(1) ** 2)


def test_fields_say_rate_time_left_and_doubt():
    plain = cli.progress_fields(500, 2_000, 10.0, {})
    assert plain == {"rate": "(50.0/s)", "left": "0:30 left", "doubt": ""}
    bandit = cli.progress_fields(500, 200_000, 10.0, {"in_doubt": 1234})
    # the bandit may stop early: the time left at this rate is an upper bound
    assert bandit == {"rate": "(50.0/s)", "left": "≤ 1:06:30 left", "doubt": ", 1,234 in doubt"}
    assert cli.progress_fields(0, 100, 0.0, {}) == {"rate": "", "left": "", "doubt": ""}


def test_the_bar_gets_the_bandit_status(monkeypatch):
    seen = []
    real = cli.progress_fields

    def spy(done, budget, seconds, status):
        seen.append(dict(status))
        return real(done, budget, seconds, status)

    monkeypatch.setattr(cli.progress, "progress_fields", spy)
    with cli.progress.evaluation_progress("bandit", 3_000) as update:
        est = estimate(Linear(), "bandit", 3_000, seed=0, k=5, progress=update)
    assert seen and all("in_doubt" in s for s in seen)
    assert seen[0]["in_doubt"] == 30 and seen[-1]["in_doubt"] <= 30
    assert np.isfinite(est.values).all()
    with cli.progress.evaluation_progress("permutation", 3_000) as update:  # no status: still fine
        estimate(Linear(), "permutation", 3_000, seed=0, progress=update)


def test_criteria_deep_in_a_job_report_through_using_progress():
    from shapprune.estimators.registry import using_progress

    said = []
    update = cli.status_progress(said.append, "scoring")
    with using_progress(update):  # the estimate below is given no progress of its own
        estimate(Linear(), "bandit", 3_000, seed=0, k=5)
        estimate(Linear(), "permutation", 1_000, seed=0)
    bandit = [s for s in said if "in doubt" in s]
    assert bandit and bandit[0].startswith("scoring: ") and "/3,000 evaluations" in bandit[0]
    assert "/1,000 evaluations" in said[-1] and "in doubt" not in said[-1]  # the next one
    said.clear()
    estimate(Linear(), "permutation", 1_000, seed=0)  # outside: nothing reported
    assert said == []


def test_a_plans_refinement_reports_its_count_and_time_left():
    """`prune`'s refinement stage: a count out of its budget, named as such (not "scoring")."""
    import torch

    from shapprune.estimators.registry import using_progress
    from shapprune.pruning.refinement import refine_plan
    from shapprune.zoo.models import build_model

    model = build_model("lenet5", seed=0).eval()
    x, y = torch.randn(20, 1, 28, 28), torch.arange(20) % 10
    scores = {"conv1": torch.rand(20, generator=torch.Generator().manual_seed(0)).numpy()}
    said = []
    with using_progress(cli.status_progress(said.append, "scoring")):
        refine_plan(model, {"conv1": [0, 1, 2, 3, 4]}, scores, (x, y), 24)
    assert said and all(s.startswith("refining: ") for s in said)
    assert said[-1].split(" evaluations")[0].endswith("/24") and "left" in said[0]


def test_a_plans_bisection_reports_the_candidate_removals_it_measures():
    import numpy as np
    import torch

    from shapprune.estimators.registry import using_progress
    from shapprune.pruning.plan import make_plan
    from shapprune.zoo.models import build_model

    model = build_model("lenet5", seed=0).eval()
    scores = {"conv1": np.arange(20.0), "conv2": np.arange(50.0)}
    said = []
    with using_progress(cli.status_progress(said.append, "scoring")):
        make_plan(model, scores, "macs=0.4", torch.randn(2, 1, 28, 28))
    assert said and all(s.startswith("planning to macs=0.4: ") for s in said)
    bound = int(said[-1].split("/")[1].split(" ")[0])
    assert "candidate removals (at most)" in said[-1] and bound <= 3 + 2 * 7  # 70 units
    assert int(said[-1].split(": ")[1].split("/")[0]) == len(said) <= bound


def test_measuring_a_split_reports_the_examples_counted():
    """Measuring before and after streams the test split: a count of examples out of the
    split's size, under the stage the caller names; a split of unknown size says nothing."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset, TensorDataset

    from shapprune.evaluation.measure import evaluate
    from shapprune.progress import using_progress
    from shapprune.zoo.models import build_model

    model = build_model("lenet5", seed=0).eval()
    x, y = torch.randn(50, 1, 28, 28), torch.arange(50) % 10
    said = []
    with using_progress(cli.status_progress(said.append, "scoring")):
        out = evaluate(model, TensorDataset(x, y), batch_size=20, stage="measuring the original")
    assert [s.split(" examples")[0] for s in said] == [
        f"measuring the original: {n}/50" for n in (20, 40, 50)
    ]
    assert out["n"] == 50

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(x, y, strict=True))

    said.clear()
    with using_progress(cli.status_progress(said.append, "scoring")):
        evaluate(model, DataLoader(Stream(), batch_size=20), stage="measuring")
    assert said == []
