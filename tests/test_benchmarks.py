"""The benchmark scripts run end to end on tiny sizes, so that they cannot rot.

Their quick runs take minutes, so they are a stage of their own (``-m benchmarks``, which
CI runs after the suite): ``python -m pytest -m benchmarks -n 0``."""

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = [
    "throughput",
    "estimators",
    "captum_vs",
    "pruned_models",
    "scale",
    "criteria_lenet",
    "vs_torch_pruning",
    "executors",
    "decision_estimators",
    "lrp_tuning",
    "bandit",
    "prune_tradeoffs",
    "device_check",
    "torchvision_families",
    "folder_memory",
    "own_model",
    "real_scale",
    "held_out",
    "estimators_at_scale",
    "allocation",
]


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        "SHAPPRUNE_CACHE": str(tmp_path / "cache"),
        "PATH": "/usr/bin:/bin",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(BENCHMARKS.parent / "src"),  # this checkout's shapprune, installed or not
    }
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=480
    )


def _spread_ok(s: dict) -> bool:
    return 0 < s["min"] <= s["median"] <= s["max"]


def _check_throughput(r: dict) -> None:
    modes = ["naive", "prefix-cached, one", "prefix-cached + batched", "decomposed", "limit"]
    got = {(lay["model"], lay["layer"], lay["units"]) for lay in r["layers"]}
    assert {("lenet5", "conv2", 50), ("vgg", "features.11", 128)} <= got
    for lay in r["layers"]:
        rows = lay["rows"]
        assert len(rows) == len(modes)
        assert all(m in row["mode"] for m, row in zip(modes, rows, strict=True))
        assert rows[0]["x_naive"] == 1.0 and rows[-1]["x_limit"] == 1.0
        assert all(_spread_ok(row["evals_per_s"]) for row in rows)
        naive = rows[0]["evals_per_s"]["median"]
        for row in rows:  # the ratios are the rates divided, as written
            assert row["x_naive"] == pytest.approx(row["evals_per_s"]["median"] / naive)


def _check_estimators(r: dict) -> None:
    games = [k for k in r if k != "machine"]
    assert "tinycnn_conv1" in games and r["tinycnn_conv1"]["reference"]["evals"] == 2**8
    for game in games:
        rows = r[game]["rows"]
        assert {"permutation, plain", "kernel (paired)", "leave-one-out"} <= {
            row["estimator"] for row in rows
        }
        for row in rows:
            assert 0 < row["evals"] <= row["budget"] and row["nrmse"] >= 0
            assert -1 <= row["spearman_min"] <= row["spearman"] <= 1


def _check_captum_vs(r: dict) -> None:
    assert set(r["layers"]) == {"conv1", "conv2"}  # every layer of LeNet-5's convolutions
    for layer, lay in r["layers"].items():
        methods = lay["methods"]
        assert len(methods) == 3 and lay["players"] == {"conv1": 20, "conv2": 50}[layer]
        user = methods["Captum ShapleyValueSampling, user's hook wrapper"]
        assert user["speedup"] == 1.0 and lay["reference"]["evals"] > 0
        if layer == "conv1":  # two halves of the reference, and their agreement
            assert -1 <= lay["reference"]["halves_spearman"] <= 1
        for name, m in methods.items():
            assert m["runs"] and all(run["evals"] > 0 and run["seconds"] > 0 for run in m["runs"])
            assert 0 < m["speedup"] < float("inf")
            assert m["speedup"] == pytest.approx(user["seconds"] / m["seconds"])
            for run in m["runs"]:  # reached exactly when the agreement reached rho
                assert run["reached"] == (run["spearman"] >= r["rho"]), name
                if "budget" in run:
                    assert run["evals"] <= run["budget"], name


def _check_pruned_models(r: dict) -> None:
    assert r["models"] and r["criterion"] == "weight-l1"
    for m in r["models"]:
        original = m["original"]
        assert m["pruned"]
        for p in m["pruned"]:
            assert p["params"] < original["params"] and p["macs"] < original["macs"]
            assert p["macs_ratio"] == pytest.approx(p["macs"] / original["macs"])
            assert p["macs_removed"] == pytest.approx(1 - p["macs_ratio"])
            assert set(p["removed"]) <= set(m["layers"]) and all(p["removed"].values())
            assert 0 <= p["accuracy"] <= 1 and _spread_ok(p["latency_ms_b1"])


