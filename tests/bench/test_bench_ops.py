"""Smoke tests of ``python -m lrnn.bench ops --quick``: the report's structure, not its timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lrnn.bench import main
from lrnn.bench.cases import decay_recurrence_flops, default_cases, delta_rule_flops, quick_cases

CASES = [case.name for case in quick_cases()]
RESULT_KEYS = {"case", "op", "shape", "shape_label", "mode", "pass", "flops", "skipped", "times_s", "median_s",
               "gflops", "fraction_of_matmul", "estimated_peak_bytes", "budget_bytes", "measured_peak_bytes"}


def test_flop_counts_match_the_documented_formulas():
    # delta rule per chunk: C^2 (5K + 3V) + 6CKV; decay recurrence: 2C^2 (K + V) + 4CKV.
    c, k, v, chunks = 64, 128, 64, 2048 // 64
    assert delta_rule_flops(4, 16, 2048, k, v, 64) == 4 * 16 * chunks * (c * c * (5 * k + 3 * v) + 6 * c * k * v)
    assert decay_recurrence_flops(4, 16, 2048, k, v, 64) == 4 * 16 * chunks * (2 * c * c * (k + v) + 4 * c * k * v)
    product = next(case for case in default_cases() if case.name == "delta_product")
    assert product.flops(64) == delta_rule_flops(4, 16, 2 * 2048, 128, 128, 64)  # 2 sub-steps per token


def test_quick_in_process_covers_every_case_mode_and_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "bench.json"
    assert main(["ops", "--quick", "--no-memory", "--json", str(out), "--markdown"]) == 0
    report = json.loads(out.read_text())

    assert {"command", "date", "machine", "settings", "matmul", "flop_definitions", "results", "target"} <= set(report)
    assert report["matmul"]["gflops"] > 0
    assert report["machine"]["torch_threads"] >= 1
    assert report["memory_scaling"] is None
    assert set(report["flop_definitions"]) == {"delta_rule", "decay_recurrence", "short_conv"}
    rows = {(r["case"], r["mode"], r["pass"]): r for r in report["results"]}
    assert set(rows) == {(c, m, p) for c in CASES for m in ("chunk", "recurrent") for p in ("fwd", "fwd+bwd")}
    for row in rows.values():
        assert set(row) == RESULT_KEYS
        assert row["skipped"] is None and row["median_s"] > 0 and row["gflops"] > 0
        assert row["fraction_of_matmul"] == pytest.approx(row["gflops"] / report["matmul"]["gflops"])
    for (case, mode, pass_), row in rows.items():
        if pass_ == "fwd+bwd":  # forward+backward is counted as 3x forward
            assert row["flops"] == 3 * rows[(case, mode, "fwd")]["flops"]
            assert row["estimated_peak_bytes"] > 0
    assert rows[("delta", "chunk", "fwd")]["flops"] == rows[("delta", "recurrent", "fwd")]["flops"]

    markdown = capsys.readouterr().out
    assert "| case | op | shape | mode | pass |" in markdown
    assert markdown.count("\n| delta ") == 4  # 2 modes x 2 passes
    assert "Matmul reference" in markdown and "Target: chunked delta rule forward" in markdown


def test_budget_skips_instead_of_crashing(tmp_path: Path):
    out = tmp_path / "bench.json"
    main(["ops", "--quick", "--no-memory", "--ops", "delta", "--modes", "recurrent", "--max-memory-gb", "1e-6",
          "--json", str(out)])
    rows = json.loads(out.read_text())["results"]
    fwd_bwd = [r for r in rows if r["pass"] == "fwd+bwd"]
    assert len(fwd_bwd) == 1 and fwd_bwd[0]["skipped"].startswith("skipped (needs ~")
    assert fwd_bwd[0]["median_s"] is None
    assert [r["skipped"] for r in rows if r["pass"] == "fwd"] == [None]  # forward does not need the budget


def test_cli_quick_with_memory_sweep(tmp_path: Path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "lrnn.bench", "ops", "--quick", "--ops", "gated_delta", "--modes", "chunk",
           "--memory-lengths", "64", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "GFLOP/s" in proc.stdout and "Peak memory of forward+backward vs T" in proc.stdout
    assert "matmul" in proc.stderr and "memory gated_delta T=64" in proc.stderr  # progress on stderr

    sweep = json.loads(out.read_text())["memory_scaling"]
    assert sweep["mode"] == "chunk" and sweep["lengths"] == [64]  # one length: one child process, fast
    (point,) = sweep["points"]
    assert (point["case"], point["tokens"], point["note"]) == ("gated_delta", 64, None)
    assert point["measured_bytes"] >= 0 and point["estimated_bytes"] > 0
    assert set(point) == {"case", "tokens", "measured_bytes", "estimated_bytes", "bytes_per_token",
                          "per_token_ratio", "note"}


def test_unknown_op_is_a_usage_error(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        main(["ops", "--quick", "--ops", "nope"])
    assert exit_info.value.code == 2 and "unknown op or case name" in capsys.readouterr().err
