"""``python -m lrnn.bench tasks``: a tiny run prints the table and writes the JSON rows."""

from __future__ import annotations

import json

import pytest

from lrnn.bench import main


def test_tasks_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "tasks.json"
    assert main(["tasks", "--tasks", "parity", "arithmetic", "s3", "--lengths", "3-9", "5", "--batch", "4",
                 "--repeats", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "M tokens/s" in text and "skipped arithmetic 5-5" in text  # arithmetic has only even lengths
    rows = json.loads(out.read_text())["rows"]
    assert {(r["task"], r["max_length"]) for r in rows} == {("parity", 9), ("parity", 5), ("arithmetic", 9),
                                                            ("s3", 9), ("s3", 5)}
    assert all(r["tokens_per_s"] > 0 and r["tokens"] >= 4 for r in rows)


@pytest.mark.parametrize("argv", [["--batch", "0"], ["--lengths", "9-3"], ["--lengths", "x"], ["--tasks", "nope"]])
def test_tasks_benchmark_bad_arguments(argv):
    with pytest.raises(SystemExit):
        main(["tasks", *argv])