def _check_scale(r: dict) -> None:
    assert len(r["runs"]) >= 2
    for run in r["runs"]:
        for lay in run["layers"]:
            assert 0 < lay["evaluations"] <= lay["budget"]
            assert lay["stacked_pass_mib"] == pytest.approx(
                lay["stack_size"] * lay["per_coalition_mib"]
            )
            assert lay["stacked_pass_mib"] <= run["memory_mb"]  # the memory budget holds
            assert lay["images_per_pass"] <= run["reference"]
        assert run["evaluations"] == sum(lay["evaluations"] for lay in run["layers"])


def _check_criteria_lenet(r: dict) -> None:
    # half the conv filters of LeNet-5: the architecture's numbers are known exactly
    assert (r["before"]["params"], r["before"]["macs"]) == (431_080, 2_338_170)
    assert (r["after"]["params"], r["after"]["macs"]) == (212_045, 772_090)
    assert {"random", "weight-l1"} <= {row["criterion"] for row in r["rows"]}
    assert all(0 <= row["accuracy"] <= 1 and row["runs"] >= 1 for row in r["rows"])


def _check_vs_torch_pruning(r: dict) -> None:
    assert r["models"] and r["targets"] and r["seeds"]
    sides = {"torch-pruning", "shapprune"}
    assert {m.split(" ", 1)[0] for m in r["methods"]} == {"TP", "shapprune"}
    for m in r["models"]:
        original, bn = m["original"], m["has_batchnorm"]
        expected = {x for x in r["methods"] if bn or "bn-scale" not in x}
        for target in r["targets"]:
            rows = [row for row in m["rows"] if row["target"] == target]
            assert {row["method"] for row in rows} == expected  # every method, every target
            for row in rows:
                assert row["side"] in sides and "oneshot" in row, row["runs"]  # none failed
                assert len(row["runs"]) == (len(r["seeds"]) if row["seeded"] else 1)
                ft = row["finetuned"]  # every seed's fine-tune
                assert ft["n"] == len(r["seeds"]) and 0 <= ft["mean"] <= 1
                for run in row["runs"]:
                    # the bisection meets the target: the smallest cut that reaches it
                    assert target <= run["macs_removed"] <= target + 0.05, row["method"]
                    assert run["macs_ratio"] == pytest.approx(run["macs"] / original["macs"])
                    assert run["params_ratio"] == pytest.approx(run["params"] / original["params"])
                    assert run["params"] < original["params"] and run["seconds"] > 0
                    assert 0 <= run["oneshot"] <= 1
                assert row["met"] == all(
                    abs(run["macs_removed"] - target) <= r["tolerance"] for run in row["runs"]
                )
            for stage in ("oneshot", "finetuned"):
                (v,) = [
                    v
                    for v in r["verdicts"]
                    if (v["model"], v["target"], v["stage"]) == (m["model"], target, stage)
                ]
                for side in sides:  # the best of each side is the best of its rows
                    top = max(row[stage]["mean"] for row in rows if row["side"] == side)
                    assert v["best"][side]["accuracy"] == top
                assert v["gap"] == pytest.approx(
                    v["best"]["shapprune"]["accuracy"] - v["best"]["torch-pruning"]["accuracy"]
                )
    assert len(r["plots"]) == len(r["models"])


def _check_executors(r: dict) -> None:
    labels = [row["executor"] for row in r["rows"]]
    assert labels[0] == "serial, 1 worker" and {"processes, 2 workers", "ray, 2 workers"} <= set(
        labels
    )
    for row in r["rows"]:
        assert row["identical_to_serial"], row["executor"]  # same seed, same values
        assert row["evals_per_s"] > 0 and _spread_ok(row["seconds"])
        assert row["speedup_vs_serial"] == pytest.approx(
            r["rows"][0]["seconds"]["median"] / row["seconds"]["median"]
        )
    assert set(r["speedup_2_workers"]) == {"processes", "ray"}


