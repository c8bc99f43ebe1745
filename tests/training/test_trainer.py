"""The training loop: learning, files written, checkpoint + resume (bit-exact), config round trip."""

from __future__ import annotations

import json

import pytest
import torch

from training_testkit import tiny_config
from lrnn.device import resolve_device
from lrnn.training import RunConfig, evaluate, load_run, make_eval_task, open_run, read_log, train


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
    saved = load_run(tmp_path)
    assert saved.config == config and saved.finished and saved.step == 6
    for name, tensor in outcome.model.state_dict().items():
        assert torch.equal(saved.model.state_dict()[name], tensor), name
    # A finished run is loaded, not retrained.
    again = train(config, tmp_path, quiet=True)
    assert again.result == result
    with pytest.raises(ValueError, match="another run's files"):
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
    # Starting over does not make the directory this run's: that takes force.
    with pytest.raises(ValueError, match="another run's files"):
        train(tiny_config(steps=4, lr=0.5), tmp_path, quiet=True, resume=False)
    assert train(tiny_config(steps=4, lr=0.5), tmp_path, quiet=True, force=True).result["finished"]
    assert RunConfig.load(tmp_path / "config.json").lr == 0.5


def test_a_directory_of_other_files_is_refused_unless_forced(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"another run's files \(no config.json, but notes.txt\)"):
        train(tiny_config(steps=2), tmp_path, quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written
    assert train(tiny_config(steps=2), tmp_path, quiet=True, force=True).result["finished"]
    assert (tmp_path / "notes.txt").read_text() == "mine"  # force replaces run files only
    # A run directory that is a file is refused by name.
    with pytest.raises(ValueError, match="is an existing file"):
        train(tiny_config(steps=2), tmp_path / "notes.txt", quiet=True)


def test_open_run_says_where_the_run_stands(tmp_path):
    config = tiny_config(steps=4)
    fresh = open_run(config, tmp_path)
    assert (fresh.start_step, fresh.resumed, fresh.finished) == (0, False, False)
    fresh.train(quiet=True, stop_at_step=3)
    resumed = open_run(config, tmp_path)
    assert (resumed.start_step, resumed.resumed, resumed.finished) == (3, True, False)
    unfinished = load_run(tmp_path)  # the checkpoint, and it says so
    assert (unfinished.finished, unfinished.step) == (False, 3)
    result = resumed.train(quiet=True).result
    done = open_run(config, tmp_path)
    assert (done.start_step, done.resumed, done.finished) == (4, False, True) and done.result == result
    # Same run, not resumed: started over, its old files gone.
    restarted = open_run(config, tmp_path, resume=False)
    assert restarted.start_step == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_resume_removes_orphaned_temporaries_and_counts_every_segment(tmp_path):
    config = tiny_config(steps=4, log_every=1)
    train(config, tmp_path, quiet=True, stop_at_step=2)
    # What a process killed in the middle of atomic writes leaves behind.
    orphans = [tmp_path / ".checkpoint.pt.k3j2.tmp", tmp_path / ".log.jsonl.x9.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"partial")
    # Pretend the first segment took 1000 s: the result must count it, not only the last segment.
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert 0 < state["train_seconds"] < 1000
    state["train_seconds"] = 1000.0
    torch.save(state, tmp_path / "checkpoint.pt")
    result = train(config, tmp_path, quiet=True).result
    assert not any(orphan.exists() for orphan in orphans)
    assert 1000 < result["train_seconds"] < 1100
    seconds = [r["seconds"] for r in read_log(tmp_path / "log.jsonl") if r["kind"] == "train"]
    assert seconds[1] < 1000 < seconds[2] < seconds[3]  # the log's clock runs on across the resumption


def test_evaluate_run_reports_progress(tmp_path):
    config = tiny_config(eval_bins=2, eval_samples=5, eval_batch_size=2)
    model = train(config, None, quiet=True).model
    calls = []
    evaluate(model, make_eval_task(config), config.eval_min, config.eval_max, config.eval_bins,
             config.eval_samples, batch_size=config.eval_batch_size, progress=lambda *a: calls.append(a))
    assert calls == [(2, 10), (4, 10), (5, 10), (7, 10), (9, 10), (10, 10)]


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


@pytest.mark.parametrize("name, match", [
    ("banana", "device must be e.g."), ("cuda", "cuda is not available"), ("cuda:1", "cuda is not available"),
    ("mps", "mps is not available"), ("hpu", "no 'hpu' backend"), ("cpu:3", "index 3 is out of range"),
])
def test_resolve_device_names_what_is_missing(name, match, monkeypatch):
    # As on a CPU-only torch, wherever the test runs (torch.device("cuda") itself succeeds there).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=match):
        resolve_device(name)
    assert resolve_device("cpu") == torch.device("cpu")
