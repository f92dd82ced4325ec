"""Output locations checked before the work: what is refused, and that checking leaves no trace."""

import pytest

from shapprune.outputs import check_output


def test_file_outputs(tmp_path):
    assert check_output(tmp_path / "new" / "deeper" / "x.json") == tmp_path / "new/deeper/x.json"
    assert list(tmp_path.iterdir()) == []  # nothing created, the probe removed
    (tmp_path / "x.json").write_text("mine")
    with pytest.raises(FileExistsError, match="pass --force"):
        check_output(tmp_path / "x.json")
    check_output(tmp_path / "x.json", force=True)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        check_output(tmp_path, force=True)
    with pytest.raises(NotADirectoryError, match="x.json is a file, not a folder"):
        check_output(tmp_path / "x.json" / "y" / "z.json")
    with pytest.raises(PermissionError, match="cannot write /sys/shapprune-test/z.json"):
        check_output("/sys/shapprune-test/z.json")
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_folder_outputs(tmp_path):
    check_output(tmp_path / "run", folder=True, resumes="experiment.json")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    check_output(tmp_path / "run", folder=True)  # the caller's rule decides
    with pytest.raises(FileExistsError, match="no earlier run to resume"):
        check_output(tmp_path / "run", folder=True, resumes="experiment.json")
    (tmp_path / "run" / "experiment.json").write_text("{}")
    check_output(tmp_path / "run", folder=True, resumes="experiment.json")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        check_output(tmp_path / "run" / "notes.txt", folder=True)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["experiment.json", "notes.txt"]
