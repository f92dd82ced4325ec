"""Turning comparison results into tables, CSV, plots and a Markdown report."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from shapprune.evaluation.config import ExperimentConfig
from shapprune.evaluation.ranking import overlaps, ranking_from_scores


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}" if std > 0 else f"{mean:.3f}"


def summarise(config: ExperimentConfig, results: dict) -> dict:
    """The numbers of the report: robustness AUCs, rate AUCs, oracle overlaps, costs."""
    from shapprune.evaluation.experiments import mean_accuracy, robustness_table

    labels = [c.label for c in config.criteria]
    out: dict = {"robustness": {}, "rates": {}, "overlap": {}, "cost_benefit": {}}
    for layer in results["layers"]:
        curves = {
            (label, seed): np.asarray(
                results["robustness"][f"robustness/{label}/{layer}/{seed}"]["curve"]
            )
            for label in labels
            for seed in config.seeds
            if f"robustness/{label}/{layer}/{seed}" in results["robustness"]
        }
        if curves:
            aucs = robustness_table(curves)  # one normaliser for every criterion and seed
            out["robustness"][layer] = {
                label: _mean_std([aucs[label, s] for s in config.seeds]) for label in labels
            }
        quality = {
            label: [results["quality"][f"quality/{label}/{layer}/{s}"] for s in config.seeds]
            for label in labels
            if f"quality/{label}/{layer}/{config.seeds[0]}" in results.get("quality", {})
        }
        if quality:
            out.setdefault("quality", {})[layer] = {
                label: {
                    "regret": {
                        k: _mean_std([r["regret"][k] for r in runs]) for k in runs[0]["regret"]
                    },
                    "spearman": _mean_std([r["spearman"] for r in runs]),
                    "kendall": _mean_std([r["kendall"] for r in runs]),
                }
                for label, runs in quality.items()
            }
        oracle = results.get("oracle", {}).get(layer)
        if oracle:
            sets = {int(k): v for k, v in oracle["sets"].items()}
            out["overlap"][layer] = {}
            for label in labels:
                per_k = defaultdict(list)
                for seed in config.seeds:
                    scores = results["scores"][f"scores/{label}/{layer}/{seed}"]["scores"]
                    ranking = ranking_from_scores(np.asarray(scores))
                    for k, v in overlaps(ranking, sets).items():
                        per_k[k].append(v)
                out["overlap"][layer][label] = {k: _mean_std(v) for k, v in sorted(per_k.items())}
        cost = results.get("cost_benefit", {}).get(layer)
        if cost:
            from shapprune.evaluation.experiments import summarise as summarise_rows

            out["cost_benefit"][layer] = summarise_rows(cost["rows"])
    for label in labels:
        runs = [
            results["rates"][f"rates/{label}/{s}"]
            for s in config.seeds
            if f"rates/{label}/{s}" in results["rates"]
        ]
        if runs:
            acc = np.asarray([r["accuracy"] for r in runs])
            out["rates"][label] = {
                "rates": runs[0]["rates"],
                "mean": acc.mean(axis=0).tolist(),
                "std": (acc.std(axis=0, ddof=1) if len(acc) > 1 else 0 * acc[0]).tolist(),
                "auc": _mean_std([mean_accuracy(r["accuracy"]) for r in runs]),
            }
    return out


def write_outputs(config: ExperimentConfig, results: dict, out: Path) -> Path:
    """results.json, results.csv, PNG plots and report.md in ``out``; returns the report."""
    from shapprune.evaluation.plots import line_plot

    summary = summarise(config, results)
    (out / "results.json").write_text(json.dumps({"results": results, "summary": summary}))
    rows = _csv_rows(summary)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["experiment", "layer", "criterion", "x", "mean", "std"])
        writer.writerows(rows)
    lines = [f"# Comparison: {config.model} on {config.data}", ""]
    lines += [
        f"Criteria scored on {config.per_class} validation examples per class; "
        f"seeds {config.seeds}; held-out: {config.heldout} test examples.",
        "",
    ]
    if summary["robustness"]:
        lines += [
            "## Layer-wise robustness (Ancona et al.)",
            "",
            "Area under the loss-increase curve as units are removed lowest first, "
            "normalised per layer by the largest increase seen; lower is better.",
            "",
        ]
        layers = list(summary["robustness"])
        lines += ["| criterion | " + " | ".join(layers) + " |", "|---" * (len(layers) + 1) + "|"]
        for label in summary["robustness"][layers[0]]:
            cells = [_fmt(*summary["robustness"][layer][label]) for layer in layers]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        for layer in layers:
            series = {}
            for c in config.criteria:
                curves = [
                    results["robustness"][f"robustness/{c.label}/{layer}/{s}"]["curve"]
                    for s in config.seeds
                ]
                a = np.asarray(curves)
                x = np.arange(a.shape[1]) / a.shape[1]
                series[c.label] = (x, a.mean(0), a.std(0) if len(a) > 1 else None)
            path = line_plot(
                out / f"robustness_{layer}.png",
                series,
                "fraction of units removed",
                "test loss increase",
                f"{layer}: removal in each criterion's order",
            )
            lines += [f"![robustness {layer}]({path.name})", ""]
    if summary["rates"]:
        lines += [
            "## Accuracy vs. pruning rate (no fine-tuning)",
            "",
            "Mean test accuracy over the rates (the AUC of Hatefi et al.); higher is better.",
            "",
            "| criterion | mean accuracy |",
            "|---|---|",
        ]
        for label, r in sorted(summary["rates"].items(), key=lambda kv: -kv[1]["auc"][0]):
            lines.append(f"| {label} | {_fmt(*r['auc'])} |")
        series = {
            label: (np.asarray(r["rates"]), np.asarray(r["mean"]), np.asarray(r["std"]))
            for label, r in summary["rates"].items()
        }
        scope = "global" if config.global_ else "per layer"
        path = line_plot(
            out / "rates.png",
            series,
            "fraction of units removed",
            "test accuracy",
            f"accuracy vs pruning rate ({scope})",
        )
        lines += ["", f"![accuracy vs rate]({path.name})", ""]
    for layer, oracle in results.get("oracle", {}).items():
        lines += [f"## Oracle sets, {layer}", "",
                  "For each k, the k units whose joint removal keeps the game's value highest.",
                  "", "| k | removed units | value | search |", "|---|---|---|---|"]  # fmt: skip
        for k, units in oracle["sets"].items():
            how = "exhaustive" if oracle["exhaustive"][k] else "beam (approximate)"
            lines.append(f"| {k} | {units} | {oracle['values'][k]:.4f} | {how} |")
        lines.append("")
    for layer, per_label in summary["overlap"].items():
        if not per_label:
            continue
        ks = list(next(iter(per_label.values())))
        lines += [
            f"## Overlap with the oracle sets, {layer}",
            "",
            "Fraction of the criterion's k lowest units that are in the oracle set of size k.",
            "",
            "| criterion | " + " | ".join(f"k={k}" for k in ks) + " |",
            "|---" * (len(ks) + 1) + "|",
        ]
        for label, by_k in per_label.items():
            lines.append(f"| {label} | " + " | ".join(_fmt(*by_k[k]) for k in ks) + " |")
        lines.append("")
        quality = summary.get("quality", {}).get(layer)
        if quality:
            lines += [
                f"Regret (value of the oracle's kept set minus the criterion's, {layer}; lower "
                "is better) and rank correlation with the Oracle rank:",
                "",
                "| criterion | "
                + " | ".join(f"regret k={k}" for k in ks)
                + " | Spearman | Kendall |",
                "|---" * (len(ks) + 3) + "|",
            ]
            for label, q in quality.items():
                cells = [_fmt(*q["regret"][str(k)]) for k in ks]
                cells += [_fmt(*q["spearman"]), _fmt(*q["kendall"])]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
    for layer, rows in summary["cost_benefit"].items():
        lines += [
            f"## Cost-benefit of the estimators, {layer}",
            "",
            "| method | budget | evaluations | seconds | Spearman | Kendall | nRMSE |",
            "|---|---|---|---|---|---|---|",
        ]
        series: dict = {}
        for r in rows:
            lines.append(
                f"| {r['method']} | {r['budget']} | {r['n_evals_mean']:.0f} | "
                f"{r['seconds_mean']:.2f} | {_fmt(r['spearman_mean'], r['spearman_std'])} | "
                f"{_fmt(r['kendall_mean'], r['kendall_std'])} | {r['nrmse_mean']:.3f} |"
            )
            xs, ms, ss = series.setdefault(r["method"], ([], [], []))
            xs.append(r["n_evals_mean"])
            ms.append(r["spearman_mean"])
            ss.append(r["spearman_std"])
        series = {
            m: (np.asarray(x), np.asarray(y), np.asarray(s)) for m, (x, y, s) in series.items()
        }
        path = line_plot(
            out / f"cost_benefit_{layer}.png",
            series,
            "coalition evaluations",
            "Spearman vs reference",
            f"{layer}: rank quality vs cost",
            logx=True,
        )
        lines += ["", f"![cost-benefit {layer}]({path.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _csv_rows(summary: dict) -> list[list]:
    rows = []
    for layer, per in summary["robustness"].items():
        for label, (m, s) in per.items():
            rows.append(["robustness_auc", layer, label, "", m, s])
    for label, r in summary["rates"].items():
        for x, m, s in zip(r["rates"], r["mean"], r["std"], strict=True):
            rows.append(["accuracy_vs_rate", "", label, x, m, s])
    for layer, per in summary["overlap"].items():
        for label, by_k in per.items():
            for k, (m, s) in by_k.items():
                rows.append(["oracle_overlap", layer, label, k, m, s])
    for layer, table in summary["cost_benefit"].items():
        for r in table:
            rows.append(
                [
                    "cost_benefit_spearman",
                    layer,
                    r["method"],
                    r["budget"],
                    r["spearman_mean"],
                    r["spearman_std"],
                ]
            )
    return rows
