"""The atomic-write helper: whole files or the old ones, never a partial file; ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from lrnn.atomic import FILE_MODE, atomic_write, atomic_write_text, is_temporary, remove_temporaries


def test_writes_and_replaces_with_the_mode_open_would_give(tmp_path):
    path = tmp_path / "sub" / "report.md"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives under the same umask
    assert stat.S_IMODE(plain.stat().st_mode) == FILE_MODE
    assert os.listdir(path.parent) == ["report.md"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_write_text(path, "old")

    def failing(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_write(path, failing)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_remove_temporaries_deletes_only_what_interrupted_writes_leave(tmp_path):
    names = []

    def write(tmp: str) -> None:
        names.append(os.path.basename(tmp))
        with open(tmp, "w") as f:
            f.write("whole")

    atomic_write(tmp_path / "checkpoint.pt", write)
    orphan = tmp_path / names[0]  # what a process killed before the rename leaves under that name
    orphan.write_text("partial")
    for keep in (".hidden", "notes.tmp"):
        (tmp_path / keep).write_text("mine")
    assert is_temporary(orphan) and not is_temporary(tmp_path / "notes.tmp")
    assert remove_temporaries(tmp_path) == [orphan]
    assert sorted(os.listdir(tmp_path)) == [".hidden", "checkpoint.pt", "notes.tmp"]
    assert remove_temporaries(tmp_path / "missing") == []