def _check_decision_estimators(result: dict) -> None:
    (r,) = result["layers"]
    ks, seeds, n = r["ks"], r["seeds"], r["game"]["players"]
    methods = {row["method"] for row in r["rows"]}
    assert {"shapley (permutation)", "banzhaf", "refine (shapley)"} <= methods
    assert len(r["rows"]) == len(methods) * len(ks) * len(seeds)  # every method, k and seed
    for row in r["rows"]:
        k = row["k"]
        assert len(set(row["removed"])) == k and set(row["removed"]) <= set(range(n))
        assert 0 < row["evals"] <= r["budget"] and 0 <= row["accuracy"] <= 1
        expected = len(set(row["removed"]) & set(r["oracle"]["sets"][str(k)])) / k
        assert row["overlap"] == expected
        if r["oracle"]["exhaustive"][str(k)]:  # nothing beats an exhaustive oracle set
            assert row["regret"] >= -1e-9
    for m, by_key in r["summary"].items():
        rows = [row for row in r["rows"] if row["method"] == m and row["k"] == ks[0]]
        mean = sum(row["regret"] for row in rows) / len(rows)
        assert by_key["regret"][str(ks[0])] == pytest.approx(mean)


def _check_lrp_tuning(r: dict) -> None:
    (run,) = r["runs"]
    assert run["setting"] == "tinycnn:filters" and run["n_units"] == 24
    rows = run["rows"]
    assert set(rows) == set(r["summary"]["tinycnn:filters"]) - {"spearman"}
    for row in rows.values():
        assert len(row["curve"]) == 20 and 0 <= row["auc"] <= 1
        assert row["auc"] == pytest.approx(sum(row["curve"]) / 20)
    tuned = rows["LRP tuned (AUC)"]
    assert tuned["reference_auc"] >= tuned["reference_epsilon"]  # epsilon is its first trial
    cal = rows["LRP tuned (Shapley)"]
    assert -1 <= cal["spearman_before"] <= cal["spearman_after"] <= 1


def _check_bandit(r: dict) -> None:
    assert r["fractions"] == [0.1, 0.3, 0.5] and r["overlap"] == 0.9
    for m in r["models"]:
        n, cap = m["units"], 2 + m["ladder_walks"][-1] * (m["units"] - 1)
        assert {row["method"] for row in m["rows"]} >= {"permutation", "bandit"}
        for row in m["rows"]:
            assert row["k"] == max(1, round(row["fraction"] * n))
            pairs = zip(row["evals"], row["budgets"], strict=True)
            assert all(0 < e <= b <= cap for e, b in pairs)
            assert all(0 <= o <= 1 for o in row["overlaps"])
            good = row["evals_to_overlap"]
            assert good is None or (good in row["evals"] and row["overlaps"][-1] >= 0.9)
            if row["method"].startswith("bandit"):
                assert row["settled"] in (True, False) and 0 <= row["confidence"] <= 1
                assert row["settled"] == (row["in_doubt"] == 0)
        quality = m["equal_quality"]
        assert len(quality) == len(r["fractions"]) * len({row["method"] for row in m["rows"]})
        for q in quality:  # permutation reaches its own overlap, at its largest budget at worst
            assert q["method"] != "permutation" or q["evals"] is not None
    assert r["projection"]["units"] == 26_000 and r["projection"]["rows"]


def _check_prune_tradeoffs(r: dict) -> None:
    cells = r["cells"]
    assert len(cells) == 2 and {c["refine"] for c in cells} == {0, 20}
    for c in cells:
        assert c["reference_examples"] == 10 * c["per_class"] and c["seconds"] > 0
        assert 0 <= c["accuracy"] <= 1 and c["scope"] in ("global", "global (lamp)", "per-layer")
        assert 0.45 <= c["macs_ratio"] <= 0.5  # the target met: at least half the MACs gone


def _check_device_check(r: dict) -> None:
    assert r["device"] == "cpu" and r["quick"]
    assert {(c["model"], c["command"]) for c in r["commands"]} == {
        ("vgg", "rank"),
        ("vgg", "prune"),
    }
    assert all(c["exit"] == 0 and c["seconds"] > 0 for c in r["commands"]), r["commands"]
    for row in r["real_scale"]:  # the pruning ran to its target on a torchvision model
        assert row["error"] == "" and row["forward_s"] > 0 and row["tp_magnitude_s"] > 0
        assert row["macs_ratio"] <= 0.5 * 1.05 and row["prune_x_forward"] > 0
    games = {(g["game"], g["device"]) for g in r["game_rates"]}
    assert len(games) == 2 and all(g["evals_per_s"] > 0 for g in r["game_rates"])


