"""``lrnn generate --speculative {lookup,draft}``: the same greedy text, the statistics line, flag errors."""

from __future__ import annotations

import pytest
import torch

from lrnn.cli import main
from lrnn.models import LanguageModel, ModelConfig
from lrnn.models.interop import save_model
from model_testkit import single_threaded
from test_interop_cli import model_dir, one_line_error, tok_dir  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)

PROMPT = "parity of bits: 0 1 1 0. parity of bits: 0 1"


def run_generate(model_dir, capsys, *flags: str) -> tuple[str, str]:
    assert main(["generate", "--model", str(model_dir), "--prompt", PROMPT, "--max-new-tokens", "24", *flags]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


@pytest.mark.parametrize("flags", [["--speculative", "lookup"],
                                   ["--speculative", "lookup", "--ngram", "1", "--draft-tokens", "2"],
                                   ["--speculative", "draft", "--draft-tokens", "3"]],
                         ids=["lookup", "lookup-ngram1-k2", "draft-k3"])
def test_speculative_greedy_text_is_the_plain_greedy_text(model_dir, capsys, flags):
    """Greedy text is unchanged; stderr has the usual line plus accepted tokens per step and tokens/s. The
    draft model is the model itself here, so every draft is accepted."""
    plain, _ = run_generate(model_dir, capsys, "--greedy")
    if "draft" in flags:
        flags = [*flags, "--draft-model", str(model_dir)]
    out, err = run_generate(model_dir, capsys, "--greedy", *flags)
    assert out == plain
    speculative = [line for line in err.splitlines() if line.startswith(f"[speculative {flags[1]}: ")]
    assert len(speculative) == 1 and "accepted draft tokens per step" in speculative[0]
    assert "tokens/s" in speculative[0] and "target forwards" in speculative[0]
    if "draft" in flags:
        assert "acceptance 100%" in speculative[0]


def test_speculative_sampling_is_reproducible_with_a_seed(model_dir, capsys):
    flags = ["--speculative", "lookup", "--temperature", "0.8", "--top-k", "20", "--seed", "5"]
    first, _ = run_generate(model_dir, capsys, *flags)
    again, _ = run_generate(model_dir, capsys, *flags)
    assert first == again and first.startswith(PROMPT)


def test_speculative_flag_errors_are_one_line(model_dir, tmp_path, capsys):
    base = ["generate", "--model", str(model_dir), "--prompt", "x"]
    line = one_line_error([*base, "--ngram", "2", "--draft-tokens", "3"], capsys)
    assert "--draft-tokens, --ngram cannot be used without --speculative" in line
    line = one_line_error([*base, "--speculative", "lookup", "--draft-model", str(model_dir)], capsys)
    assert "--draft-model cannot be used with --speculative lookup" in line
    line = one_line_error([*base, "--speculative", "draft", "--ngram", "2", "--draft-model", str(model_dir)], capsys)
    assert "--ngram cannot be used with --speculative draft" in line
    assert "--speculative draft needs --draft-model DIR" in one_line_error([*base, "--speculative", "draft"], capsys)
    line = one_line_error([*base, "--speculative", "draft", "--draft-model", str(tmp_path / "missing")], capsys)
    assert "model directory not found" in line and "missing" in line
    other = tmp_path / "other-vocab"
    torch.manual_seed(0)
    save_model(LanguageModel(ModelConfig(vocab_size=50, d_model=16, n_layers=1,
                                         mixer_kwargs={"mamba2": {"d_state": 8, "headdim": 8}})), other, "lrnn")
    line = one_line_error([*base, "--speculative", "draft", "--draft-model", str(other)], capsys)
    assert "draft model's vocab_size 50 differs from the target's" in line


def test_greedy_refuses_sampling_flags(capsys):
    """--greedy with --temperature / --top-k / --top-p used to ignore them silently."""
    from lrnn.cli import main

    for flag, value in (("--temperature", "5"), ("--top-k", "3"), ("--top-p", "0.5")):
        with pytest.raises(SystemExit) as info:
            main(["generate", "--model", "missing", "--prompt", "x", "--greedy", flag, value])
        assert info.value.code == 2 and "drop --greedy" in capsys.readouterr().err
