"""``python -m lrnn.bench check``: it passes on the CPU and a real mismatch makes it fail."""

from __future__ import annotations

import pytest

import lrnn.bench.check as check
from lrnn.bench import main


def test_check_passes_on_cpu_for_short_lengths(capsys: pytest.CaptureFixture[str]):
    assert main(["check", "--lengths", "1", "9", "--long-length", "33", "--skip-compile"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "0 failed" in out
    # per length: short_conv, 2 decay variants, 6 delta-rule variants; 4 float32 ops; 5 x 2 + 3 models
    assert out.count("ok ") == 2 * 9 + 4 + 13


def test_check_reports_a_broken_fast_path(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    real = check.delta_rule

    def broken(*args, mode, **kwargs):
        o, s = real(*args, mode=mode, **kwargs)
        return (o * 1.001 if mode == "chunk" else o), s

    monkeypatch.setattr(check, "delta_rule", broken)
    assert main(["check", "--lengths", "9", "--long-length", "9", "--skip-models"]) == 1
    assert "FAIL delta_rule" in capsys.readouterr().out


def test_check_rejects_bad_lengths():
    with pytest.raises(SystemExit):
        main(["check", "--lengths", "0"])
