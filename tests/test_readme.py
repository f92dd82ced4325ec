"""The README's Python example runs as written."""

import re
from pathlib import Path

import shapprune.train as train

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SHAPPRUNE_CACHE", str(tmp_path))
    quick = dict(train.RECIPES[("lenet5", "mnist5k")], epochs=1)
    monkeypatch.setitem(train.RECIPES, ("lenet5", "mnist5k"), quick)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "50 ['conv2:ch0', 'conv2:ch1', 'conv2:ch2']" in out
