"""Training a torch.compile'd model: padded lengths keep the compiled graphs few and the loss unchanged.

torch.compile runs here with a counting backend (``CompileCounter``: it counts the frames Dynamo
compiles and runs the traced graph as it is), so the tests check the compile plumbing in seconds
without generating C++ kernels.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import lrnn.cli
from training_testkit import tiny_config
from lrnn.tasks import IGNORE_INDEX
from lrnn.training import open_run, read_log, train
from lrnn.training import trainer as trainer_module
from lrnn.training.trainer import COMPILE_LENGTH_MULTIPLE, pad_length


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_pad_length_pads_inputs_with_the_pad_id_and_targets_with_ignore():
    inputs, targets = torch.arange(10).reshape(2, 5), torch.ones(2, 5, dtype=torch.long)
    padded_inputs, padded_targets = pad_length(inputs, targets, 8, pad_id=7)
    assert padded_inputs.shape == padded_targets.shape == (2, 8)
    assert torch.equal(padded_inputs[:, :5], inputs) and (padded_inputs[:, 5:] == 7).all()
    assert torch.equal(padded_targets[:, :5], targets) and (padded_targets[:, 5:] == IGNORE_INDEX).all()
    same = pad_length(inputs[:, :4], targets[:, :4], 4, pad_id=7)
    assert same[0].shape == (2, 4)


@pytest.mark.parametrize("mixer", ["lstm", "deltanet", "mamba", "attention"])
def test_varying_lengths_compile_one_graph_per_padded_length_at_most(mixer):
    # Batches of 2 sequences of lengths 3-40: the padded length of a batch takes ~15 distinct values over 24
    # steps; padded to a multiple of 8 they are at most 5 (8, 16, ..., 40). A mixer that specialises its
    # graph on the length (the LSTM's Python loop over time) compiles once per padded length -- unpadded, it
    # hit torch's limit of 8 recompilations here and fell back to eager; the others compile one static graph
    # and then one with a dynamic length. A step may span several frames (Mamba's scan is a graph break), so
    # the bound is 5 x the frames of one step.
    config = tiny_config(mixer=mixer, steps=24, batch_size=2, train_min=3, train_max=40, eval_min=40, eval_max=44)
    one_step = CompileCounter()
    train(config, quiet=True, stop_at_step=1, compile_backend=one_step)
    torch._dynamo.reset()
    counter = CompileCounter()
    train(config, quiet=True, stop_at_step=24, compile_backend=counter)
    assert 1 <= one_step.frame_count <= counter.frame_count <= 40 // COMPILE_LENGTH_MULTIPLE * one_step.frame_count


def test_compiled_training_matches_eager_training(tmp_path):
    config = tiny_config(steps=6, batch_size=4, train_min=3, train_max=20, log_every=1)
    eager = open_run(config, tmp_path / "eager")
    eager.train(quiet=True)
    compiled = open_run(config, tmp_path / "compiled")
    compiled.train(quiet=True, compile_backend=CompileCounter())
    for name, param in eager.model.named_parameters():
        torch.testing.assert_close(dict(compiled.model.named_parameters())[name], param, rtol=1e-4, atol=1e-5,
                                   msg=name)
    losses = [[r["loss"] for r in read_log(d / "log.jsonl") if r["kind"] == "train"]
              for d in (tmp_path / "eager", tmp_path / "compiled")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_lrnn_train_compile_flag_compiles_the_model(tmp_path, monkeypatch, capsys):
    backends = []

    def counting_compile(model, backend="inductor"):
        backends.append(backend)
        return torch.compile(model, backend=CompileCounter())

    monkeypatch.setattr(trainer_module, "compile_model", counting_compile)
    code = lrnn.cli.main(["train", "--compile", "--quiet", "--out", str(tmp_path / "run"), "--steps", "2",
                          "--batch-size", "4", "--d-model", "16", "--n-layers", "1", "--eval-samples", "4",
                          "--eval-min", "40", "--eval-max", "44", "--eval-bins", "1"])
    assert code == 0 and backends == ["inductor"]
    assert "score" in capsys.readouterr().out
