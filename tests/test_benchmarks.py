"""The benchmark scripts run end to end on tiny sizes, so that they cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ["throughput", "estimators", "captum_vs", "pruned_models", "scale", "criteria_lenet"]


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        "SHAPPRUNE_CACHE": str(tmp_path / "cache"),
        "PATH": "/usr/bin:/bin",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_quick(tmp_path, script):
    out = tmp_path / "result.json"
    done = _run(tmp_path, str(BENCHMARKS / f"{script}.py"), "--quick", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "|---|" in done.stdout  # printed a Markdown table
    assert json.loads(out.read_text())


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
