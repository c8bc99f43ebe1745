"""``lrnn generate --weights``: the float32 layout keeps the greedy text, reduced formats run, bad uses refused."""

from __future__ import annotations

import pytest

from model_testkit import single_threaded
from test_interop_cli import model_dir, one_line_error, tok_dir  # noqa: F401 (fixtures)
from test_speculative_cli import run_generate

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)


def test_float32_layout_keeps_the_greedy_text_and_reduced_formats_generate(model_dir, capsys):
    plain, _ = run_generate(model_dir, capsys, "--greedy")
    same, _ = run_generate(model_dir, capsys, "--greedy", "--weights", "float32")
    assert same == plain
    for weights in ("bfloat16", "int8"):
        out, err = run_generate(model_dir, capsys, "--greedy", "--weights", weights)
        assert out.startswith(plain[:10]) and "new tokens" in err  # the prompt, then its own continuation


def test_weights_need_float32(model_dir, capsys):
    line = one_line_error(["generate", "--model", str(model_dir), "--prompt", "x", "--dtype", "float64",
                           "--weights", "int8"], capsys)
    assert "expects float32 weights" in line