def _check_torchvision_families(r: dict) -> None:
    rows = r["rows"]
    assert [row["family"].split()[0] for row in rows] == ["DenseNet", "ConvNeXt"]
    for row in rows:
        assert row["status"] == "ok" and row["seconds"] > 0 and row["params"] > 0
        assert row["macs_ratio"] <= 0.5 and row["scope"] in ("global", "global (lamp)", "per-layer")


def _check_folder_memory(r: dict) -> None:
    assert r["quick"] and r["images"] == 200 and r["pixels"] == 224
    assert r["wall_s"] > 0 and r["peak_rss_mb"] > 0 and r["met"] == (r["peak_rss_mb"] < 2560)
    assert 0.4 <= r["macs_ratio"] <= 0.5  # prune met its target on the streamed folder


def _check_own_model(r: dict) -> None:
    assert r["quick"] and r["checkpoint_keys"] == ["epoch", "model_state_dict", "optimizer"]
    n = r["images"]["test"]
    assert n > 0 and r["user"]["examples"] == n and 0 <= r["user"]["accuracy"] <= 1
    before, after = r["before"], r["after"]
    assert before["params"] == r["user"]["params"]  # prune loaded the user's own model
    assert r["macs_ratio"] == pytest.approx(after["macs"] / before["macs"])
    assert r["macs_ratio"] <= 0.51 and r["met"]["macs_halved"]  # prune halved the MACs
    assert isinstance(r["before_minus_user"], float)  # computed (90 images: not asserted)
    assert r["before_minus_user"] == pytest.approx(before["accuracy"] - r["user"]["accuracy"])
    assert set(r["exports"]) == {"exported-program", "onnx", "torchscript"}
    for name, e in r["exports"].items():  # each file, without shapprune, gives "after"
        assert e["examples"] == n and abs(e["accuracy"] - after["accuracy"]) <= 0.005, name
        assert e["params"] in (None, after["params"])
    assert r["all_met"] == all(r["met"].values())


def _check_real_scale(r: dict) -> None:
    (row,) = r["rows"]
    assert r["quick"] and row["model"] == "mobilenet_v3_small" and row["pixels"] == 64
    assert row["pass_s"] > 0 and row["passes"] == pytest.approx(row["prune_s"] / row["pass_s"])
    assert row["macs_ratio"] <= 0.5 and row["peak_rss_mb"] > 0
    assert {"scoring", "planning", "measuring"} <= set(row["stages"])
    assert row["refine_evaluations"] <= row["refine_allowed"]
    timed = r["budgeted"]
    assert timed["budget_s"] == 10 and timed["whole_s"] >= timed["prune_s"] > 0
    game = r["game"]
    assert game["players"] > 0 and game["eval_s"] > 0 and game["cached"]
    assert game["default_budgets"]["loo"] == game["players"] + 1
    (pair,) = r["precision"]  # the same model in float32 and under bfloat16 autocast
    assert {p: row["precision"] for p, row in pair.items()} == {
        "float32": "float32",
        "bfloat16": "bfloat16",
    }
    assert pair["float32"]["model"] == pair["bfloat16"]["model"] == row["model"]
    assert all(abs(x["macs_ratio"] - 0.5) <= 0.02 for x in pair.values())


