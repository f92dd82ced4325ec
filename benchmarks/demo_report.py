"""The demo's comparison (LeNet-5 on MNIST 5k), for the README: robustness, oracle overlap,
accuracy vs pruning rate, with the accuracy plot copied to ``docs/``.

Run: ``python benchmarks/demo_report.py [--readme docs/results.md]`` (a few minutes on 2 cores;
reruns resume from ``benchmarks/results/demo``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from report import run_and_report

from shapprune.evaluation.compare import check_resumable, run_compare
from shapprune.evaluation.config import parse_config
from shapprune.evaluation.report import write_outputs
from shapprune.jobs import DEMO_EXPERIMENT


def _run(out: Path, docs: Path) -> None:
    experiment = parse_config(DEMO_EXPERIMENT, "demo")
    check_resumable(experiment, out)
    results = run_compare(experiment, out)
    report = write_outputs(experiment, results, out)
    docs.mkdir(parents=True, exist_ok=True)
    for name in ("rates.png", "robustness_conv1.png"):
        shutil.copy(out / name, docs / f"demo_{name}")
    text = report.read_text()
    body = text[text.index("## Layer-wise") :]
    body = body.replace("## ", "#### ")
    for name in ("rates.png", "robustness_conv1.png", "robustness_conv2.png"):
        body = body.replace(f"({name})", f"(docs/demo_{name})")
    body = "\n".join(line for line in body.splitlines() if "robustness_conv2.png" not in line)
    print(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/demo"))
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument(
        "--readme",
        type=Path,
        help="replace the results block of this Markdown file (docs/results.md)",
    )
    args = parser.parse_args()
    run_and_report("demo", lambda: _run(args.out, args.docs), args.readme)


if __name__ == "__main__":
    main()
