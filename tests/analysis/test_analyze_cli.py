"""``lrnn analyze dynamics``: per-layer lines, the JSON summary and plots, peer checkpoints, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from lrnn.analysis import interaction_matrix, spectrum, token_system
from lrnn.cli import main
from lrnn.models import LanguageModel, ModelConfig
from lrnn.models.interop import save_model


def tiny_model(mixer="mamba") -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(vocab_size=32, d_model=8, n_layers=2, mixer=mixer,
                                     mixer_kwargs={"mamba": {"d_state": 3}} if mixer == "mamba" else {}))


QUICK = ["--horizon", "20", "--max-steps", "100"]


def test_analyze_dynamics_prints_each_layer_and_writes_the_summary_and_plots(tmp_path, capsys):
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    assert main(["analyze", "dynamics", str(tmp_path / "model"), "--prompt-ids", "1,2,3,4,5", "--out",
                 str(tmp_path / "out"), *QUICK]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "prompt ids [1, 2, 3, 4, 5]" in lines[0]
    assert [line.split(" (")[0] for line in lines[1:3]] == ["layer 0", "layer 1"]
    assert all("3 positive" in line and "3 negative" in line and "-> mixed" in line for line in lines[1:3])
    summary = json.loads((tmp_path / "out" / "dynamics.json").read_text())
    assert summary["prompt_ids"] == [1, 2, 3, 4, 5] and [layer["layer"] for layer in summary["layers"]] == [0, 1]
    for layer, block in zip(summary["layers"], model.layers):
        expected = spectrum(interaction_matrix(token_system(block.mixer)))
        assert layer["spectrum"]["eigenvalues"] == pytest.approx(expected.eigenvalues.tolist(), rel=1e-12, abs=1e-12)
        assert len(layer["trajectory"]["norms"]) == 5  # one curve per prompt token
    for name in ("spectra.png", "norms.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("fmt", ["mamba_ssm", "hf"])
def test_analyze_dynamics_reads_peer_checkpoints(tmp_path, capsys, fmt):
    model = tiny_model()
    model.save_pretrained(tmp_path / "lrnn")
    save_model(model, tmp_path / fmt, fmt)
    outputs = []
    for directory in ("lrnn", fmt):
        assert main(["analyze", "dynamics", str(tmp_path / directory), "--prompt-ids", "7,8,9", *QUICK]) == 0
        outputs.append(capsys.readouterr().out.splitlines()[1:])
    assert outputs[0] == outputs[1] and len(outputs[0]) == 2


def one_line_error(capsys, argv: list[str], needle: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_analyze_dynamics_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    tiny_model().save_pretrained(tmp_path / "model")
    tiny_model("deltanet").save_pretrained(tmp_path / "deltanet")
    out = tmp_path / "out"
    model = str(tmp_path / "model")
    one_line_error(capsys, ["analyze", "dynamics", model, "--prompt-ids", "1,32", "--out", str(out)],
                   "--prompt-ids must lie in [0, 32)")
    one_line_error(capsys, ["analyze", "dynamics", model, "--prompt-ids", "1,a"], "comma-separated integers")
    one_line_error(capsys, ["analyze", "dynamics", str(tmp_path / "deltanet"), "--out", str(out)],
                   "no Mamba (S6) layer")
    one_line_error(capsys, ["analyze", "dynamics", str(tmp_path / "missing")], "model directory not found")
    with pytest.raises(SystemExit) as info:  # argparse's own error: usage, then one error line
        main(["analyze", "dynamics", model, "--rel-step", "0", "--out", str(out)])
    assert info.value.code == 2 and "--rel-step: expected a number in (0, 1), got 0" in capsys.readouterr().err
    assert not out.exists()
    assert main(["analyze", "dynamics", model, "--out", str(out), *QUICK]) == 0
    before = (out / "dynamics.json").read_text()
    one_line_error(capsys, ["analyze", "dynamics", model, "--seed", "1", "--out", str(out)], "already holds")
    assert (out / "dynamics.json").read_text() == before
    assert main(["analyze", "dynamics", model, "--seed", "1", "--out", str(out), "--force", *QUICK]) == 0
    assert (out / "dynamics.json").read_text() != before
