"""The learning-rate schedule and AdamW's parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from lrnn.models import LanguageModel, ModelConfig
from lrnn.training import learning_rate, make_optimizer, parameter_groups
from lrnn.training.optim import set_learning_rate


def test_warmup_then_cosine_to_the_floor():
    lr = lambda s: learning_rate(s, total_steps=100, lr=1.0, min_lr=0.01, warmup_fraction=0.1)
    assert [lr(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert lr(9) == pytest.approx(1.0)  # last warm-up step reaches the peak
    assert lr(10) == pytest.approx(1.0)  # cosine starts at the peak
    mid = 10 + 89 / 2
    assert learning_rate(int(mid), 100, 1.0, 0.01, 0.1) == pytest.approx(
        0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (int(mid) - 10) / 89)))
    assert lr(99) == pytest.approx(0.01)  # the last step is at the floor
    values = [lr(s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert learning_rate(0, 10, 0.5, 0.0, 0.0) == pytest.approx(0.5)  # no warm-up


def test_no_weight_decay_on_norms_biases_and_flagged_parameters():
    model = LanguageModel(ModelConfig(vocab_size=5, d_model=16, n_layers=1, mixer="mamba2",
                                      mixer_kwargs={"mamba2": {"headdim": 8, "d_state": 4}}, num_labels=3))
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decayed | exempt == set(names.values()) and not decayed & exempt
    assert {"layers.0.mixer.A_log", "layers.0.mixer.dt_bias", "layers.0.mixer.D", "head.bias",
            "norm_f.weight"} <= exempt
    assert {"layers.0.mixer.in_proj.weight", "head.weight", "embedding.weight"} <= decayed


def _s4d_model() -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(vocab_size=5, d_model=8, n_layers=2, mixer="s4d",
                                     mixer_kwargs={"s4d": {"d_state": 4, "init": "lin"}}, num_labels=3))


def test_s4d_ssm_group_gets_the_scaled_lr_and_no_weight_decay():
    model = _s4d_model()
    optimizer = make_optimizer(model, lr=4e-3, weight_decay=0.5, ssm_lr=1e-3)
    decay, no_decay, ssm = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    ssm_names = {names[id(p)] for p in ssm["params"]}
    assert ssm_names == {f"layers.{i}.mixer.{p}" for i in range(2) for p in ("A_real_log", "A_imag", "B", "log_dt")}
    assert ssm["weight_decay"] == 0.0 and ssm["lr"] == pytest.approx(1e-3) and ssm["lr_scale"] == pytest.approx(0.25)
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    assert "layers.0.mixer.C" in {names[id(p)] for p in decay["params"]}  # C: a decayed matrix at the main lr
    assert "layers.0.mixer.D" in {names[id(p)] for p in no_decay["params"]}
    # The schedule sets the base lr; every group keeps its ratio to it.
    for step in (0, 5, 99):
        value = learning_rate(step, 100, 4e-3, 1e-5, 0.1)
        set_learning_rate(optimizer, value)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([value, value, value / 4])
    # With zero gradients AdamW's only change is the decoupled decay, lr * weight_decay * p:
    # matrices shrink, the SSM parameters do not move.
    set_learning_rate(optimizer, 0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = dict(model.named_parameters())
    for name in ssm_names:
        assert torch.equal(after[name], before[name]), name
    assert torch.allclose(after["head.weight"], before["head.weight"] * (1 - 0.1 * 0.5))


def test_without_ssm_lr_the_ssm_parameters_join_the_no_decay_group():
    model = _s4d_model()
    groups = parameter_groups(model, 0.1, lr=1e-3, ssm_lr=None)
    assert len(groups) == 2 and all(g["lr_scale"] == 1.0 for g in groups)
    assert any(p is model.layers[0].mixer.A_imag for p in groups[1]["params"])
    # A model without S4D layers gets two groups whatever ssm_lr is (old checkpoints stay loadable).
    mamba = LanguageModel(ModelConfig(vocab_size=5, d_model=16, n_layers=1, mixer="mamba2",
                                      mixer_kwargs={"mamba2": {"headdim": 8, "d_state": 4}}, num_labels=3))
    assert len(parameter_groups(mamba, 0.1, lr=1e-3, ssm_lr=1e-4)) == 2


@pytest.mark.parametrize("kwargs, error, match", [
    ({"ssm_lr": 0.0}, ValueError, "ssm_lr"), ({"ssm_lr": "1e-3"}, TypeError, "ssm_lr"),
    ({"weight_decay": -1.0}, ValueError, "weight_decay"), ({"lr": 0.0}, ValueError, "lr"),
    ({"lr": True}, TypeError, "lr")])
def test_parameter_groups_reject_bad_arguments(kwargs, error, match):
    """A value out of range is a ValueError, a wrong kind (a string, a bool) a TypeError; both name it."""
    args = {"weight_decay": 0.1, "lr": 1e-3, "ssm_lr": 1e-4} | kwargs
    with pytest.raises(error, match=match):
        parameter_groups(_s4d_model(), **args)


def test_set_learning_rate_accepts_groups_without_a_scale():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], lr=1.0)
    set_learning_rate(optimizer, 0.25)
    assert optimizer.param_groups[0]["lr"] == 0.25
