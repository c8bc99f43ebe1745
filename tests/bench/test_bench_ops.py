"""Smoke tests of ``python -m lrnn.bench ops --quick``: the report's structure, not its timings."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lrnn.bench import main
from lrnn.bench.ops import Settings, add_arguments, bench_case, settings_from_args
from lrnn.cli import main as lrnn_main
from lrnn.bench.report import render
from lrnn.bench.timing import DISTURBED, disturbance
from lrnn.bench.cases import decay_recurrence_flops, default_cases, delta_rule_flops, quick_cases

CASES = [case.name for case in quick_cases()]
RESULT_KEYS = {"case", "op", "shape", "shape_label", "mode", "pass", "flops", "skipped", "times_s", "median_s",
               "gflops", "fraction_of_matmul", "estimated_peak_bytes", "budget_bytes", "measured_peak_bytes",
               "probe_gflops", "disturbed"}


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
        before, after = row["probe_gflops"]  # the matmul probe ran on both sides of every timing
        assert before > 0 and after > 0 and max(before, after) <= report["matmul"]["probe_best_gflops"]
        assert row["disturbed"] is None or row["disturbed"].startswith(DISTURBED)
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


# ---- disturbed measurements and --threads (logic and plumbing only: no timing is asserted) ----------


def test_disturbance_flags_a_slowed_machine_and_unstable_repeats():
    steady = [0.10, 0.11, 0.12]
    assert disturbance(steady, probe_before=100.0, probe_after=95.0, probe_best=100.0) is None
    # The probe after the measurement ran 5x slower than the run's best: the machine was busy.
    verdict = disturbance(steady, probe_before=100.0, probe_after=20.0, probe_best=100.0)
    assert verdict.startswith(DISTURBED) and "20% of the run's best" in verdict
    # ... or before it; the best may come from another measurement's probe.
    assert disturbance(steady, probe_before=30.0, probe_after=150.0, probe_best=150.0).startswith(DISTURBED)
    # Repeats whose median is 9x the fastest are flagged even when the probes look fine ...
    verdict = disturbance([0.1, 1.0, 0.9], 100.0, 100.0, 100.0)
    assert verdict.startswith(DISTURBED) and "median of 3 repeats took 9.0x the fastest" in verdict
    # ... but one preempted repeat is not: the reported median absorbs it.
    assert disturbance([0.1, 0.1, 5.0], 100.0, 100.0, 100.0) is None
    # The limits are inclusive: exactly at them is still undisturbed.
    assert disturbance([1.0, 3.0, 5.0], 50.0, 50.0, 100.0, max_slowdown=2.0, max_spread=3.0) is None
    assert disturbance([0.1], 100.0, 100.0, 100.0) is None  # one repeat: no spread to judge


@pytest.mark.parametrize("args,named", [(([], 1.0, 1.0, 1.0), "times"), (([0.1, 0.0], 1.0, 1.0, 1.0), "times"),
                                        (([0.1], 0.0, 1.0, 1.0), "probe_before"),
                                        (([0.1], 1.0, 1.0, float("nan")), "probe_best")])
def test_disturbance_rejects_impossible_inputs(args, named):
    with pytest.raises(ValueError, match=named):
        disturbance(*args)


class _FallingProbe:
    """A stand-in for ``MatmulProbe`` whose rate drops 5x from its third call on (no matmul is run)."""

    def __init__(self):
        self.calls, self.best = 0, 0.0

    def __call__(self) -> float:
        self.calls += 1
        rate = 100.0 if self.calls <= 2 else 20.0
        self.best = max(self.best, rate)
        return rate


def _settings(*argv: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from_args(parser.parse_args(["--quick", "--no-memory", *argv]))


def test_bench_case_flags_the_rows_whose_probe_fell():
    s = _settings("--ops", "delta", "--modes", "chunk", "recurrent", "--max-memory-gb", "1e-6")
    (case,) = s.cases
    probe = _FallingProbe()
    rows = bench_case(case, s, 100.0, {}, probe, log=lambda _: None)
    by_key = {(r["mode"], r["pass"]): r for r in rows}
    # Probes: before the case, after chunk fwd (both 100), after recurrent fwd (20); fwd+bwd is skipped.
    assert probe.calls == 3
    assert by_key[("chunk", "fwd")]["probe_gflops"] == [100.0, 100.0]
    assert by_key[("chunk", "fwd")]["disturbed"] is None
    assert by_key[("recurrent", "fwd")]["probe_gflops"] == [100.0, 20.0]
    assert by_key[("recurrent", "fwd")]["disturbed"].startswith(DISTURBED)
    assert all(by_key[(m, "fwd+bwd")]["probe_gflops"] is None and by_key[(m, "fwd+bwd")]["disturbed"] is None
               for m in ("chunk", "recurrent"))


def test_threads_default_to_one_on_the_cpu_and_are_restored(tmp_path: Path):
    assert _settings().threads == 1
    assert _settings("--threads", "3").threads == 3
    with pytest.raises(ValueError, match="--threads must be >= 1, got 0"):
        _settings("--threads", "0")
    before = torch.get_num_threads()
    out = tmp_path / "bench.json"
    threads = 2 if before == 1 else 1  # differs from the current count, so the run must set it
    assert lrnn_main(["bench", "ops", "--quick", "--no-memory", "--ops", "short_conv", "--modes", "chunk",
                      "--threads", str(threads), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["settings"]["threads"] == threads and report["machine"]["torch_threads"] == threads
    assert torch.get_num_threads() == before


def test_report_shows_disturbed_rows_and_their_evidence(tmp_path: Path):
    out = tmp_path / "bench.json"
    lrnn_main(["bench", "ops", "--quick", "--no-memory", "--ops", "short_conv", "--modes", "chunk", "--json", str(out)])
    report = json.loads(out.read_text())
    fwd = next(r for r in report["results"] if r["pass"] == "fwd")
    fwd["disturbed"] = f"{DISTURBED} (matmul probe beside it at 20% of the run's best)"
    text = render(report, markdown=True)
    assert "| disturbed |" in text and text.count("| yes |") == 1
    assert "Disturbed measurements (1 of 2)" in text and f"- short_conv chunk fwd: {fwd['disturbed']}" in text
    for row in report["results"]:
        row["disturbed"] = None
    assert "Disturbed measurements" not in render(report, markdown=True)
