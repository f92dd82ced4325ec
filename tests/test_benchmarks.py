"""The benchmark scripts run end to end on tiny sizes, so that they cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    "script,extra",
    [("core.py", ["--skip-demo"]), ("criteria_lenet.py", [])],
)
def test_benchmark_runs_quick(tmp_path, script, extra):
    out = tmp_path / "result.json"
    env = {"SHAPPRUNE_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "|---|" in done.stdout  # printed a Markdown table
    assert json.loads(out.read_text())