def _check_held_out(r: dict) -> None:
    assert r["quick"] and r["targets"] == [0.5] and r["seeds"] == [0]
    (m,) = r["models"]
    assert m["model"] == "resnet10" and m["has_batchnorm"] and m["pixels"] == 16
    assert 0 <= m["original"]["accuracy"] <= 1
    rows = {row["method"]: row for row in m["rows"]}
    assert set(rows) == set(r["methods"])  # every TP importance and the defaults, one row each
    for row in rows.values():
        assert "oneshot" in row, row.get("error")  # none failed on a plain ResNet
        assert 0 <= row["oneshot"]["mean"] <= 1
        assert 0.5 <= row["macs_removed"] <= 0.5 + 0.05, row["method"]  # the target met
        if row["side"] == "torch-pruning":  # and measured again, BatchNorm re-estimated
            assert 0 <= row["oneshot_bn"]["mean"] <= 1
    (cell,) = m["cells"]
    tp = [row for row in rows.values() if row["side"] == "torch-pruning"]
    assert cell["oneshot"]["tp"]["accuracy"] == max(row["oneshot"]["mean"] for row in tp)
    assert cell["oneshot"]["tp_bn"]["accuracy"] == max(row["oneshot_bn"]["mean"] for row in tp)
    assert cell["oneshot"]["defaults"]["accuracy"] == rows["shapprune defaults"]["oneshot"]["mean"]
    for key in ("defaults", "tp", "tp_bn"):  # each one fine-tuned, the same way
        assert 0 <= cell["finetuned"][key]["accuracy"] <= 1 and cell["finetuned"][key]["n"] == 1
    by_stage = {v["stage"]: v for v in r["verdicts"]}
    assert set(by_stage) == {"oneshot", "finetuned"}
    for stage, v in by_stage.items():
        for key in ("tp", "tp_bn"):
            gap = cell[stage]["defaults"]["accuracy"] - cell[stage][key]["accuracy"]
            assert v[f"gap_{key}"] == pytest.approx(gap)
    one = r["goals"]["oneshot_tp"]
    assert one["cells"] == 1 and one["met"] == (by_stage["oneshot"]["gap_tp"] >= 0)


def _check_allocation(r):
    """Every variant meets the MACs target; auto keeps the candidate lowest in reference
    loss, and the summary counts the cells."""
    (model,) = r["models"]
    (cell,) = model["cells"]
    for v in cell["variants"].values():
        assert 0 <= v["accuracy"] <= 1 and v["macs_ratio"] <= 1 - cell["target"] + 0.02
    for auto, candidates in r["auto"].items():
        losses = {c: cell["variants"][c]["reference_loss"] for c in candidates}
        assert cell[auto]["chosen"] == min(losses, key=losses.get)
    best = max(v["accuracy"] for v in cell["variants"].values())
    assert cell["best"]["accuracy"] == best
    s = r["summary"]["zoo"]
    assert s["cells"] == 1 and s["best"] == (cell["auto (today)"]["accuracy"] >= best)


def _check_estimators_at_scale(r: dict) -> None:
    assert r["overlap"] == 0.9 and r["game"]["k"] == 10 and r["game"]["players"] == 50
    ours = {"shapprune permutation (antithetic + control)", "shapprune bandit", "shapprune cut",
            "shapprune cut, LRP prior"}  # fmt: skip
    assert ours <= set(r["methods"])
    for peer in ("shapiq", "pyDVL"):  # raced where installed, else skipped with a reason
        raced = any(label.startswith(peer) for label in r["methods"])
        assert raced != (peer in r["missing_peers"])
        assert not raced or not r["missing_peers"].get(peer)
    for label, row in r["methods"].items():
        assert row["steps"] and all(len(s["evals"]) == len(r["seeds"]) for s in row["steps"])
        for step in row["steps"]:
            assert all(0 <= o <= 1 for o in step["overlaps"])
            if label.startswith("shapprune"):  # our estimators keep their budgets exactly
                assert all(0 < e <= step["budget"] for e in step["evals"])
        good = row["evals_to_overlap"]
        assert good is None or (
            good in [max(s["evals"]) for s in row["steps"]]
            and min(row["steps"][-1]["overlaps"]) >= 0.9
        )
    for runs in r["settle"].values():
        assert [s["seed"] for s in runs] == r["seeds"]
        for s in runs:
            assert 0 <= s["confidence"] <= 1 and s["evals"] > 0 and 0 <= s["overlap"] <= 1
            assert s["settled"] == (s["in_doubt"] == 0)


