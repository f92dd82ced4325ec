"""The README's Python example runs as written."""

import re
from pathlib import Path

import shapprune.zoo.training as train

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SHAPPRUNE_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # the example writes files
    quick = dict(train.RECIPES[("lenet5", "mnist5k")], epochs=1)
    monkeypatch.setitem(train.RECIPES, ("lenet5", "mnist5k"), quick)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    namespace: dict = {}  # the examples build on each other, as they do for a reader
    for code in blocks:
        exec(compile(code, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "50 ['conv2:ch0', 'conv2:ch1', 'conv2:ch2']" in out
    assert (tmp_path / "pruned" / "lenet.safetensors").is_file()
    assert namespace["same"].conv2.out_channels == namespace["pruned"].conv2.out_channels < 50
