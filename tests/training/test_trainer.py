"""The training loop: learning, files written, checkpoint + resume (bit-exact), config round trip."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_config
from lrnn.training import RunConfig, load_run, read_log, train


def test_loss_goes_down_on_a_toy_task(tmp_path, fake_tasks):
    config = tiny_config(task="echo_test", steps=30, lr=1e-2, log_every=5, batch_size=16)
    outcome = train(config, tmp_path / "run", quiet=True)
    losses = [r["loss"] for r in read_log(tmp_path / "run" / "log.jsonl") if r["kind"] == "train"]
    assert len(losses) == 6
    assert losses[-1] < 0.5 * losses[0]
    # Echoing the input is trivial: after 30 steps the held-out accuracy is near perfect.
    assert outcome.result["finished"] and outcome.result["eval"]["answer_positions"] == "every"
    assert outcome.result["eval"]["overall"]["accuracy"] > 0.95


def test_run_directory_files(tmp_path):
    config = tiny_config(steps=6, eval_every=3, checkpoint_every=3, log_every=2)
    outcome = train(config, tmp_path, quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "config.json", "log.jsonl", "model",
                                                          "result.json"]
    records = read_log(tmp_path / "log.jsonl")
    assert [(r["kind"], r["step"]) for r in records] == [("train", 2), ("eval", 3), ("train", 4), ("train", 6),
                                                         ("eval", 6)]
    assert {"loss", "accuracy", "lr", "grad_norm", "seconds"} <= set(records[0])
    assert {"accuracy", "scaled_accuracy", "score"} <= set(records[1])
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["finished"] and result["score"] == outcome.result["score"]
    assert RunConfig.load(tmp_path / "config.json") == config
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 6
    loaded_config, model = load_run(tmp_path)
    for name, tensor in outcome.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    # A finished run is loaded, not retrained.
    again = train(config, tmp_path, quiet=True)
    assert again.result == result
    with pytest.raises(ValueError, match="different run config"):
        train(tiny_config(steps=6, eval_every=3, checkpoint_every=3, seed=5), tmp_path, quiet=True)


@pytest.mark.parametrize("mixer", ["deltanet", "mamba2"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, mixer):
    config = tiny_config(mixer=mixer, steps=10, checkpoint_every=4, log_every=2, eval_every=5,
                         mixer_kwargs={"d_state": 4} if mixer == "mamba2" else {})
    straight = train(config, tmp_path / "straight", quiet=True)
    partial = train(config, tmp_path / "resumed", quiet=True, stop_at_step=6)
    assert partial.result == {"finished": False, "step": 6}
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["step"] == 6
    # A line written after the checkpoint (by the interrupted process) is dropped on resume.
    with open(tmp_path / "resumed" / "log.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": 7, "loss": 9.0}) + "\n")
    resumed = train(config, tmp_path / "resumed", quiet=True)
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    assert resumed.result["eval"] == straight.result["eval"]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]
    assert strip(read_log(tmp_path / "resumed" / "log.jsonl")) == strip(read_log(tmp_path / "straight" / "log.jsonl"))


def test_resume_refuses_a_different_config(tmp_path):
    train(tiny_config(steps=4), tmp_path, quiet=True, stop_at_step=2)
    with pytest.raises(ValueError, match="lr"):
        train(tiny_config(steps=4, lr=0.5), tmp_path, quiet=True)
    # Starting over is allowed.
    assert train(tiny_config(steps=4, lr=0.5), tmp_path, quiet=True, resume=False).result["finished"]


def test_run_config_json_round_trip(tmp_path):
    config = tiny_config(mixer="deltaproduct", n_h=2, mixer_kwargs={"conv_size": 0}, betas=(0.9, 0.95))
    config.save(tmp_path / "c.json")
    assert RunConfig.load(tmp_path / "c.json") == config
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.with_protocol("chomsky").train_min == 1 and config.with_protocol("chomsky").eval_max == 500
    model_config = config.model_config(vocab_size=3, num_classes=2)
    assert model_config.mixer_kwargs["deltaproduct"] == {"num_heads": 2, "num_householder": 2, "chunk_size": 16,
                                                         "conv_size": 0}


@pytest.mark.parametrize("changes, match", [
    ({"mixer": "gru"}, "mixer"), ({"lr": 0.0}, "lr"), ({"steps": 0}, "steps"), ({"train_max": 2}, "train_max"),
    ({"eval_bins": 100}, "eval_bins"), ({"negative_eigenvalues": 1}, "negative_eigenvalues"),
    ({"warmup_fraction": 2.0}, "warmup_fraction"), ({"batch_size": 2.5}, "batch_size"),
])
def test_run_config_rejects_bad_values(changes, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tiny_config(**changes)
    with pytest.raises(ValueError, match="unknown run config key"):
        RunConfig.from_dict({"stepz": 3})


def test_unknown_task_and_device_are_user_errors():
    with pytest.raises(ValueError, match="unknown task"):
        train(tiny_config(task="nope"), None, quiet=True)
    with pytest.raises(ValueError, match="device"):
        train(tiny_config(device="banana"), None, quiet=True)
