"""The supported versions: declared once, in step with pyproject, and a library outside the
range is one line (the command: exit 2) at import, not a traceback from deep inside."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from shapprune.compat import SUPPORTED, check_versions, version_problems

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_versions_are_supported():
    assert version_problems() == []
    check_versions()


def test_pyproject_declares_the_same_range():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0]: d for d in deps}
    for dist, (low, high) in SUPPORTED.items():
        spec = declared[dist]
        assert f">={low}" in spec, spec
        assert (high is None and "<" not in spec) or f"<{high}" in spec, spec


@pytest.mark.parametrize(
    "installed,needle",
    [
        ({"torch": "2.5.1+cu121"}, "torch 2.5.1+cu121 is installed; shapprune supports torch >= 2"),
        ({"zennit": "2.0.0"}, "zennit 2.0.0 is installed; shapprune supports zennit >= 0.5.1, < 2"),
        ({"zennit": "0.4.7"}, "zennit >= 0.5.1"),
    ],
)
def test_a_version_outside_the_range_is_named_with_the_range(installed, needle):
    problems = version_problems(installed)
    assert len(problems) == 1 and needle in problems[0]
    with pytest.raises(RuntimeError, match=re.escape(needle)):
        check_versions(installed)


@pytest.mark.parametrize("version", ["2.8.0", "2.8.0+cpu", "2.9.0.dev20250601", "2.14.1", "3.0"])
def test_versions_in_the_range_pass(version):
    assert version_problems({"torch": version, "zennit": "1.0.0"}) == []


def _fake_dist(folder: Path, name: str, version: str) -> None:
    """A distribution's metadata ahead of site-packages: importlib.metadata reports it."""
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_the_command_with_an_old_torch_is_one_line_exit_2(tmp_path):
    _fake_dist(tmp_path, "torch", "2.5.0")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")])}
    run = subprocess.run(
        [sys.executable, "-m", "shapprune", "rank"], env=env, capture_output=True, text=True
    )
    assert run.returncode == 2
    assert run.stderr.startswith("error: torch 2.5.0 is installed") and run.stderr.count("\n") == 1
    # a script's import: one ImportError line naming the range
    run = subprocess.run(
        [sys.executable, "-c", "import shapprune"], env=env, capture_output=True, text=True
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        "ImportError: torch 2.5.0 is installed; shapprune supports torch >= 2.8 "
        "(pip install 'torch>=2.8')"
    )


@pytest.mark.parametrize(
    ("installed", "said"),
    [(None, "transformers is not installed"), ("4.57.1", "transformers 4.57.1 is installed")],
)
def test_an_optional_library_outside_its_range_is_one_line_naming_the_extra(installed, said):
    """transformers 4.x lays ViT attention out otherwise: refused before a model is read,
    with the extra that installs a supported version."""
    from shapprune.compat import check_optional

    with pytest.raises(ValueError) as err:
        check_optional("transformers", installed={"transformers": installed})
    text = str(err.value)
    assert text.startswith(said) and "pip install 'shapprune[hf]'" in text and "\n" not in text
    check_optional("transformers", installed={"transformers": "5.25.0"})  # the floor itself is fine


def test_an_hf_folder_with_transformers_4_is_refused_by_the_command(tmp_path, monkeypatch, capsys):
    from helpers import run_cli, save_tiny_hf_vit

    import shapprune.compat

    save_tiny_hf_vit(tmp_path / "vit")
    capsys.readouterr()  # transformers' own bar while saving
    real = shapprune.compat.installed_version
    monkeypatch.setattr(
        shapprune.compat, "installed_version",
        lambda dist: "4.46.0" if dist == "transformers" else real(dist),
    )  # fmt: skip
    code, _, err = run_cli(monkeypatch, capsys, "prune", "--model", f"hf:{tmp_path / 'vit'}",
                           "--data", "mnist5k", "--out", tmp_path / "out")  # fmt: skip
    assert code == 2 and err.count("\n") == 1
    assert "transformers 4.46.0 is installed; this needs transformers >= 5.25" in err
    assert not (tmp_path / "out").exists()
