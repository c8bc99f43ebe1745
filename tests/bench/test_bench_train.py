"""lrnn bench train: the model-FLOP accounting against hand counts, every mixer's step, the CLI plumbing.

No timing is asserted: the machine's speed is not the code's to promise.
"""

import json

import pytest
import torch

import lrnn.cli
from lrnn.bench import train as bench_train
from lrnn.layers import MIXERS

TINY = bench_train.StepConfig("parity", "(a) parity", n_layers=1, d_model=8, heads=2, batch_size=2, min_length=5,
                              max_length=5, task="parity")


def _model(mixer, config=TINY):
    return bench_train.build_model(config, mixer, torch.device("cpu"))


def test_flops_of_a_tiny_transformer_by_hand():
    model = _model("attention")
    # qkv 8 x 24 + o_proj 8 x 8 + head 8 x 2 (parity has 2 classes); the embedding is a lookup.
    assert bench_train.matmul_parameters(model) == 192 + 64 + 16
    # 10 positions: 2 x 272 x 10 matmul FLOPs + 4 x T x d_model = 4 x 5 x 8 per position.
    assert bench_train.model_flops(model, 2, 5) == 2 * 272 * 10 + 160 * 10
    assert bench_train.step_flops(model, 2, 5) == 3 * (5440 + 1600)


def test_flops_of_a_tiny_mamba_by_hand():
    model = _model("mamba")
    # d_inner 16, dt_rank ceil(8 / 16) = 1, d_state 16: in_proj 8 x 32, x_proj 16 x (1 + 32), dt_proj 1 x 16,
    # out_proj 16 x 8, head 8 x 2.
    assert bench_train.matmul_parameters(model) == 256 + 528 + 16 + 128 + 16
    # Core: 4 x d_state x d_inner = 4 x 16 x 16 per position.
    assert bench_train.model_flops(model, 2, 5) == 2 * 944 * 10 + 1024 * 10


def test_flops_of_a_tiny_deltaproduct_by_hand():
    model = _model("deltaproduct")
    # 2 heads of 4, n_h 2: q 8 x 8, k 8 x 16, v 8 x 16, beta 8 x 4, o_proj 8 x 8, head 8 x 2.
    assert bench_train.matmul_parameters(model) == 64 + 128 + 128 + 32 + 64 + 16
    # Core: (4 n_h + 2) K V per head = 10 x 4 x 4 x 2 heads per position.
    assert bench_train.model_flops(model, 2, 5) == 2 * 432 * 10 + 320 * 10


def test_a_mixer_without_a_flop_rule_is_refused(monkeypatch):
    import dataclasses

    from lrnn.layers import MIXERS

    monkeypatch.setitem(MIXERS, "lstm", dataclasses.replace(MIXERS["lstm"], core_flops=None))
    with pytest.raises(ValueError, match="mixer 'lstm' has no model-FLOP rule"):
        bench_train.core_flops_per_token("lstm", torch.nn.Linear(2, 2), 5)


def test_every_registered_mixer_has_a_flop_rule():
    assert all(spec.core_flops is not None for spec in MIXERS.values())


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_every_registered_mixer_takes_a_training_step(mixer):
    batches = bench_train.draw_batches(TINY, 2, torch.device("cpu"))
    entry = bench_train.build_entry(TINY, mixer, False, batches, torch.device("cpu"))
    before = [p.detach().clone() for p in entry.model.parameters()]
    entry.step(0)
    entry.step(1)
    changed = [not torch.equal(a, p) for a, p in zip(before, entry.model.parameters())]
    assert all(changed), f"{mixer}: {changed.count(False)} parameter tensors did not move"
    assert entry.flops == [bench_train.step_flops(entry.model, 2, 5)] * 2 and entry.positions == [10, 10]


def test_lm_config_scales_its_length_and_draws_next_token_targets():
    lm = bench_train.CONFIGS["lm"].scaled(1 / 256)
    assert (lm.min_length, lm.max_length, lm.d_model, lm.n_layers) == (8, 8, 512, 8)
    (inputs, targets), = bench_train.draw_batches(lm, 1, torch.device("cpu"))
    assert inputs.shape == targets.shape == (4, 8)
    torch.testing.assert_close(inputs[:, 1:], targets[:, :-1])


def _tiny_configs(monkeypatch):
    monkeypatch.setitem(bench_train.CONFIGS, "parity", TINY)
    monkeypatch.setitem(bench_train.CONFIGS, "words", bench_train.StepConfig(
        "words", "(b) word problem", 1, 8, 2, 2, 6, 6, "s3"))


def test_cli_runs_and_writes_the_report(monkeypatch, tmp_path, capsys):
    _tiny_configs(monkeypatch)
    out = tmp_path / "train.json"
    code = lrnn.cli.main(["bench", "train", "--configs", "parity", "words", "--mixers", "deltanet", "--steps", "1",
                          "--rounds", "2", "--matmul-size", "64", "--chunk-size", "4", "--markdown",
                          "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["threads"] == 1 and report["modes"] == ["eager"]
    rows = {(r["config"], r["mixer"]): r for r in report["rows"]}
    assert set(rows) == {(c, m) for c in ("parity", "words") for m in ("attention", "deltanet")}
    for row in rows.values():
        assert len(row["rounds"]) == 2 and row["best_s"] == min(r["median_s"] for r in row["rounds"])
        assert row["gflops"] == pytest.approx(row["step_flops"] / row["best_s"] / 1e9)
    assert rows[("parity", "attention")]["x_transformer"] == 1.0
    assert rows[("parity", "deltanet")]["chunk_size"] == 4 and rows[("parity", "attention")]["chunk_size"] is None
    text = capsys.readouterr().out
    assert "| DeltaNet | [-1, 1] | 4 | eager |" in text and "(b) word problem" in text


def test_cli_bfloat16_sets_the_step_and_the_matmul_reference(monkeypatch, tmp_path, capsys):
    _tiny_configs(monkeypatch)
    precisions = []
    real_step = bench_train.training_step
    monkeypatch.setattr(bench_train, "training_step", lambda *args: precisions.append(args[-1]) or real_step(*args))
    matmuls = []
    real_matmul = bench_train.measure_matmul
    monkeypatch.setattr(bench_train, "measure_matmul",
                        lambda device, dtype, *rest: matmuls.append(dtype) or real_matmul(device, dtype, *rest))
    out = tmp_path / "train.json"
    assert lrnn.cli.main(["bench", "train", "--configs", "parity", "--mixers", "deltanet", "--steps", "1", "--rounds",
                          "1", "--matmul-size", "64", "--precision", "bfloat16", "--json", str(out)]) == 0
    assert set(precisions) == {"bfloat16"} and json.loads(out.read_text())["precision"] == "bfloat16"
    assert matmuls[0] == matmuls[-1] == torch.bfloat16  # the reference; the probes between stay float32
    assert "bfloat16 autocast" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--mixers", "nope"], "--mixers: unknown mixer(s) ['nope']"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--scale", "2"], "--scale must lie in (0, 1], got 2.0"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--chunk-size", "0"], "--chunk-size must be >= 1, got 0"),
])
def test_cli_rejects_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        lrnn.cli.main(["bench", "train", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
