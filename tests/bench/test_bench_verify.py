"""lrnn bench verify: every case runs for every mixer asked, the report's structure and ratios, the flags'
errors. Tiny random models: no speed is asserted (the machine's speed is not the code's to promise)."""

from __future__ import annotations

import json

import pytest

import lrnn.cli

TINY = ["--layers", "1", "--d-model", "64", "--d-intermediate", "32", "--vocab", "50", "--context", "6",
        "--repeats", "2"]


def cli(*argv) -> int:
    return lrnn.cli.main(["bench", "verify", *[str(a) for a in argv]])


def test_every_case_for_every_mixer(tmp_path, capsys):
    out = tmp_path / "verify.json"
    assert cli(*TINY, "--mixers", "mamba2,deltaproduct,lstm,attention", "--draft-tokens", "2",
               "--branching", "2,1", "--json", out) == 0
    report = json.loads(out.read_text())
    assert [t["mixer"] for t in report["targets"]] == ["mamba2", "deltaproduct", "lstm", "attention"]
    cases = ["decode step", "chain 3, chunked", "chain 3, tree pass + select", "tree 2,1 (5 nodes), pass + select"]
    for target in report["targets"]:
        assert [r["case"] for r in target["rows"]] == cases
        base = target["rows"][0]["best_ms"]
        for row in target["rows"]:
            assert 0 < row["best_ms"] <= row["median_ms"]
            assert row["x_decode_step"] == pytest.approx(row["best_ms"] / base)
    text = capsys.readouterr().out
    assert "#### deltaproduct" in text and "| tree 2,1 (5 nodes), pass + select |" in text
    assert "**1 intra-op thread(s)**" in text and "2 interleaved rounds" in text


@pytest.mark.parametrize("argv,message", [
    (["--mixers", "mamba3"], "--mixers must name registered mixers"),
    (["--mixers", ""], "--mixers must name registered mixers"),
    (["--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["--draft-tokens", "0"], "--draft-tokens must be >= 1, got 0"),
    (["--context", "0"], "--context must be >= 1, got 0"),
    (["--branching", "2,0"], "--branching wants comma-separated positive ints"),
    (["--mixers", "mamba2", "--d-model", "16"], "must be divisible by headdim"),
])
def test_bad_flags_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(*TINY, *argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