CHECKS = {name: globals()[f"_check_{name}"] for name in SCRIPTS}


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Every script's quick run, two at a time (each runs on one thread: the suite's two
    cores both work), each in its own folder; name -> (future of its run, its JSON)."""
    pool = ThreadPoolExecutor(max_workers=2)
    runs = {}
    for script in SCRIPTS:
        folder = tmp_path_factory.mktemp(script)
        out = folder / "result.json"
        args = (str(BENCHMARKS / f"{script}.py"), "--quick", "--out", str(out))
        runs[script] = (pool.submit(_run, folder, *args), out)
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.benchmarks
@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_quick(quick_runs, script):
    future, out = quick_runs[script]
    done = future.result()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "|---|" in done.stdout  # printed a Markdown table
    CHECKS[script](json.loads(out.read_text()))


@pytest.mark.benchmarks
def test_run_all_writes_the_document_and_the_readme_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:performance -->\nold\n<!-- /results:performance -->\n")
    document = tmp_path / "BENCHMARKS.md"
    args = ["--quick", "--only", "throughput", "--results", str(tmp_path / "results")]
    args += ["--document", str(document), "--readme", str(readme)]
    done = _run(tmp_path, str(BENCHMARKS / "run_all.py"), *args)
    assert done.returncode == 0, done.stderr[-2000:]
    text = document.read_text()
    assert "## Targets" in text and "## 1. Evaluation throughput" in text
    assert "| prefix-cached + batched |" in text
    assert "_Not run yet._" in text  # the benchmarks not asked for
    block = readme.read_text()
    assert "old" not in block and ">= 0.8x the plain suffix forward" in block


def test_result_blocks_link_from_the_file_they_are_written_into(tmp_path):
    """Benchmarks write links from the project's root; a block in docs/ gets them rebased."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from report import replace_block
    finally:
        sys.path.remove(str(BENCHMARKS))
    page = BENCHMARKS.parent / "docs" / "results.md"
    content = "![plot](benchmarks/results/vs_torch_pruning.md) [web](https://a.b) [x](#y)"
    copy = tmp_path / "results.md"
    copy.write_text("<!-- results:x -->\nold\n<!-- /results:x -->\n")
    replace_block(copy, "x", content)  # tmp_path: the links are rebased to it
    assert "(https://a.b)" in copy.read_text() and "(#y)" in copy.read_text()
    rebased = re.search(r"\(([^)]*vs_torch_pruning\.md)\)", copy.read_text()).group(1)
    assert (tmp_path / rebased).resolve() == BENCHMARKS / "results" / "vs_torch_pruning.md"
    assert "](../benchmarks/results/" in page.read_text()  # the page in docs/ reads from there


def test_vs_torch_pruning_runs_chosen_methods_one_shot_only(monkeypatch, capsys):
    """``--methods`` picks methods by label or pattern; ``--finetune-seeds 0`` leaves the rows
    without a fine-tuned stage, and the verdicts and the report cope."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import vs_torch_pruning as vs

    everyone = vs.methods(quick=False)
    default = "shapprune lrp (global per MAC or per layer + refine 300)"
    chosen = vs.select_methods(everyone, [default, "TP magnitude-* (global)"])
    tp = ["TP magnitude-l1 (global)", "TP magnitude-l2 (global)"]
    assert [m.label for m in chosen] == [*tp, default]
    assert vs.select_methods(everyone, None) == everyone
    with pytest.raises(SystemExit, match="no method is labelled 'lrp'"):
        vs.select_methods(everyone, ["lrp"])

    rows = []
    for method, accuracy in zip(chosen, (0.5, 0.6, 0.9), strict=True):
        runs = [{"seed": s, "oneshot": accuracy, "finetuned": [], "macs": 50, "params": 5,
                 "macs_ratio": 0.5, "params_ratio": 0.5, "macs_removed": 0.5, "seconds": 1.0}
                for s in ((0, 1) if method.seeded else (0,))]  # fmt: skip
        rows.append(vs.summarise(method, 0.5, runs))
    assert all("finetuned" not in row and "oneshot" in row for row in rows)
    model = {"model": "m", "original": {"accuracy": 1.0, "macs": 100, "params": 10},
             "rows": rows, "budget": 1, "network_budget": 1, "finetune_seeds": []}  # fmt: skip
    result = {"targets": [0.5], "seeds": [0, 1], "per_class": 10, "budget_per_unit": 4,
              "finetune": vs.FINETUNE, "tolerance": 0.02, "models": [model],
              "methods": [m.label for m in chosen], "plots": [],
              "machine": {"threads": "1"}}  # fmt: skip
    result["verdicts"] = vs.verdicts(result)
    (v,) = result["verdicts"]  # one-shot only
    assert v["stage"] == "oneshot" and v["winner"] == "shapprune"
    assert v["gap"] == pytest.approx(0.3)
    vs.print_report(result)
    assert f"| {default} | **0.900 ± 0.000** | – | 50.0% |" in capsys.readouterr().out
