"""Evaluation on a held-out split (RunConfig.eval_task / Task.test_split) and S4D's optimiser group in training."""

from __future__ import annotations

import json

import pytest
import torch

from training_testkit import Echo, PrefixParity, tiny_config
from lrnn.tasks import TASKS, make_task
from lrnn.training import evaluate, make_eval_task, read_log, train
from lrnn.training.trainer import _check_same_run


class EchoWithHeldOut(Echo):
    """Echo whose held-out split is prefix parity (same vocabulary and classes, different answers)."""

    name = "echo_held_out_test"
    test_split = PrefixParity.name


@pytest.fixture
def held_out_tasks(monkeypatch, fake_tasks):
    monkeypatch.setitem(TASKS, EchoWithHeldOut.name, EchoWithHeldOut)


def test_sequential_digits_is_evaluated_on_its_test_split():
    pytest.importorskip("sklearn")
    config = tiny_config(task="sequential_digits", train_min=64, train_max=64, eval_min=64, eval_max=64, eval_bins=1)
    eval_task = make_eval_task(config)
    assert eval_task.name == "sequential_digits_test" and eval_task.split == "test"
    assert make_task("sequential_digits").test_split == "sequential_digits_test"
    assert make_task("sequential_digits_test").test_split is None
    # An explicit eval_task wins: here the train split itself.
    own_split = tiny_config(task="sequential_digits", eval_task="sequential_digits", train_min=64, train_max=64,
                            eval_min=64, eval_max=64, eval_bins=1)
    assert make_eval_task(own_split).split == "train"
    # Generated tasks without a test split are evaluated on fresh draws of themselves.
    assert make_eval_task(tiny_config(task="parity")).name == "parity"


def test_training_evaluates_on_the_held_out_task(tmp_path, held_out_tasks):
    config = tiny_config(task=EchoWithHeldOut.name, steps=40, lr=1e-2, eval_every=20)
    outcome = train(config, tmp_path / "run", quiet=True)
    assert outcome.result["eval_task"] == PrefixParity.name
    # The final evaluation is exactly `evaluate` on the held-out task, not on the training task.
    on_held_out = evaluate(outcome.model, PrefixParity(), config.eval_min, config.eval_max, config.eval_bins,
                           config.eval_samples, seed=config.eval_seed)
    on_train_task = evaluate(outcome.model, EchoWithHeldOut(), config.eval_min, config.eval_max, config.eval_bins,
                             config.eval_samples, seed=config.eval_seed)
    assert outcome.result["eval"] == on_held_out
    assert on_train_task["overall"]["accuracy"] > on_held_out["overall"]["accuracy"]  # echo is learnt, parity not
    evals = [r for r in read_log(tmp_path / "run" / "log.jsonl") if r["kind"] == "eval"]
    assert evals[-1]["accuracy"] == on_held_out["overall"]["accuracy"]
    # eval_task set to the training task turns the held-out evaluation off.
    same = train(tiny_config(task=EchoWithHeldOut.name, eval_task=EchoWithHeldOut.name, steps=2), None, quiet=True)
    assert same.result["eval_task"] == EchoWithHeldOut.name


def test_eval_task_errors_name_the_argument(held_out_tasks):
    with pytest.raises(ValueError, match="eval_task.*unknown task"):
        make_eval_task(tiny_config(task=Echo.name, eval_task="nope"))
    with pytest.raises(ValueError, match="eval_task .parity. does not fit task .echo_test."):
        make_eval_task(tiny_config(task=Echo.name, eval_task="parity"))
    with pytest.raises(TypeError, match="eval_task"):
        tiny_config(eval_task=3)
    with pytest.raises(ValueError, match="ssm_lr"):
        tiny_config(ssm_lr=0.0)


def test_s4d_run_uses_the_ssm_lr_and_resumes_bit_exactly(tmp_path):
    config = tiny_config(mixer="s4d", mixer_kwargs={"d_state": 4, "init": "legs"}, steps=8, checkpoint_every=4,
                         lr=4e-3, ssm_lr=1e-3, weight_decay=0.1)
    straight = train(config, tmp_path / "straight", quiet=True)
    state = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["optimizer"]
    ssm = state["param_groups"][2]
    assert ssm["weight_decay"] == 0.0 and ssm["lr_scale"] == pytest.approx(0.25)
    assert ssm["lr"] == pytest.approx(0.25 * read_log(tmp_path / "straight" / "log.jsonl")[-2]["lr"])
    train(config, tmp_path / "resumed", quiet=True, stop_at_step=4)
    resumed = train(config, tmp_path / "resumed", quiet=True)
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    assert resumed.result["model"] == "S4D-LegS" and resumed.result["range"] == "-"


def test_configs_written_before_new_fields_still_match(tmp_path):
    config = tiny_config()
    saved = config.to_dict()
    del saved["ssm_lr"], saved["eval_task"]  # a run written before these fields existed
    _check_same_run(saved, config, tmp_path / "config.json")  # defaults: no complaint
    with pytest.raises(ValueError, match="ssm_lr"):
        _check_same_run(saved, tiny_config(ssm_lr=0.5), tmp_path / "config.json")
    assert json.loads(json.dumps(config.to_dict()))["ssm_lr"] == 1e-3
