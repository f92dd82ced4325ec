"""The README and the pages under docs/: their Python examples run as written, every
`shapprune` command line in them parses (commands, options and their types exist), their
links lead to files, and the README stays short."""

import re
import shlex
from pathlib import Path

import pytest
import typer

import shapprune.zoo.training as train
from shapprune import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


@pytest.fixture
def quick_training(tmp_path, monkeypatch):
    monkeypatch.setenv("SHAPPRUNE_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # the examples write files
    quick = dict(train.RECIPES[("lenet5", "mnist5k")], epochs=1)
    monkeypatch.setitem(train.RECIPES, ("lenet5", "mnist5k"), quick)


def _run_python(page: Path) -> dict:
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert blocks, f"{page.name} has no Python example"
    namespace: dict = {}  # the examples build on each other, as they do for a reader
    for code in blocks:
        exec(compile(code, str(page), "exec"), namespace)
    return namespace


def test_readme_python_example_runs(quick_training, capsys):
    namespace = _run_python(README)
    summary = namespace["summary"]
    assert summary["criterion"] == "lrp" and summary["refine"] == 20
    assert summary["after"]["macs"] <= 0.5 * summary["before"]["macs"]
    assert str(summary["after"]["accuracy"]) in capsys.readouterr().out


def test_api_page_examples_run(quick_training, tmp_path, capsys):
    namespace = _run_python(ROOT / "docs" / "api.md")
    out = capsys.readouterr().out
    assert "50 ['conv2:ch0', 'conv2:ch1', 'conv2:ch2']" in out
    assert (tmp_path / "pruned" / "lenet.safetensors").is_file()
    assert namespace["same"].conv2.out_channels == namespace["pruned"].conv2.out_channels < 50


def _command_lines(page: Path) -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" # ")[0].strip()
            for part in line.split("&&"):
                if part.strip().startswith("shapprune "):
                    lines.append(part.strip())
    return lines


COMMAND_LINES = [(page.name, line) for page in PAGES for line in _command_lines(page)]


def test_the_pages_show_commands():
    assert {name for name, _ in COMMAND_LINES} >= {"README.md", "cli.md"}


@pytest.mark.parametrize("where,line", COMMAND_LINES, ids=[f"{p}:{i}" for i, (p, _) in
                                                            enumerate(COMMAND_LINES)])  # fmt: skip
def test_documented_command_lines_parse(where, line):
    group = typer.main.get_command(cli.app)
    args = shlex.split(line)[1:]
    command = group.commands.get(args[0])
    assert command is not None, f"{where}: no command {args[0]!r}"
    command.make_context(args[0], args[1:])  # an unknown option or a bad type raises


def test_local_links_lead_to_files():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:|#", target):
                continue
            assert (page.parent / target.split("#")[0]).exists(), f"{page.name}: {target}"


def test_the_readme_is_short():
    assert len(README.read_text()) < 15_000
