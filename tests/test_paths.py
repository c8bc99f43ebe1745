"""lrnn.paths: the one home of the output-path checks every command runs before any work."""

from __future__ import annotations

import pytest

from lrnn.paths import check_not_replacing, check_writable_directory, check_writable_file


def test_output_directory_checks(tmp_path):
    assert check_writable_directory(tmp_path / "new" / "deeper", "the out") == tmp_path / "new" / "deeper"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="the out .* is an existing file, not a directory"):
        check_writable_directory(tmp_path / "file", "the out")
    with pytest.raises(ValueError, match="cannot be created: .*file is a file"):
        check_writable_directory(tmp_path / "file" / "sub", "the out")


def test_output_file_checks(tmp_path):
    assert check_writable_file(tmp_path / "a.json", "--json") == tmp_path / "a.json"
    with pytest.raises(ValueError, match="--json must name a file, got the directory"):
        check_writable_file(tmp_path, "--json")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot be written: .*file is a file"):
        check_writable_file(tmp_path / "file" / "a.json", "--json")


def test_not_replacing(tmp_path):
    (tmp_path / "report.md").write_text("mine")
    check_not_replacing(tmp_path, ["summary.json"], False, "pass --force")
    check_not_replacing(tmp_path, ["report.md"], True, "pass --force")
    with pytest.raises(ValueError, match=r"already holds \['report.md'\]: pass --force to replace them"):
        check_not_replacing(tmp_path, ["report.md", "summary.json"], False, "pass --force")
