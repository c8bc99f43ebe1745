"""``lrnn generate --speculative {lookup,draft} --tree B1,B2,..``: the plain greedy text, the statistics
line, sampling (top-k 1 gives the greedy text; a seed gives one text), and one-line errors for flags that
do not go together."""

from __future__ import annotations

import pytest

from lrnn.cli import main
from model_testkit import single_threaded
from test_interop_cli import model_dir, one_line_error, tok_dir  # noqa: F401 (fixtures)
from test_speculative_cli import PROMPT, run_generate

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)


@pytest.mark.parametrize("flags", [["--speculative", "lookup", "--tree", "3,2,2"],
                                   ["--speculative", "lookup", "--ngram", "1", "--tree", "2"],
                                   ["--speculative", "draft", "--tree", "2,2,1"],
                                   ["--speculative", "draft", "--tree", "3,3,3", "--tree-nodes", "5"],
                                   ["--speculative", "lookup", "--tree", "3,2,1,1,1", "--tree-nodes", "4"]],
                         ids=["lookup-322", "lookup-ngram1-2", "draft-221", "draft-dynamic", "lookup-dynamic"])
def test_tree_greedy_text_is_the_plain_greedy_text(model_dir, capsys, flags):
    plain, _ = run_generate(model_dir, capsys, "--greedy")
    if "draft" in flags:
        flags = [*flags, "--draft-model", str(model_dir)]  # the model itself: every level accepted
    out, err = run_generate(model_dir, capsys, "--greedy", *flags)
    assert out == plain
    speculative = [line for line in err.splitlines() if line.startswith(f"[speculative {flags[1]}: ")]
    assert len(speculative) == 1 and "accepted draft tokens per step" in speculative[0]
    assert "tokens/s" in speculative[0] and "target forwards" in speculative[0]


@pytest.mark.parametrize("flags", [["--speculative", "lookup", "--tree", "3,2,2"],
                                   ["--speculative", "draft", "--tree", "2,2,1"]], ids=["lookup-322", "draft-221"])
def test_tree_sampling_with_top_k_1_is_the_greedy_text(model_dir, capsys, flags):
    """Sampling is accepted with --tree; with --top-k 1 every draw is the argmax: the plain greedy text."""
    plain, _ = run_generate(model_dir, capsys, "--greedy")
    if "draft" in flags:
        flags = [*flags, "--draft-model", str(model_dir)]
    out, err = run_generate(model_dir, capsys, "--top-k", "1", *flags)
    assert out == plain
    assert any(line.startswith(f"[speculative {flags[1]}: ") for line in err.splitlines())


def test_tree_sampling_is_reproducible_with_a_seed(model_dir, capsys):
    flags = ["--speculative", "draft", "--draft-model", str(model_dir), "--tree", "2,2", "--temperature", "0.8",
             "--seed", "5"]
    first, _ = run_generate(model_dir, capsys, *flags)
    again, _ = run_generate(model_dir, capsys, *flags)
    assert first == again and first.startswith(PROMPT)


def test_tree_flag_errors_are_one_line(model_dir, capsys):
    base = ["generate", "--model", str(model_dir), "--prompt", "x"]
    assert "--tree cannot be used without --speculative" in one_line_error([*base, "--tree", "2,1"], capsys)
    line = one_line_error([*base, "--greedy", "--speculative", "lookup", "--tree", "2", "--draft-tokens", "3"], capsys)
    assert "--draft-tokens cannot be used with --tree" in line
    line = one_line_error([*base, "--greedy", "--speculative", "lookup", "--tree-nodes", "3"], capsys)
    assert "--tree-nodes needs --tree" in line
    line = one_line_error([*base, "--greedy", "--speculative", "draft", "--draft-model", "x", "--tree-nodes", "3"],
                          capsys)
    assert "--tree-nodes needs --tree" in line
    for bad in ("2,0", "a", "2,,1"):  # argparse rejects the value (usage, then the error line)
        with pytest.raises(SystemExit) as exit_info:
            main([*base, "--greedy", "--speculative", "lookup", "--tree", bad])
        assert exit_info.value.code == 2
        assert f"argument --tree: expected positive integers separated by commas (e.g. 2,2,1), got {bad!r}" \
            in capsys.readouterr().err
